"""Item 5 (bounded memory), the memory cap: the embedded Redis runs with `maxmemory` from settings (noeviction),
readiness reports `degraded` above 90% of it, and `/metrics` exports Redis's memory and an estimate per tenant."""

from __future__ import annotations

import uuid

import httpx

from graph.memory_metrics import RedisMemoryExporter
from graph.metrics import Metrics
from graph.metrics_access import TENANT_LABELS
from models.redis_memory import memory_use
from tests.conftest import METRICS_AUTH


async def test_item5_embedded_redis_runs_capped_without_eviction(served):
    client = served.runtime.cache.client
    assert (await client.config_get("maxmemory"))["maxmemory"] == str(served.settings.redis.maxmemory_mb * 2**20)
    assert (await client.config_get("maxmemory-policy"))["maxmemory-policy"] == "noeviction"


async def test_item5_readiness_degrades_above_90_percent_of_maxmemory(served):
    client = served.runtime.cache.client
    before = (await client.config_get("maxmemory"))["maxmemory"]
    async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
        ok = (await http.get("/health/ready")).json()
        assert ok["memory"]["status"] == "ok" and ok["memory"]["maxBytes"] == int(before), ok
        try:
            for _ in range(5):  # used memory moves (keys expire, streams are trimmed): aim again until it is above 90%
                used = (await memory_use(client)).used
                await client.config_set("maxmemory", int(used / 0.95))  # ~95% used: still writable, above 90%
                high = await http.get("/health/ready")
                if high.json()["memory"]["ratio"] > 0.9:
                    break
        finally:
            await client.config_set("maxmemory", before)
        again = (await http.get("/health/ready")).json()
    assert high.status_code == 200, high.text
    assert high.json()["status"] == "degraded" and high.json()["memory"]["status"] == "high", high.text
    assert high.json()["memory"]["ratio"] > 0.9
    assert again["memory"]["status"] == "ok"


async def test_item5_metrics_export_memory_per_tenant_to_authorised_scrapes_only(served):
    tenant = f"mem-{uuid.uuid4().hex[:8]}"
    client = served.runtime.cache.client
    keys = [f"t:{{{tenant}}}:blob:{n}" for n in range(2000)]
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.set(key, "x" * 2000, ex=300)
        await pipe.execute()
    try:
        metrics = Metrics()
        exporter = RedisMemoryExporter(metrics, samples=300)
        await exporter.refresh(client, tenants=True)
        used = (await memory_use(client)).used
        text = metrics.render().decode()
        hidden = metrics.render(hide_labels=TENANT_LABELS).decode()
        async with httpx.AsyncClient(base_url=served.url, timeout=30) as http:
            app_text = (await http.get("/metrics", headers=METRICS_AUTH)).text
    finally:
        await client.delete(*keys)
    prefix = f'recograph_redis_tenant_memory_bytes{{tenant="{tenant}"}}'
    series = [line for line in text.splitlines() if line.startswith(prefix)]
    assert series, text
    estimate = float(series[0].split()[-1])
    assert 2000 * 2000 * 0.3 < estimate <= used * 1.5  # most of the sampled bytes are the tenant's 4 MB
    assert "recograph_redis_used_memory_bytes" in hidden and "recograph_redis_tenant_memory_bytes{" not in hidden
    assert "recograph_redis_maxmemory_bytes" in app_text and "recograph_redis_used_memory_bytes" in app_text
