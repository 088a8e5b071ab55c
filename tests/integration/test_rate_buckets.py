"""Rate limits (issue 10 item 3): one contract for token buckets and leased slots, kept in this process or in a real
Redis shared by several clients (as several serving processes share it); and a hung Redis costs one timeout."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from domain.ratelimit import Limit, RateLimits, RatePolicy
from domain.tenancy import Principal, Scope
from models.buckets import Bucket, BucketsUnavailable, LocalBuckets, RedisBuckets


@pytest.fixture(params=["local", "redis"])
async def store(request, redis_url) -> AsyncIterator[LocalBuckets | RedisBuckets]:
    if request.param == "local":
        yield LocalBuckets()
        return
    client = aioredis.from_url(redis_url)
    await client.flushdb()
    yield RedisBuckets(client, timeout_s=2.0)
    await client.aclose()


async def test_rate_limits_bucket_allows_its_burst_then_refuses_with_the_wait(store):
    bucket = [Bucket("t:{a}:rl:key:k1", rate=10.0, burst=3)]
    takes = [await store.take(bucket) for _ in range(4)]
    assert [t.allowed for t in takes] == [True, True, True, False]
    assert takes[2].tokens[0] == pytest.approx(0.0, abs=0.05)
    assert takes[3].wait_s == pytest.approx(0.1, abs=0.03)  # one token at 10 a second


async def test_rate_limits_bucket_refills_at_its_rate(store):
    bucket = [Bucket("t:{a}:rl:key:k2", rate=4.0, burst=2)]  # a token per 250 ms: a loaded machine's calls fit
    assert all([(await store.take(bucket)).allowed for _ in range(2)])
    refused = await store.take(bucket)
    assert not refused.allowed
    await asyncio.sleep(refused.wait_s + 0.02)
    assert (await store.take(bucket)).allowed
    assert not (await store.take(bucket)).allowed
    await asyncio.sleep(0.6)  # over two tokens' worth, capped at the burst
    assert [(await store.take(bucket)).allowed for _ in range(3)] == [True, True, False]


async def test_rate_limits_take_is_all_or_nothing_across_buckets(store):
    key, tenant = Bucket("t:{a}:rl:key:k3", 1.0, 5), Bucket("t:{a}:rl:scope:public", 1.0, 2)
    assert (await store.take([key, tenant])).allowed
    assert (await store.take([key, tenant])).allowed
    refused = await store.take([key, tenant])
    assert not refused.allowed
    assert refused.tokens[0] == pytest.approx(3.0, abs=0.01)  # the key's bucket kept its tokens
    other = Bucket("t:{a}:rl:key:k4", 1.0, 5)
    assert not (await store.take([other, tenant])).allowed  # the tenant's bucket binds every key
    assert (await store.take([Bucket("t:{b}:rl:scope:public", 1.0, 2)])).allowed  # another tenant's does not


async def test_rate_limits_slots_cap_release_and_lapse(store):
    key = "t:{a}:rl:subs:k5"
    assert await store.hold(key, "h1", cap=2, lease_s=30)
    assert await store.hold(key, "h2", cap=2, lease_s=0.2)
    assert not await store.hold(key, "h3", cap=2, lease_s=30)
    await store.release(key, "h1")
    assert await store.hold(key, "h3", cap=2, lease_s=30)
    assert not await store.hold(key, "h4", cap=2, lease_s=30)
    await asyncio.sleep(0.3)  # h2's lease lapsed without a release (its process died)
    assert await store.hold(key, "h4", cap=2, lease_s=30)
    await store.renew(key, "h4", lease_s=30)
    assert not await store.hold(key, "h5", cap=2, lease_s=30)


async def test_rate_limits_mark_is_read_with_each_take(store):
    bucket, watch = [Bucket("t:{a}:rl:key:k6", 10.0, 10)], "t:{a}:rl:overrides"
    assert (await store.take(bucket, watch=watch)).watched == ""
    await store.mark(watch, "v1", ttl_s=60)
    assert (await store.take(bucket, watch=watch)).watched == "v1"
    assert (await store.take(bucket)).watched is None


async def test_rate_limits_two_processes_share_one_bucket_atomically(redis_url):
    clients = [aioredis.from_url(redis_url) for _ in range(2)]
    try:
        await clients[0].flushdb()
        stores = [RedisBuckets(c, timeout_s=5.0) for c in clients]
        bucket = [Bucket("t:{a}:rl:key:shared", rate=0.001, burst=25)]
        takes = await asyncio.gather(*(stores[i % 2].take(bucket) for i in range(60)))
        assert sum(t.allowed for t in takes) == 25
        ttl = await clients[1].pttl("t:{a}:rl:key:shared")
        assert 0 < ttl <= 25 / 0.001 * 1000 + 1000  # a bucket left alone expires once full again
    finally:
        for c in clients:
            await c.aclose()


async def _hung_server() -> tuple[asyncio.Server, int]:
    """Return a server that accepts connections and never answers (a Redis paused with SIGSTOP)."""

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def test_rate_limits_hung_redis_costs_one_timeout_then_limits_per_process():
    server, port = await _hung_server()
    client = aioredis.from_url(f"redis://127.0.0.1:{port}", socket_timeout=1.0)
    limits = RateLimits(RedisBuckets(client, timeout_s=0.2), RatePolicy(fallback_s=30.0),
                        read=_no_overrides({"t1": {Scope.PUBLIC: Limit(1.0, 50)}}))
    caller = Principal(tenant_id="t1", scope=Scope.PUBLIC, key_id="k1")
    try:
        began = time.perf_counter()
        assert (await limits.check(caller)).allowed
        first = time.perf_counter() - began
        assert first < 0.5  # the limiter's own bound, not Redis's 1 s socket timeout
        began = time.perf_counter()
        decisions = [await limits.check(caller) for _ in range(60)]
        assert (time.perf_counter() - began) / 60 < 0.005  # no Redis wait on later requests
        assert sum(d.allowed for d in decisions) == 49  # still limited, by this process's bucket
        assert limits.degraded
    finally:
        await client.aclose()
        server.close()


async def test_rate_limits_return_to_redis_after_the_fallback_window(redis_url):
    class Flaky(RedisBuckets):
        down = True

        async def take(self, buckets, **kw):
            if self.down:
                raise BucketsUnavailable("down")
            return await super().take(buckets, **kw)

    client = aioredis.from_url(redis_url)
    await client.flushdb()
    shared = Flaky(client)
    limits = RateLimits(shared, RatePolicy(fallback_s=0.2), read=_no_overrides({}))
    caller = Principal(tenant_id="t2", scope=Scope.PUBLIC, key_id="k2")
    try:
        assert (await limits.check(caller)).allowed and limits.degraded
        shared.down = False
        await limits.check(caller)
        assert await client.exists("t:{t2}:rl:key:k2") == 0  # still within the window: per process
        await asyncio.sleep(0.25)
        await limits.check(caller)
        assert not limits.degraded
        assert await client.exists("t:{t2}:rl:key:k2") == 1
    finally:
        await client.aclose()


def _no_overrides(table: dict):
    async def read(*, tenant_id: str):
        return table.get(tenant_id, {})

    return read
