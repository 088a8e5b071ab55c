"""Item 5 (bounded memory), inactivity: every write of a user's own Redis keys (seen sets, cache version, profile hot
state, recent items) renews their expiry to the configured inactivity, on ingest, in the consumer and in replays."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest

from domain.catalogue import ItemData
from domain.events import InteractionData
from domain.realtime.apply import REPLAY_ASPECTS
from domain.realtime.keys import profile_key, recent_key
from domain.realtime.stream import StreamEvent
from models.cache import RedisCache, tenant_key
from tests.conftest import new_tenant


@pytest.fixture
async def shop(served):
    services = served.runtime.services
    keys = await new_tenant(served, "inactive")
    scenario = await services.scenarios.create(name="feed", template="CUSTOM", config=None, tenant_id=keys.tenant_id)
    assert not (await services.catalogue.upsert([ItemData("v1", categories=("pets",)), ItemData("v2")],
                                                tenant_id=keys.tenant_id, scenario_id=scenario.id)).errors
    return services, keys.tenant_id, scenario.id


def user_keys(tenant: str, sid: str, user: str) -> list[str]:
    return [tenant_key(tenant, "seen", sid, user), tenant_key(tenant, "uv", user), profile_key(tenant, user),
            recent_key(tenant, user)]


async def ttls(redis, keys: list[str]) -> list[int]:
    return [await redis.ttl(k) for k in keys]


async def test_item5_ingest_and_consumer_writes_expire_after_the_inactivity(served, shop):
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    ttl = served.settings.redis.user_state_ttl_s
    assert ttl == 90 * 86400  # the default
    event = InteractionData(scenario_id=sid, user_id="ann", item_id="v1", type="CLICK",
                            timestamp=datetime.now(UTC) - timedelta(minutes=1))
    assert (await services.events.record([event], tenant_id=tenant)).accepted == 1
    assert await services.realtime.wait_drained(tenant_id=tenant, timeout_s=10)
    for key, left in zip(user_keys(tenant, sid, "ann"), await ttls(redis, user_keys(tenant, sid, "ann")), strict=True):
        assert ttl - 60 < left <= ttl, key
    await redis.expire(profile_key(tenant, "ann"), 100)
    assert (await services.events.record([event], tenant_id=tenant)).accepted == 1
    assert await redis.ttl(profile_key(tenant, "ann")) > ttl - 60  # renewed by the next event


async def test_item5_replayed_events_renew_seen_sets_and_profiles(served, shop):
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    ttl = served.settings.redis.user_state_ttl_s
    now = int(time.time() * 1000)
    events = [StreamEvent(f"r{n}", sid, "bob", f"v{n % 2 + 1}", "VIEW", None, now, now) for n in range(4)]
    applied = await services.realtime.processor.apply(events, tenant_id=tenant,
                                                      aspects={n: REPLAY_ASPECTS for n in range(4)})
    assert applied == 4
    keys = [tenant_key(tenant, "seen", sid, "bob"), profile_key(tenant, "bob"), recent_key(tenant, "bob")]
    assert all(ttl - 60 < left <= ttl for left in await ttls(redis, keys)), await ttls(redis, keys)


async def test_item5_label_scores_and_seen_sets_take_the_configured_ttl(served):
    cache = RedisCache(served.runtime.cache.client, user_ttl_s=3600)
    tenant = f"ttl-{time.time_ns()}"
    await cache.record_seen([("sc", "cy", "i1")], tenant_id=tenant)
    await cache.add_label_scores({"cy": {"c:pets": 1.0}}, tenant_id=tenant)
    keys = [tenant_key(tenant, "seen", "sc", "cy"), tenant_key(tenant, "uv", "cy"), tenant_key(tenant, "pf", "cy")]
    assert all(3500 < left <= 3600 for left in await ttls(cache.client, keys))
    await cache.client.delete(*keys)
