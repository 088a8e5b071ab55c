"""Item 11 on real stores: a paused redis-server costs one timeout, then commands fail fast until it answers again;
a vector store that hangs is cut off the same way."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator

import pytest
from redis.exceptions import ResponseError

from models.breaker import BreakerState
from models.cache import BlobWrite, CacheUnavailable, RedisCache
from models.embedded.servers import ServerHandle, start_redis
from models.redis_guard import RedisCircuitOpen
from models.vectors import InMemoryVectorStore, VectorStoreUnavailable
from models.vectors.guarded import guard

TIMEOUT_S = 0.5
TENANT = "t1"


@pytest.fixture
async def redis(tmp_path) -> AsyncIterator[ServerHandle]:
    handle = await start_redis(tmp_path, tmp_path / "redis.log", persist=False)
    yield handle
    if handle.child is not None and handle.child.exit_code() is None:
        os.kill(handle.pid, signal.SIGCONT)  # a test that failed while Redis was paused must not leave it so
    await handle.stop()


async def timed(call) -> tuple[float, BaseException | None]:
    began = time.monotonic()
    try:
        await call
    except Exception as exc:  # noqa: BLE001 - the test looks at which
        return time.monotonic() - began, exc
    return time.monotonic() - began, None


async def test_item11_a_paused_redis_costs_one_timeout_then_fails_fast_and_recovers(redis) -> None:
    cache = RedisCache.from_url(redis.url, timeout_s=TIMEOUT_S, cooldown_s=0.5)
    try:
        await cache.put_blob("k", value="v", ttl_s=60, tenant_id=TENANT)
        os.kill(redis.pid, signal.SIGSTOP)
        try:
            first, error = await timed(cache.get_blob("k", tenant_id=TENANT))
            assert isinstance(error, CacheUnavailable) and TIMEOUT_S * 0.8 <= first < TIMEOUT_S * 2
            assert cache.breaker.state is not BreakerState.CLOSED  # probing at once, or open after the probe
            # Single commands, pipelines and scripts all pass the breaker: each fails at once now.
            for call in (cache.get_blob("k", tenant_id=TENANT), cache.seen("s", "u", tenant_id=TENANT),
                         cache.put_blobs([BlobWrite(("a",), "b", 60)], tenant_id=TENANT),
                         cache.user_state("s", "u", ("a",), tenant_id=TENANT)):
                spent, error = await timed(call)
                assert isinstance(error, CacheUnavailable) and spent < 0.05, (spent, error)
            spent, error = await timed(cache.client.xadd("t:{t1}:events", {"d": "x"}))
            assert isinstance(error, RedisCircuitOpen) and spent < 0.05
            assert await cache.ping() is False
        finally:
            os.kill(redis.pid, signal.SIGCONT)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                assert await cache.get_blob("k", tenant_id=TENANT) == "v"
                break
            except CacheUnavailable:
                await asyncio.sleep(0.05)
        assert cache.breaker.state is BreakerState.CLOSED
        assert time.monotonic() < deadline
    finally:
        await cache.close()


async def test_item11_error_replies_prove_redis_answers_and_keep_the_breaker_closed(redis) -> None:
    cache = RedisCache.from_url(redis.url, timeout_s=TIMEOUT_S, failures=1)
    try:
        await cache.client.set("text", "not a number")
        for _ in range(3):
            with pytest.raises(ResponseError):
                await cache.client.incr("text")
        assert cache.breaker.state is BreakerState.CLOSED
        assert await cache.client.get("text") == b"not a number"
    finally:
        await cache.close()


async def test_item11_a_stopped_redis_opens_after_consecutive_refusals(redis) -> None:
    cache = RedisCache.from_url(redis.url, timeout_s=TIMEOUT_S, failures=3)
    try:
        await redis.stop()
        for _ in range(3):
            with pytest.raises(CacheUnavailable):
                await cache.seen("s", "u", tenant_id=TENANT)
        assert cache.breaker.state is BreakerState.OPEN
        with pytest.raises(CacheUnavailable, match="circuit open"):
            await cache.seen("s", "u", tenant_id=TENANT)
    finally:
        await cache.close()


class HangingStore(InMemoryVectorStore):
    """A vector store whose reads hang while `hung` is set (a Qdrant server that stopped answering)."""

    hung = False

    async def search(self, *args, **kwargs):
        while self.hung:
            await asyncio.sleep(0.01)
        return await super().search(*args, **kwargs)

    async def ping(self) -> bool:
        return not self.hung


async def test_item11_a_hanging_vector_store_costs_one_read_timeout_then_fails_fast() -> None:
    inner = HangingStore()
    store = guard(inner, cooldown_s=0.2, read_timeout_s=0.3)
    await store.ensure_space("s", dim=2)
    inner.hung = True
    first, error = await timed(store.search("s", [1.0, 0.0], tenant_id=TENANT, limit=5))
    assert isinstance(error, TimeoutError) and 0.25 <= first < 0.6
    assert store.breaker.state is not BreakerState.CLOSED  # probing at once, or open after the probe
    spent, error = await timed(store.search("s", [1.0, 0.0], tenant_id=TENANT, limit=5))
    assert isinstance(error, VectorStoreUnavailable) and spent < 0.05
    assert await store.ping() is False

    inner.hung = False
    deadline = time.monotonic() + 3
    while store.breaker.state is not BreakerState.CLOSED and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        await store.ping()  # readiness pings: one of them finds the cooldown over and starts the probe
    assert await store.search("s", [1.0, 0.0], tenant_id=TENANT, limit=5) == []
    await store.close()
