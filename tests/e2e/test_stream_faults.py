"""Faults around the event stream, through HTTP against a private instance: Redis restarted (with and without its
data), MongoDB down. No event may be lost or counted twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from beanie import init_beanie
from redis.asyncio import Redis

from domain.realtime import contracts as c
from domain.realtime.apply import BUCKET_S
from domain.realtime.keys import bucket_key, stream_key
from graph.runtime import open_runtime
from models.documents import DOCUMENTS
from models.embedded.process import free_port
from models.embedded.servers import find_redis_command
from tests.conftest import GraphQL, isolated_settings, new_tenant, serve_app

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
RECORD = "mutation($events: [InteractionInput!]!) { recordInteractions(events: $events) { accepted duplicates } }"
PROFILE = "query($u: ID!) { profile(userId: $u) { interactionCount } }"
WHEN = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=20)


class RedisProcess:
    """A redis-server on a fixed port that a test stops and starts again (keeping its files when persist)."""

    def __init__(self, home: Path, *, persist: bool) -> None:
        self.port, self.home, self.persist = free_port(), home, persist
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    async def start(self) -> None:
        keep = ["--appendonly", "yes"] if self.persist else ["--save", "", "--appendonly", "no"]
        self.proc = await asyncio.create_subprocess_exec(
            find_redis_command(), "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.home), *keep,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
        )
        client = Redis.from_url(self.url)
        deadline = time.monotonic() + 10
        while True:
            try:
                await client.ping()
                break
            except Exception:
                assert time.monotonic() < deadline, "redis-server did not start"
                await asyncio.sleep(0.05)
        await client.aclose()

    async def stop(self) -> None:
        assert self.proc is not None
        self.proc.terminate()  # SIGTERM: the append-only file is flushed
        await self.proc.wait()


@asynccontextmanager
async def private_instance(served, redis_url: str | None = None, mongo_timeout_ms: int = 5000) -> AsyncIterator:
    """Serve a private in-memory instance (optionally on the given Redis); point Beanie back at the shared one after."""
    settings = isolated_settings(port=free_port())
    update = {"mongo": settings.mongo.model_copy(update={"timeout_ms": mongo_timeout_ms})}
    if redis_url is not None:
        update["redis"] = settings.redis.model_copy(update={"url": redis_url})
    settings = settings.model_copy(update=update)
    runtime = await open_runtime(settings)
    try:
        async with serve_app(settings, runtime) as url, httpx.AsyncClient(timeout=60) as client:
            yield runtime, GraphQL(client, url), client, url
    finally:
        await runtime.close()
        await init_beanie(database=served.runtime.mongo[served.settings.mongo.database], document_models=DOCUMENTS)


async def setup_shop(served, runtime, gql: GraphQL) -> tuple[str, str, str]:
    keys = await new_tenant(type("S", (), {"runtime": runtime})(), "faults")
    sid = (await gql.data(CREATE, {"input": {"name": "feed", "template": "CUSTOM"}}, key=keys.admin))["createScenario"]["id"]
    await gql.data(UPSERT, {"s": sid, "items": [{"id": "a", "categories": ["x"]}, {"id": "b"}]}, key=keys.admin)
    return keys.admin, keys.tenant_id, sid


def views(sid: str, user: str, ids: list[str], item: str = "a") -> list[dict]:
    return [{"scenarioId": sid, "userId": user, "itemId": item, "type": "VIEW", "eventId": e, "timestamp": WHEN.isoformat()}
            for e in ids]


async def profile_count(gql: GraphQL, key: str, user: str) -> int | None:
    p = (await gql.data(PROFILE, {"u": user}, key=key))["profile"]
    return None if p is None else p["interactionCount"]


async def eventually(check, expected, timeout_s: float = 20.0):
    deadline = time.monotonic() + timeout_s
    while (got := await check()) != expected:
        assert time.monotonic() < deadline, f"still {got!r}, expected {expected!r}"
        await asyncio.sleep(0.1)


async def interactions_counted(redis: Redis, tenant: str, sid: str) -> float:
    """Sum the live `interactions` counter over the last ten minutes."""
    now = int(time.time()) // 60
    values = [await redis.hget(c.minute_key(tenant, sid, m), c.INTERACTIONS) for m in range(now - 10, now + 1)]
    return sum(float(v) for v in values if v is not None)


@pytest.mark.parametrize("persist", [True, False], ids=["redis-keeps-data", "redis-loses-data"])
async def test_redis_restart_loses_and_double_counts_nothing(served, tmp_path, persist):
    redis_server = RedisProcess(tmp_path, persist=persist)
    await redis_server.start()
    try:
        async with private_instance(served, redis_server.url) as (runtime, gql, client, url):
            key, tenant, sid = await setup_shop(served, runtime, gql)
            assert (await gql.data(RECORD, {"events": views(sid, "u", ["e1", "e2", "e3"])}, key=key))[
                "recordInteractions"]["accepted"] == 3
            assert await profile_count(gql, key, "u") == 3

            await redis_server.stop()
            # Ingest stores to MongoDB and says so; readiness degrades.
            res = (await gql.data(RECORD, {"events": views(sid, "u", ["e4", "e5"], "b")}, key=key))["recordInteractions"]
            assert res == {"accepted": 2, "duplicates": 0}
            ready = await client.get(f"{url}/health/ready")
            assert ready.status_code == 200 and ready.json()["status"] == "degraded" and "redis" in ready.json()["down"]
            # A resend while Redis is down is still recognised.
            res = (await gql.data(RECORD, {"events": views(sid, "u", ["e5"], "b")}, key=key))["recordInteractions"]
            assert res == {"accepted": 0, "duplicates": 1}

            await redis_server.start()
            await eventually(lambda: profile_count(gql, key, "u"), 5)
            redis = Redis.from_url(redis_server.url)
            bucket = int(WHEN.timestamp()) // BUCKET_S
            pop = dict(await redis.zrange(bucket_key(tenant, sid, bucket), 0, -1, withscores=True))
            assert pop == {b"a": 3.0, b"b": 2.0}  # CUSTOM: VIEW weighs 1
            assert await interactions_counted(redis, tenant, sid) == 5
            # Catching up again (another recovery, a restart) applies nothing twice.
            assert await runtime.services.realtime.catch_up(tenant_id=tenant) == 0
            await asyncio.sleep(0.5)
            assert await profile_count(gql, key, "u") == 5
            assert dict(await redis.zrange(bucket_key(tenant, sid, bucket), 0, -1, withscores=True)) == pop
            assert await interactions_counted(redis, tenant, sid) == 5
            # And the stream works as before.
            await gql.data(RECORD, {"events": views(sid, "u", ["e6"])}, key=key)
            assert await profile_count(gql, key, "u") == 6
            await redis.aclose()
    finally:
        if redis_server.proc is not None and redis_server.proc.returncode is None:
            await redis_server.stop()


async def test_mongo_down_refuses_ingest_clearly_and_appends_nothing(served):
    async with private_instance(served, mongo_timeout_ms=1000) as (runtime, gql, client, url):
        key, tenant, sid = await setup_shop(served, runtime, gql)
        await gql.data(RECORD, {"events": views(sid, "u", ["m1"])}, key=key)
        redis = runtime.cache.client
        length = await redis.xlen(stream_key(tenant))

        await runtime.servers.mongo.stop()
        body = await gql(RECORD, {"events": views(sid, "u", ["m2", "m3"])}, key=key)
        assert body["data"] is None
        (error,) = body["errors"]
        assert error["extensions"]["code"] == "SERVICE_UNAVAILABLE"
        assert "nothing was stored" in error["message"] and "send" in error["message"]
        assert await redis.xlen(stream_key(tenant)) == length
