"""The event stream and its consumer on the real servers: what one batch changes, attribution of served pages,
idempotent replays, rebuilds, and entries a dead consumer left pending."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from domain.catalogue import ItemData
from domain.events import InteractionData
from domain.realtime import contracts as c
from domain.realtime.apply import BUCKET_S
from domain.realtime.hotstate import read_hot
from domain.realtime.impressions import impression_sink
from domain.realtime.keys import GROUP, STREAMS, bucket_key, rebuild_key, request_key, stream_key
from domain.realtime.popularity import LivePopularity
from domain.realtime.stream import FIELD, StreamEvent
from domain.recommend.base import Recommendation
from models.documents import Impression, UserProfile, composite_id
from tests.conftest import new_tenant

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def shop(served):
    """A fresh tenant with one scenario and three items (v1 has a duration and two categories)."""
    services = served.runtime.services
    keys = await new_tenant(served, "stream")
    scenario = await services.scenarios.create(name="feed", template="CUSTOM", config=None, tenant_id=keys.tenant_id)
    items = [ItemData("v1", categories=("pets", "fun"), tags=("cat",), attributes={"durationSeconds": 100}),
             ItemData("v2", categories=("news",)), ItemData("v3")]
    result = await services.catalogue.upsert(items, tenant_id=keys.tenant_id, scenario_id=scenario.id)
    assert not result.errors
    return services, keys.tenant_id, scenario.id


def event(sid: str, user: str, item: str, kind: str = "VIEW", value: float | None = None, **extra) -> InteractionData:
    return InteractionData(scenario_id=sid, user_id=user, item_id=item, type=kind, value=value,
                           timestamp=extra.pop("timestamp", NOW - timedelta(minutes=1)), **extra)


def minute_now() -> int:
    return int(time.time()) // 60


async def metrics(redis, tenant: str, sid: str) -> dict[str, float]:
    """Sum the scenario's minute hashes of the last two minutes (a test may straddle a minute boundary)."""
    total: dict[str, float] = {}
    for minute in (minute_now() - 1, minute_now()):
        for k, v in (await redis.hgetall(c.minute_key(tenant, sid, minute))).items():
            total[k.decode()] = total.get(k.decode(), 0.0) + float(v)
    return total


async def drained(services, tenant: str) -> None:
    assert await services.realtime.wait_drained(tenant_id=tenant, timeout_s=10)


async def test_one_batch_updates_popularity_profile_and_metrics(served, shop):
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    events = [event(sid, "u1", "v1", "WATCH", 50, event_id="w1"), event(sid, "u1", "v2", "CLICK", event_id="c1"),
              event(sid, "u2", "v1", "LIKE", event_id="l1"), event(sid, "u2", "v3", "PURCHASE", event_id="p1")]
    assert (await services.events.record(events, tenant_id=tenant)).accepted == 4
    await drained(services, tenant)

    bucket = int((NOW - timedelta(minutes=1)).timestamp()) // BUCKET_S
    pop = dict(await redis.zrange(bucket_key(tenant, sid, bucket), 0, -1, withscores=True))
    # CUSTOM weights: half of a WATCH (3) and a LIKE (4); a CLICK (2); a PURCHASE (8)
    assert pop == {b"v1": pytest.approx(5.5), b"v2": pytest.approx(2.0), b"v3": pytest.approx(8.0)}

    hot = await read_hot(redis, ["u1", "u2"], tenant_id=tenant)
    assert hot["u1"].applied == 2 and hot["u1"].counts_by_type == {"WATCH": 1, "CLICK": 1}
    assert hot["u1"].counts_by_scenario == {sid: 2}
    assert sorted(r["i"] for r in hot["u1"].recent) == ["v1", "v2"]
    assert hot["u1"].active_hours == {(NOW - timedelta(minutes=1)).hour: 2}
    assert hot["u2"].labels["c:pets"] > 0 and hot["u2"].labels["t:cat"] > 0
    assert await served.runtime.cache.seen(sid, "u2", tenant_id=tenant) == {"v1", "v3"}

    m = await metrics(redis, tenant, sid)
    assert m[c.INTERACTIONS] == 4 and m[c.CLICKS] == 1 and m[c.CONVERSIONS] == 1
    assert m[c.WATCHES] == 1 and m[c.WATCH_SECONDS] == 50 and m[c.COMPLETIONS] == 1
    assert m[c.COMPLETION_SUM] == pytest.approx(0.5)
    assert c.ATTRIBUTED not in m  # nothing cited a served page


async def test_profile_reads_the_hot_state_and_snapshots_reach_mongo(served, shop):
    services, tenant, sid = shop
    await services.events.record([event(sid, "u9", "v1", event_id="a"), event(sid, "u9", "v2", "LIKE", event_id="b")],
                                 tenant_id=tenant)
    (view,) = await services.profiles.get_many(["u9"], tenant_id=tenant)
    assert view.interaction_count == 2 and [r["i"] for r in view.recent][0] in {"v1", "v2"}
    assert dict(view.top_categories)["news"] > 0
    deadline = time.monotonic() + 10
    while (doc := await UserProfile.get(composite_id(tenant, "u9"))) is None or doc.interaction_count < 2:
        assert time.monotonic() < deadline, "the consumer never snapshot the profile to MongoDB"
        await asyncio.sleep(0.1)
    assert doc.counts_by_type == {"VIEW": 1, "LIKE": 1} and sum(doc.active_hours.values()) == 2


async def test_served_pages_attribute_clicks_watches_and_purchases(served, shop):
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    sink = impression_sink(redis)
    page = [Recommendation("v1", 0.9, ("als", "popular")), Recommendation("v2", 0.5, ("popular",)),
            Recommendation("v3", 0.1, ("fresh",))]
    await sink.record(tenant_id=tenant, scenario_id=sid, user_id="u5", request_id="r-1", variant="B", items=page)
    await drained(services, tenant)
    events = [event(sid, "u5", "v1", "CLICK", request_id="r-1", event_id="x1"),
              event(sid, "u5", "v1", "WATCH", 100, request_id="r-1", event_id="x2"),
              event(sid, "u5", "v2", "CLICK", request_id="r-unknown", event_id="x3"),
              event(sid, "u5", "v3", "CLICK", event_id="x4")]
    await services.events.record(events, tenant_id=tenant)
    await drained(services, tenant)

    m = await metrics(redis, tenant, sid)
    assert m[c.IMPRESSIONS] == 3 and m[c.by_variant(c.IMPRESSIONS, "B")] == 3
    assert m[c.by_source(c.IMPRESSIONS, "popular")] == 2 and m[c.by_source(c.IMPRESSIONS, "als")] == 1
    assert m[c.CLICKS] == 3 and m[c.by_source(c.CLICKS, "als")] == 1 and m[c.by_source(c.CLICKS, "popular")] == 1
    assert m[c.by_variant(c.CLICKS, "B")] == 1 and c.by_source(c.CLICKS, "fresh") not in m
    assert m[c.ATTRIBUTED] == 2 and m[c.by_variant(c.ATTRIBUTED, "B")] == 2
    assert m[c.by_source(c.COMPLETION_SUM, "als")] == pytest.approx(1.0)
    hour = await redis.hgetall(c.hour_key(tenant, sid, int(time.time()) // 3600))
    assert float(hour[c.IMPRESSIONS.encode()]) >= 3
    assert await redis.hget(request_key(tenant, "r-1"), "_v") == b"B"
    assert 0 < await redis.ttl(request_key(tenant, "r-1")) <= 86400

    deadline = time.monotonic() + 10
    while (doc := await Impression.get(composite_id(tenant, "r-1"))) is None:
        assert time.monotonic() < deadline, "the served page never reached MongoDB"
        await asyncio.sleep(0.1)
    assert doc.variant == "B" and doc.items[0] == {"i": "v1", "s": ["als", "popular"]}


async def test_applying_the_same_entries_again_changes_nothing(served, shop):
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    await services.events.record([event(sid, "u3", "v1", "LIKE", event_id="once")], tenant_id=tenant)
    await drained(services, tenant)
    before = (await read_hot(redis, ["u3"], tenant_id=tenant))["u3"]
    metrics_before = await metrics(redis, tenant, sid)
    replay = StreamEvent("once", sid, "u3", "v1", "LIKE", None, int((NOW - timedelta(minutes=1)).timestamp() * 1000),
                         int(time.time() * 1000))
    assert await services.realtime.processor.apply([replay, replay], tenant_id=tenant) == 0
    assert (await read_hot(redis, ["u3"], tenant_id=tenant))["u3"] == before
    assert await metrics(redis, tenant, sid) == metrics_before


async def test_rebuild_recomputes_profiles_and_popularity(served, shop):
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    ts = [NOW - timedelta(minutes=m) for m in (30, 20, 10)]
    await services.events.record([event(sid, "u4", i, "LIKE", timestamp=t, event_id=f"rb{n}")
                                  for n, (i, t) in enumerate(zip(["v1", "v2", "v3"], ts, strict=True))], tenant_id=tenant)
    await drained(services, tenant)
    state = (await read_hot(redis, ["u4"], tenant_id=tenant))["u4"]
    buckets = {t: await redis.zrange(bucket_key(tenant, sid, int(t.timestamp()) // BUCKET_S), 0, -1, withscores=True)
               for t in ts}
    await redis.delete(f"t:{{{tenant}}}:pf:u4")  # damage: the profile's counters are gone
    await redis.zincrby(bucket_key(tenant, sid, int(ts[0].timestamp()) // BUCKET_S), 99, "v9")
    fractions: list[float] = []

    async def progress(fraction: float) -> None:
        fractions.append(fraction)

    assert await services.realtime.rebuild(tenant_id=tenant, scenario_id=sid, progress=progress) == 3
    assert fractions and fractions[-1] == 1.0
    rebuilt = (await read_hot(redis, ["u4"], tenant_id=tenant))["u4"]
    assert (rebuilt.applied, rebuilt.counts_by_type, rebuilt.recent) == (3, state.counts_by_type, state.recent)
    assert rebuilt.labels == pytest.approx(state.labels)
    for t, expected in buckets.items():
        assert await redis.zrange(bucket_key(tenant, sid, int(t.timestamp()) // BUCKET_S), 0, -1,
                                  withscores=True) == expected
    # The consumer goes on afterwards, and a rebuild again changes nothing.
    await services.events.record([event(sid, "u4", "v1", event_id="after")], tenant_id=tenant)
    await drained(services, tenant)
    assert await services.realtime.rebuild(tenant_id=tenant) == 4
    assert (await read_hot(redis, ["u4"], tenant_id=tenant))["u4"].applied == 4


@pytest.mark.parametrize("applied_before_dying", [False, True])
async def test_entries_a_dead_consumer_left_pending_are_claimed_and_counted_once(served, shop, applied_before_dying):
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    await redis.srem(STREAMS, tenant)  # keep the app's own consumer off this stream: two test consumers race here
    key = stream_key(tenant)
    await redis.xgroup_create(key, GROUP, id="0", mkstream=True)
    base = int(time.time() * 1000)
    events = [StreamEvent(f"d{n}", sid, f"u{n % 3}", "v1", "VIEW", None, base, base) for n in range(30)]
    view_weight = (await services.realtime.processor.weights({sid}, tenant_id=tenant))[sid].get("VIEW", 1.0)
    for e in events:
        await redis.xadd(key, {FIELD: e.encode()})

    dead = services.realtime.consumer(name="dead")
    dead._streams[key] = tenant
    reply = await redis.xreadgroup(GROUP, "dead", {key: ">"}, count=20)  # takes 20, then dies
    if applied_before_dying:  # ... after applying them, before acknowledging
        await services.realtime.processor.apply([e for e in events[:20]], tenant_id=tenant)
    assert len(reply[0][1]) == 20

    rescuer = services.realtime.consumer(name="rescuer", claim_idle_ms=50)
    rescuer._streams[key] = tenant
    assert await rescuer.step() == 10  # the entries nobody took
    await asyncio.sleep(0.1)
    assert await rescuer.claim() == 20
    await rescuer.settle()
    assert (await redis.xpending(key, GROUP))["pending"] == 0
    hot = await read_hot(redis, ["u0", "u1", "u2"], tenant_id=tenant)
    assert [hot[u].applied for u in ("u0", "u1", "u2")] == [10, 10, 10]
    bucket = base // 1000 // BUCKET_S
    assert await redis.zscore(bucket_key(tenant, sid, bucket), "v1") == pytest.approx(30 * view_weight)
    assert await rescuer.claim() == 0
    await rescuer.settle()
    assert await redis.zscore(bucket_key(tenant, sid, bucket), "v1") == pytest.approx(30 * view_weight)
    assert (await metrics(redis, tenant, sid))[c.INTERACTIONS] == 30


async def test_live_popularity_window_and_trending(served, shop):
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    newest = NOW - timedelta(minutes=1)
    hour_ago = newest - timedelta(minutes=70)
    events = [event(sid, f"p{n}", "v1", "CLICK", timestamp=hour_ago, event_id=f"old{n}") for n in range(5)]
    events += [event(sid, f"p{n}", "v2", "CLICK", timestamp=newest, event_id=f"new{n}") for n in range(3)]
    events += [event(sid, "p9", "v1", "CLICK", timestamp=newest, event_id="new-v1")]
    await services.events.record(events, tenant_id=tenant)
    await drained(services, tenant)

    live = LivePopularity(redis, ttl_s=60)
    lists = await live.lists(tenant_id=tenant, scenario_id=sid)
    # In the last hour: v2 three clicks, v1 one (its five are older than the window).
    assert [item for item, _ in lists.popular] == ["v2", "v1"]
    assert dict(lists.popular)["v2"] == pytest.approx(3 * 2.0)  # CUSTOM: CLICK weighs 2, newest bucket undecayed
    # v2 rose from nothing; v1 fell.
    assert [item for item, _ in lists.trending] == ["v2"]
    await services.events.record([event(sid, "p8", "v3", "CLICK", timestamp=newest, event_id="late")], tenant_id=tenant)
    await drained(services, tenant)
    assert await live.lists(tenant_id=tenant, scenario_id=sid) == lists  # cached in process for ttl_s
    assert "v3" in dict((await LivePopularity(redis).lists(tenant_id=tenant, scenario_id=sid)).popular)


async def test_the_consumer_waits_while_a_rebuild_holds_the_tenant(served, shop):
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    await redis.set(rebuild_key(tenant), "someone", px=60_000)
    await services.events.record([event(sid, "h1", "v1", event_id="held")], tenant_id=tenant)
    await asyncio.sleep(0.5)
    assert await read_hot(redis, ["h1"], tenant_id=tenant) == {}  # held, unacknowledged
    assert await services.realtime.lag(tenant_id=tenant) == (0, 1)
    await redis.delete(rebuild_key(tenant))
    await drained(services, tenant)
    assert (await read_hot(redis, ["h1"], tenant_id=tenant))["h1"].applied == 1


async def test_events_waiting_in_the_stream_do_not_bring_an_erased_user_back(served, shop):
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    await redis.srem(STREAMS, tenant)  # the app's own consumer stays off: the entries wait until the erasure is done
    key = stream_key(tenant)
    await redis.xgroup_create(key, GROUP, id="0", mkstream=True)
    base = int(time.time() * 1000)
    for n, user in enumerate(["gone", "gone", "kept"]):
        await redis.xadd(key, {FIELD: StreamEvent(f"e{n}", sid, user, "v1", "VIEW", None, base, base).encode()})
    # A consumer read the first two before the erasure and applies them after it (they were in flight).
    in_flight = [StreamEvent(f"e{n}", sid, "gone", "v1", "VIEW", None, base, base) for n in range(2)]
    await services.privacy.delete_user_data("gone", tenant_id=tenant)
    assert await services.realtime.processor.apply(in_flight, tenant_id=tenant) == 2

    consumer = services.realtime.consumer(name="after-erasure")
    consumer._streams[key] = tenant
    assert await consumer.step() == 1  # the erasure deleted the user's entries from the stream
    await consumer.settle()
    hot = await read_hot(redis, ["gone", "kept"], tenant_id=tenant)
    assert "gone" not in hot and hot["kept"].applied == 1
    await consumer.flush()  # snapshots of the users the batch changed
    assert await UserProfile.find_one({"_id": composite_id(tenant, "kept")}) is not None
    assert await UserProfile.find_one({"_id": composite_id(tenant, "gone")}) is None
    bucket = base // 1000 // BUCKET_S
    view_weight = (await services.realtime.processor.weights({sid}, tenant_id=tenant))[sid].get("VIEW", 1.0)
    assert await redis.zscore(bucket_key(tenant, sid, bucket), "v1") == pytest.approx(3 * view_weight)  # no user kept

    # What the user does after the erasure counts again.
    later = int(time.time() * 1000) + 5
    await redis.xadd(key, {FIELD: StreamEvent("e9", sid, "gone", "v2", "VIEW", None, later, later).encode()})
    assert await consumer.step() == 1
    await consumer.settle()
    assert (await read_hot(redis, ["gone"], tenant_id=tenant))["gone"].applied == 1
