"""Item 9 (readiness part) over HTTP: a consumer that holds a batch without applying it (looping on a failing batch)
turns readiness to 200 `degraded`, never 503, and back to `ok` once the batch is through."""

from __future__ import annotations

import time

import pytest

from domain.realtime.keys import FIELD, GROUP, STREAMS, stream_key
from tests.e2e.test_stream_faults import private_instance

pytestmark = pytest.mark.slow


async def test_item9_readiness_reports_a_stuck_consumer_as_degraded(served):
    async with private_instance(served) as (runtime, _, client, url):
        assert (await client.get(f"{url}/health/ready")).json()["status"] == "ok"
        redis, key = runtime.cache.client, stream_key("stuck-tenant")
        # A batch received a minute ago, delivered to a consumer that never acknowledges it (it keeps failing).
        await redis.sadd(STREAMS, "stuck-tenant")
        entry = await redis.xadd(key, {FIELD: "x"}, id=f"{int(time.time() * 1000) - 60_000}-0")
        await redis.xgroup_create(key, GROUP, id="0")
        await redis.xreadgroup(GROUP, "looping-consumer", {key: ">"})

        ready = await client.get(f"{url}/health/ready")
        body = ready.json()
        assert ready.status_code == 200 and body["status"] == "degraded", body
        assert body["consumer"]["status"] == "stalled" and body["consumer"]["stalledStreams"] == 1
        assert body["down"] == [] and "stuck-tenant" not in ready.text

        await redis.xack(key, GROUP, entry)
        body = (await client.get(f"{url}/health/ready")).json()
        assert body["status"] == "ok" and body["consumer"]["status"] == "ok", body
        await redis.srem(STREAMS, "stuck-tenant")
