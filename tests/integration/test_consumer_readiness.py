"""Item 9 (readiness part): whether the consumer keeps up, read from a real Redis: entries waiting longer than the
stall time (pending on a failing batch, or not delivered), entries waiting without any consumer, a rebuild's wait."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from domain.realtime.keys import FIELD, GROUP, HEARTBEAT, STREAMS, rebuild_key, stream_key
from domain.realtime.readiness import consumer_readiness


@pytest.fixture
async def redis(redis_url) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    await client.set(HEARTBEAT, "consumer-1", px=5000)
    yield client
    await client.aclose()


async def add(redis: Redis, tenant: str, age_s: float, n: int = 1) -> None:
    """Append n entries received age_s ago to the tenant's stream (registered for the consumers)."""
    await redis.sadd(STREAMS, tenant)
    ms = int((time.time() - age_s) * 1000)
    for seq in range(n):
        await redis.xadd(stream_key(tenant), {FIELD: "x"}, id=f"{ms}-{seq}")


async def join(redis: Redis, tenant: str) -> None:
    await redis.xgroup_create(stream_key(tenant), GROUP, id="0", mkstream=True)


async def deliver(redis: Redis, tenant: str, count: int) -> None:
    """Deliver entries to a consumer that never acknowledges them (one looping on a failing batch)."""
    await redis.xreadgroup(GROUP, "stuck", {stream_key(tenant): ">"}, count=count)


async def test_item9_fresh_entries_and_acknowledged_old_ones_are_ok(redis) -> None:
    await add(redis, "t1", age_s=120)
    await join(redis, "t1")
    await deliver(redis, "t1", 1)
    [(mid, _)] = (await redis.xrange(stream_key("t1")))
    await redis.xack(stream_key("t1"), GROUP, mid)
    await add(redis, "t1", age_s=1)
    found = await consumer_readiness(redis, stall_s=30)
    assert found.status == "ok" and found.waiting_streams == 1 and found.stalled_streams == 0
    assert 0 <= found.oldest_waiting_s < 30


async def test_item9_a_batch_pending_past_the_stall_time_is_stalled(redis) -> None:
    await add(redis, "ok-tenant", age_s=1)
    await join(redis, "ok-tenant")
    await add(redis, "poison", age_s=45, n=3)
    await join(redis, "poison")
    await deliver(redis, "poison", 3)
    found = await consumer_readiness(redis, stall_s=30)
    assert found.status == "stalled" and found.stalled_streams == 1 and found.waiting_streams == 2
    assert 44 <= found.oldest_waiting_s < 60
    assert "poison" not in str(found.as_dict())  # a probe names no tenant


async def test_item9_undelivered_entries_past_the_stall_time_are_a_lag(redis) -> None:
    await add(redis, "behind", age_s=40)
    await join(redis, "behind")
    assert (await consumer_readiness(redis, stall_s=30)).status == "stalled"
    assert (await consumer_readiness(redis, stall_s=60)).status == "ok"


async def test_item9_waiting_entries_without_a_consumer_are_reported(redis) -> None:
    await redis.delete(HEARTBEAT)
    await add(redis, "t1", age_s=10)  # no group yet: no consumer ever joined
    found = await consumer_readiness(redis, stall_s=30)
    assert found.status == "absent" and not found.alive


async def test_item9_a_tenant_held_by_a_rebuild_waits_on_purpose(redis) -> None:
    await add(redis, "rebuilding", age_s=90)
    await join(redis, "rebuilding")
    await redis.set(rebuild_key("rebuilding"), "1", ex=60)
    found = await consumer_readiness(redis, stall_s=30)
    assert found.status == "ok" and found.waiting_streams == 0
