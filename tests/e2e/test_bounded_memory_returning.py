"""Item 5 (bounded memory), returning users: a user whose Redis state expired (simulated: their keys deleted and
their stored events aged past the markers) gets their seen sets and profile back from MongoDB within seconds of
their next request or event, in the background, and items they saw are filtered again."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from domain.catalogue import ItemData
from domain.events import InteractionData
from domain.realtime.hotstate import read_hot
from domain.realtime.keys import profile_key, recent_key
from models.cache import tenant_key
from models.documents import Interaction, UserProfile, composite_id
from tests.conftest import new_tenant

LONG_AGO = datetime.now(UTC) - timedelta(days=100)


@pytest.fixture
async def shop(served):
    services = served.runtime.services
    tenant = (await new_tenant(served, "returning")).tenant_id
    scenario = await services.scenarios.create(name="shop", template="ECOMMERCE", config=None, tenant_id=tenant)
    items = [ItemData(f"p{n}", categories=("pets",)) for n in range(12)]
    assert not (await services.catalogue.upsert(items, tenant_id=tenant, scenario_id=scenario.id)).errors
    return services, tenant, scenario.id


async def expire_user(served, tenant: str, sid: str, user: str, items: list[str]) -> None:
    """Store the user's purchases, then make them 100 days old with their Redis keys gone (as after expiry)."""
    services, redis = served.runtime.services, served.runtime.cache.client
    events = [InteractionData(scenario_id=sid, user_id=user, item_id=i, type="PURCHASE",
                              timestamp=datetime.now(UTC) - timedelta(minutes=5)) for i in items]
    assert (await services.events.record(events, tenant_id=tenant)).accepted == len(items)
    assert await services.realtime.wait_drained(tenant_id=tenant, timeout_s=10)
    deadline = time.monotonic() + 10  # a user inactive for the TTL was snapshotted long ago: wait for the snapshot
    while await UserProfile.get_pymongo_collection().find_one({"_id": composite_id(tenant, user)}) is None:
        assert time.monotonic() < deadline, "no profile snapshot"
        await asyncio.sleep(0.1)
    await Interaction.get_pymongo_collection().update_many(
        {"tenant_id": tenant, "user_id": user}, {"$set": {"received_at": LONG_AGO, "ts": LONG_AGO}})
    await redis.delete(tenant_key(tenant, "seen", sid, user), tenant_key(tenant, "uv", user),
                       profile_key(tenant, user), recent_key(tenant, user))


async def recommend(services, tenant: str, sid: str, user: str) -> list[str]:
    page = await services.recommendations.recommend(tenant_id=tenant, scenario_id=sid, user_id=user, first=12,
                                                    after=None, context=None, exclude_seen=True, debug=False,
                                                    max_first=50)
    return [r.item_id for r in page.items]


async def restored(served, tenant: str, sid: str, user: str, timeout_s: float = 5.0) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if found := await served.runtime.cache.seen(sid, user, tenant_id=tenant):
            return found
        await asyncio.sleep(0.05)
    return set()


async def test_item5_a_returning_users_request_brings_seen_sets_and_profile_back(served, shop):
    services, tenant, sid = shop
    bought = ["p1", "p2", "p3"]
    await expire_user(served, tenant, sid, "back", bought)
    assert await served.runtime.cache.seen(sid, "back", tenant_id=tenant) == set()

    await recommend(services, tenant, sid, "back")  # notes the user; never waits for MongoDB
    assert await restored(served, tenant, sid, "back") == set(bought)
    hot = (await read_hot(served.runtime.cache.client, ["back"], tenant_id=tenant))["back"]
    assert hot.applied == 3 and hot.counts_by_type == {"PURCHASE": 3}
    assert not set(bought) & set(await recommend(services, tenant, sid, "back"))  # filtered again


async def test_item5_a_returning_users_event_brings_their_history_back_without_double_counting(served, shop):
    services, tenant, sid = shop
    await expire_user(served, tenant, sid, "again", ["p4", "p5"])
    now = datetime.now(UTC) - timedelta(seconds=5)
    new = InteractionData(scenario_id=sid, user_id="again", item_id="p6", type="PURCHASE", timestamp=now)
    assert (await services.events.record([new], tenant_id=tenant)).accepted == 1
    assert await services.realtime.wait_drained(tenant_id=tenant, timeout_s=10)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and len(await restored(served, tenant, sid, "again")) < 3:
        await asyncio.sleep(0.05)
    assert await served.runtime.cache.seen(sid, "again", tenant_id=tenant) == {"p4", "p5", "p6"}
    hot = (await read_hot(served.runtime.cache.client, ["again"], tenant_id=tenant))["again"]
    assert hot.applied == 3  # the two old ones restored, the new one applied once
    # Restored once: another request finds the version set and notes nothing.
    await recommend(services, tenant, sid, "again")
    await asyncio.sleep(0.3)
    hot = (await read_hot(served.runtime.cache.client, ["again"], tenant_id=tenant))["again"]
    assert hot.applied == 3


async def test_item5_the_request_does_not_wait_for_the_restore(served, shop, monkeypatch):
    services, tenant, sid = shop
    await expire_user(served, tenant, sid, "slow", ["p7"])
    release = asyncio.Event()
    returning = services.returning
    original = returning.restore

    async def slow_restore(user_id: str, *, tenant_id: str) -> int:
        await release.wait()  # MongoDB as slow as it gets
        return await original(user_id, tenant_id=tenant_id)

    monkeypatch.setattr(returning, "restore", slow_restore)
    began = time.monotonic()
    await recommend(services, tenant, sid, "slow")
    assert time.monotonic() - began < 1.0
    release.set()
    assert await restored(served, tenant, sid, "slow") == {"p7"}


async def test_item5_a_restore_after_an_erasure_brings_no_key_back(served, shop):
    services, tenant, sid = shop
    await expire_user(served, tenant, sid, "erased-one", ["p8"])
    await services.privacy.delete_user_data("erased-one", tenant_id=tenant)
    assert await services.returning.restore("erased-one", tenant_id=tenant) == 0  # MongoDB holds nothing of it
    keys = [k async for k in served.runtime.cache.client.scan_iter(match=f"t:{{{tenant}}}:*erased-one*")]
    assert keys == []


async def test_item5_a_new_user_costs_one_read_by_id_not_a_scan_of_events(served, shop, monkeypatch):
    services, tenant, sid = shop

    async def never(*args, **kwargs):
        raise AssertionError("a new user's events were looked up")

    monkeypatch.setattr(type(services.returning), "_expired", never)
    assert await services.returning.restore("brand-new-user", tenant_id=tenant) == 0
    # Checked: the version is written (no further notes), as 0, the version answers were cached under meanwhile.
    assert await served.runtime.cache.client.get(tenant_key(tenant, "uv", "brand-new-user")) == b"0"


async def test_item5_a_new_users_second_request_is_answered_from_the_cache_and_notes_nobody(served, shop):
    services, tenant, sid = shop
    first = await services.recommendations.recommend(tenant_id=tenant, scenario_id=sid, user_id="new-visitor",
                                                     first=5, after=None, context=None, exclude_seen=True,
                                                     debug=False, max_first=50)
    deadline = time.monotonic() + 5  # the first request noted the user: wait for the background check
    while await served.runtime.cache.client.get(tenant_key(tenant, "uv", "new-visitor")) is None:
        assert time.monotonic() < deadline, "the new user was never checked"
        await asyncio.sleep(0.05)
    noted = []
    original = services.returning.note
    services.returning.note = lambda user_id, *, tenant_id: noted.append(user_id) or original(user_id,
                                                                                               tenant_id=tenant_id)
    try:
        second = await services.recommendations.recommend(tenant_id=tenant, scenario_id=sid, user_id="new-visitor",
                                                          first=5, after=None, context=None, exclude_seen=True,
                                                          debug=False, max_first=50)
    finally:
        del services.returning.note
    assert second.request_id == first.request_id  # the answer cached by the first request
    assert [r.item_id for r in second.items] == [r.item_id for r in first.items]
    assert noted == []
