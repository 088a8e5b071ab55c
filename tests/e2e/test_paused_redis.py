"""Item 11 over HTTP: a private instance's embedded Redis paused (SIGSTOP). The first answer costs about one Redis
timeout, the next ones come at once (from popular items), events are still accepted (stored in MongoDB), readiness
and /metrics show the open breaker; after SIGCONT answers use Redis again within 5 s."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time

import pytest

from models.breaker import BreakerState
from tests.e2e.test_stream_faults import CREATE, RECORD, UPSERT, private_instance
from tests.conftest import new_tenant

pytestmark = pytest.mark.slow

RECOMMEND = """query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 5) {
  items { item { id } } } }"""
ITEMS = [{"id": f"i{n}", "categories": ["c"]} for n in range(20)]
FAST_S = 0.3  # "at normal latency": a generous bound on a shared 2-core machine (normal p99 is a few ms)


async def timed_recommend(gql, key: str, sid: str, user: str) -> tuple[float, list[str]]:
    began = time.monotonic()
    data = await gql.data(RECOMMEND, {"s": sid, "u": user}, key=key)
    return time.monotonic() - began, [row["item"]["id"] for row in data["recommendations"]["items"]]


def views(sid: str, user: str, items: list[str], tag: str) -> list[dict]:
    return [{"scenarioId": sid, "userId": user, "itemId": i, "type": "VIEW", "eventId": f"{tag}-{user}-{i}"}
            for i in items]


def breaker_gauge(text: str, store: str) -> float:
    return float(re.search(rf'^recograph_store_breaker_state{{store="{store}"}} (\S+)$', text, re.M).group(1))


async def test_item11_a_paused_redis_costs_one_timeout_then_answers_come_fast_and_fresh_after(served):
    async with private_instance(served) as (runtime, gql, client, url):
        timeout_s = runtime.settings.redis.timeout_s
        keys = await new_tenant(type("S", (), {"runtime": runtime})(), "paused")
        sid = (await gql.data(CREATE, {"input": {"name": "feed", "template": "CUSTOM"}}, key=keys.admin))[
            "createScenario"]["id"]
        await gql.data(UPSERT, {"s": sid, "items": ITEMS}, key=keys.admin)
        await gql.data(RECORD, {"events": views(sid, "w", ["i0", "i1", "i2"], "before")}, key=keys.admin)
        normal = sorted([(await timed_recommend(gql, keys.public, sid, f"n{n}"))[0] for n in range(20)])
        _, seen_before = await timed_recommend(gql, keys.public, sid, "w")
        assert not {"i0", "i1", "i2"} & set(seen_before)  # the seen filter reads Redis

        redis_pid = runtime.servers.redis.pid
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            first, items = await timed_recommend(gql, keys.public, sid, "p0")
            later = [(await timed_recommend(gql, keys.public, sid, f"p{n}"))[0] for n in range(1, 11)]
            began = time.monotonic()
            accepted = (await gql.data(RECORD, {"events": views(sid, "p0", ["i5"], "paused")}, key=keys.public))[
                "recordInteractions"]["accepted"]
            record_s = time.monotonic() - began
            ready = (await client.get(f"{url}/health/ready")).json()
            gauge = breaker_gauge((await client.get(f"{url}/metrics")).text, "redis")
        finally:
            os.kill(redis_pid, signal.SIGCONT)
            resumed = time.monotonic()
        print(f"\nitem11 latencies: normal p50 {normal[10] * 1000:.1f} ms, max {normal[-1] * 1000:.1f} ms; paused: "
              f"first {first * 1000:.0f} ms, next max {max(later) * 1000:.1f} ms, recordInteractions "
              f"{record_s * 1000:.1f} ms")
        assert items  # answered from popular items
        # About one timeout: the request's Redis reads go out together and the first to time out opens the breaker
        # for the rest. The bound leaves a loaded CI machine a second of slack; a retrying or serial path would pay
        # several timeouts and still fail it.
        assert first < 3 * timeout_s
        assert max(later) < FAST_S, later
        assert accepted == 1 and record_s < FAST_S
        assert ready["status"] == "degraded" and ready["breakers"]["redis"] in ("open", "half-open"), ready
        assert gauge in (1.0, 2.0)

        # Fresh again: the seen filter reads Redis (the breaker closed) within 5 s of Redis answering.
        breaker = runtime.cache.breaker
        while True:
            _, items = await timed_recommend(gql, keys.public, sid, "w")
            if breaker.state is BreakerState.CLOSED and not {"i0", "i1", "i2"} & set(items):
                break
            assert time.monotonic() - resumed < 5, (breaker.state, items)
            await asyncio.sleep(0.05)
        fresh_s = time.monotonic() - resumed
        print(f"item11 fresh answers {fresh_s * 1000:.0f} ms after SIGCONT")
        assert breaker_gauge((await client.get(f"{url}/metrics")).text, "redis") == 0.0
