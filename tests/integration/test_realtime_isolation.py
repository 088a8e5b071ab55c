"""One tenant's events can neither stop real time for the others nor be left out of it (issue 10, items 1, 7 and 9):
the reviewer's batch of 4,000 labels, entries that fail on their data going to their tenant's dead letters while
every other tenant flows, the periodic catch-up of events whose stream append was lost, and ids that look like the
served-page hash's own fields or hold the separator."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from domain.catalogue import ItemData
from domain.events import InteractionData
from domain.realtime import contracts as c
from domain.realtime.consumer import StreamConsumer
from domain.realtime.hotstate import read_hot
from domain.realtime.impressions import impression_sink
from domain.realtime.keys import FIELD, STREAMS, profile_key, request_key, stream_key
from domain.realtime.persist import MongoWriter
from domain.realtime.stream import EventStream, StreamEvent
from domain.realtime.sweep import Sweeper
from domain.recommend.base import Recommendation
from models.documents import Interaction, composite_id
from tests.conftest import new_tenant
from tests.integration.test_stream import drained, metrics
from workers.consumer import consumer_metrics

NOW = datetime.now(UTC).replace(microsecond=0)
LABELS_PER_LIST = 100  # MAX_LABELS: an item carries at most 100 categories and 100 tags


async def tenant_with_items(served, name: str, items: list[ItemData]) -> tuple[str, str]:
    services = served.runtime.services
    keys = await new_tenant(served, name)
    scenario = await services.scenarios.create(name="feed", template="CUSTOM", config=None, tenant_id=keys.tenant_id)
    assert not (await services.catalogue.upsert(items, tenant_id=keys.tenant_id, scenario_id=scenario.id)).errors
    return keys.tenant_id, scenario.id


def event(sid: str, user: str, item: str, kind: str = "VIEW", **extra) -> InteractionData:
    return InteractionData(scenario_id=sid, user_id=user, item_id=item, type=kind,
                           timestamp=NOW - timedelta(minutes=1), **extra)


def heavy_items() -> list[ItemData]:
    """The reviewer's items: 20 of them with 100 categories and 100 tags each, no label shared (4,000 labels)."""
    return [ItemData(f"h{n}", categories=tuple(f"cat-{n}-{k}" for k in range(LABELS_PER_LIST)),
                     tags=tuple(f"tag-{n}-{k}" for k in range(LABELS_PER_LIST))) for n in range(20)]


def counted(name: str) -> float:
    """Return a counter of the session's consumers, as /metrics exports it."""
    return consumer_metrics()[f"recograph_consumer_{name}_total"]


async def until(check, timeout_s: float) -> float:
    """Wait until the async check holds; return the seconds it took (failing past timeout_s)."""
    began = time.monotonic()
    while not await check():
        assert time.monotonic() - began < timeout_s, f"not within {timeout_s} s"
        await asyncio.sleep(0.01)
    return time.monotonic() - began


async def clicks_reach(served, tenant: str, sid: str, user: str, n: int) -> float:
    """Wait until n clicks of the user show in the scenario's metrics and the user's profile; return seconds."""
    redis = served.runtime.cache.client

    async def arrived() -> bool:
        hot = (await read_hot(redis, [user], tenant_id=tenant)).get(user)
        return (await metrics(redis, tenant, sid)).get(c.CLICKS, 0) >= n and hot is not None and hot.applied >= n

    return await until(arrived, 1.0)


@pytest.fixture
async def bystander(served):
    """Another tenant, with one item, whose clicks must keep flowing."""
    return await tenant_with_items(served, "bystander", [ItemData("b1")])


async def append_at_once(redis, tenant: str, events: list[StreamEvent]) -> None:
    """Append events as ingest does, in one transaction, so that the consumer reads them as one batch."""
    async with redis.pipeline(transaction=True) as pipe:
        for e in events:
            pipe.hincrby(profile_key(tenant, e.user_id), "acc", 1)
            pipe.xadd(stream_key(tenant), {FIELD: e.encode()})
        pipe.sadd(STREAMS, tenant)
        await pipe.execute()


async def test_poison_batch_of_4000_labels_applies_while_other_tenants_flow(served, bystander):
    services = served.runtime.services
    redis = served.runtime.cache.client
    heavy, sid = await tenant_with_items(served, "reviewer", heavy_items())
    other, other_sid = bystander
    now_ms = int(time.time() * 1000)
    batch = [StreamEvent(f"x{n}", sid, "heavy", f"h{n}", "VIEW", None, now_ms - 60_000, now_ms) for n in range(20)]
    failures_before = counted("errors")
    await append_at_once(redis, heavy, batch)
    clicks = [event(other_sid, "clicker", "b1", "CLICK", event_id=f"c{n}") for n in range(3)]
    assert (await services.events.record(clicks, tenant_id=other)).accepted == 3

    await clicks_reach(served, other, other_sid, "clicker", 3)
    await drained(services, heavy)
    hot = (await read_hot(redis, ["heavy"], tenant_id=heavy))["heavy"]
    assert hot.applied == 20 and len(hot.labels) == 4000
    assert await services.realtime.dead_letters.count(tenant_id=heavy) == 0
    assert counted("errors") == failures_before  # one script call, no failure
    # The same shape applied by one script call directly (as a catch-up replays it): all 20 at once.
    again = [StreamEvent(f"y{n}", sid, "heavy2", f"h{n}", "LIKE", None, now_ms, now_ms) for n in range(20)]
    assert await services.realtime.processor.apply(again, tenant_id=heavy) == 20


async def test_poison_batch_entries_go_to_dead_letters_and_the_rest_apply(served, bystander):
    services = served.runtime.services
    redis = served.runtime.cache.client
    tenant, sid = await tenant_with_items(served, "poisoned", [ItemData("a"), ItemData("b")])
    other, other_sid = bystander
    # A page hash of the wrong type: any event citing it fails the script when it reads the page.
    await redis.set(request_key(tenant, "broken"), "not a hash")
    dead_before = counted("dead_lettered")
    batch = [event(sid, "good", "a", event_id="g1"),
             event(sid, "bad", "a", "CLICK", request_id="broken", event_id="p1"),
             event(sid, "good", "b", event_id="g2"), event(sid, "good", "a", "LIKE", event_id="g3")]
    assert (await services.events.record(batch, tenant_id=tenant)).accepted == 4
    # An entry the consumer reads but cannot prepare (its value is not a number), as a broken producer would write.
    now_ms = int(time.time() * 1000)
    broken = StreamEvent("p2", sid, "bad", "a", "WATCH", "ten", now_ms, now_ms)  # type: ignore[arg-type]
    await EventStream(redis).append([broken], tenant_id=tenant)
    clicks = [event(other_sid, "clicker2", "b1", "CLICK", event_id=f"k{n}") for n in range(2)]
    assert (await services.events.record(clicks, tenant_id=other)).accepted == 2

    await clicks_reach(served, other, other_sid, "clicker2", 2)
    await drained(services, tenant)
    hot = await read_hot(redis, ["good", "bad"], tenant_id=tenant)
    assert hot["good"].applied == 3 and "bad" not in hot
    page = await services.realtime.dead_letters.page(tenant_id=tenant, first=10, after=None, max_first=200)
    assert sorted(letter.entry[1] for letter in page.nodes) == ["p1", "p2"]
    assert any("WRONGTYPE" in letter.error for letter in page.nodes)
    assert all(letter.failed_at >= letter.received_at for letter in page.nodes)
    assert counted("dead_lettered") - dead_before == 2
    assert await services.realtime.dead_letters.count(tenant_id=other) == 0
    # The bad user's accepted event no longer counts as pending: their profile reads do not wait for it.
    assert int(await redis.hget(profile_key(tenant, "bad"), "acc") or 0) == 0
    # Buried is dealt with: the periodic catch-up, which reads p1 back from MongoDB, neither applies nor buries it.
    assert await Sweeper(redis, services.realtime.processor, grace_s=0.0).sweep(tenant_id=tenant) == 0
    assert await services.realtime.dead_letters.count(tenant_id=tenant) == 2

    await redis.delete(request_key(tenant, "broken"))  # the cause fixed, the event applies when replayed
    fixable = next(letter for letter in page.nodes if letter.entry[1] == "p1")
    assert await services.realtime.dead_letters.replay(tenant_id=tenant, ids=[fixable.id, "1-0"]) == 1
    await drained(services, tenant)
    assert (await read_hot(redis, ["bad"], tenant_id=tenant))["bad"].applied == 1
    assert await services.realtime.dead_letters.count(tenant_id=tenant) == 1  # the unreadable one is back
    # Erasing the user removes the dead letters that name them.
    assert await services.realtime.dead_letters.erase_user("good", tenant_id=tenant) == 0
    assert await services.realtime.dead_letters.erase_user("bad", tenant_id=tenant) == 1
    assert await services.realtime.dead_letters.count(tenant_id=tenant) == 0


async def test_an_event_stored_without_its_stream_append_is_applied_by_the_periodic_catch_up(served):
    services = served.runtime.services
    redis = served.runtime.cache.client
    tenant, sid = await tenant_with_items(served, "lost-append", [ItemData("a", categories=("x",))])
    await live_tenant(served, tenant, sid)
    received = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    # What ingest stores before the append that never happened (the API died, or XADD timed out).
    await Interaction.get_pymongo_collection().insert_one(stored(tenant, sid, "u", "lost", received))
    sweeper = Sweeper(redis, services.realtime.processor, grace_s=0.0)
    consumer = StreamConsumer(redis, services.realtime.processor, MongoWriter(redis), name="sweeping",
                              sweep=lambda: sweeper.sweep(tenant_id=tenant), sweep_every_s=0.2)
    task = asyncio.create_task(consumer.run())
    try:
        async def applied() -> bool:
            hot = (await read_hot(redis, ["u"], tenant_id=tenant)).get("u")
            return hot is not None and hot.applied == 1

        await until(applied, 3.0)
    finally:
        consumer.stop()
        await task
    assert (await metrics(redis, tenant, sid)).get(c.CLICKS) == 1
    assert await sweeper.sweep(tenant_id=tenant) == 0  # marked: a second sweep applies nothing
    assert await services.realtime.dead_letters.count(tenant_id=tenant) == 0


async def test_the_periodic_catch_up_buries_stored_events_that_fail_and_moves_on(served):
    services = served.runtime.services
    redis = served.runtime.cache.client
    tenant, sid = await tenant_with_items(served, "lost-poison", [ItemData("a")])
    await live_tenant(served, tenant, sid)
    await redis.set(request_key(tenant, "broken"), "not a hash")
    received = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    await Interaction.get_pymongo_collection().insert_many([stored(tenant, sid, "u", "bad", received, "broken"),
                                                            stored(tenant, sid, "u", "good", received)])
    sweeper = Sweeper(redis, services.realtime.processor, grace_s=0.0)
    assert await sweeper.sweep(tenant_id=tenant) == 1
    (letter,) = (await services.realtime.dead_letters.page(tenant_id=tenant, first=5, after=None, max_first=200)).nodes
    assert letter.entry[1] == "bad" and "WRONGTYPE" in letter.error
    assert await sweeper.sweep(tenant_id=tenant) == 0  # neither applied nor buried again
    assert await services.realtime.dead_letters.count(tenant_id=tenant) == 1

    await redis.delete(request_key(tenant, "broken"))
    assert await services.realtime.dead_letters.replay(tenant_id=tenant) == 1
    await drained(services, tenant)
    assert (await read_hot(redis, ["u"], tenant_id=tenant))["u"].applied == 2


async def live_tenant(served, tenant: str, sid: str) -> None:
    """Have the consumer apply one event of another user, as for any tenant with traffic (a watermark is set)."""
    assert (await served.runtime.services.events.record([event(sid, "warm", "a", event_id="warm")],
                                                        tenant_id=tenant)).accepted == 1
    await drained(served.runtime.services, tenant)


async def test_a_tenant_whose_first_appends_were_lost_is_rebuilt_by_the_periodic_catch_up(served):
    services = served.runtime.services
    redis = served.runtime.cache.client
    tenant, sid = await tenant_with_items(served, "lost-first", [ItemData("a")])
    received = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    await Interaction.get_pymongo_collection().insert_one(stored(tenant, sid, "u", "first", received))
    sweeper = Sweeper(redis, services.realtime.processor, grace_s=0.0,
                      catch_up=lambda tenant_id: services.realtime.catch_up(tenant_id=tenant_id))
    assert await sweeper.sweep(tenant_id=tenant) == 1
    assert (await read_hot(redis, ["u"], tenant_id=tenant))["u"].applied == 1
    assert await sweeper.sweep(tenant_id=tenant) == 0


def stored(tenant: str, sid: str, user: str, event_id: str, received: datetime, request_id: str | None = None) -> dict:
    """Return an interaction document as ingest stores it."""
    return {"_id": composite_id(tenant, event_id), "tenant_id": tenant, "scenario_id": sid, "user_id": user,
            "item_id": "a", "type": "CLICK", "value": None, "ts": received, "context": None,
            "request_id": request_id, "event_id": event_id, "received_at": received}


async def test_item_ids_named_like_the_served_page_fields_do_not_collide(served):
    services = served.runtime.services
    redis = served.runtime.cache.client
    tenant, sid = await tenant_with_items(served, "page-fields", [ItemData(i) for i in ("_s", "_u", "_v", "a")])
    page = [Recommendation(i, 1.0, ("popular",)) for i in ("_s", "_u", "_v", "a")]
    await impression_sink(redis).record(tenant_id=tenant, scenario_id=sid, user_id="u", request_id="r-1", variant="B",
                                        items=page)
    await drained(services, tenant)
    events = [event(sid, "u", item, "CLICK", request_id="r-1", event_id=f"c-{item}") for item in ("_s", "_v", "a")]
    assert (await services.events.record(events, tenant_id=tenant)).accepted == 3
    await drained(services, tenant)
    m = await metrics(redis, tenant, sid)
    assert m[c.ATTRIBUTED] == 3 and m[f"{c.CLICKS}|var:B"] == 3 and m[f"{c.CLICKS}|src:popular"] == 3
    assert await redis.hget(request_key(tenant, "r-1"), "_u") == b"u"


async def test_ids_holding_the_separator_keep_their_recent_items_whole(served):
    services = served.runtime.services
    odd = "a\x1fb"
    tenant, sid = await tenant_with_items(served, "separator", [ItemData(odd), ItemData("plain")])
    events = [event(sid, "u", odd, event_id="e\x1f1"), event(sid, "u", "plain", "LIKE", event_id="e2")]
    assert (await services.events.record(events, tenant_id=tenant)).accepted == 2
    await drained(services, tenant)
    hot = (await read_hot(served.runtime.cache.client, ["u"], tenant_id=tenant))["u"]
    assert sorted((r["i"], r["s"], r["y"]) for r in hot.recent) == [(odd, sid, "VIEW"), ("plain", sid, "LIKE")]
