"""Readiness follows the stores: MongoDB down is 503, Redis down is 200 degraded; liveness never depends on them."""

from __future__ import annotations

import httpx
from beanie import init_beanie

from graph.runtime import open_runtime
from models.documents import DOCUMENTS
from tests.conftest import METRICS_AUTH, free_port, isolated_settings, serve_app


async def test_ready_degrades_then_fails_as_servers_stop(served):
    settings = isolated_settings(port=free_port())
    runtime = await open_runtime(settings)
    try:
        async with serve_app(settings, runtime) as url, httpx.AsyncClient(base_url=url, timeout=30) as client:
            ok = await client.get("/health/ready")
            assert ok.status_code == 200 and ok.json()["status"] == "ok", ok.text

            await runtime.servers.redis.stop()
            degraded = await client.get("/health/ready")
            assert degraded.status_code == 200
            assert degraded.json()["status"] == "degraded"
            assert degraded.json()["down"] == ["redis"]

            await runtime.servers.mongo.stop()
            down = await client.get("/health/ready")
            assert down.status_code == 503
            assert "mongodb" in down.json()["down"]

            live = await client.get("/health/live")
            assert live.status_code == 200
    finally:
        await runtime.close()
        # Beanie binds documents process-wide: point them back at the shared test server.
        await init_beanie(database=served.runtime.mongo[served.settings.mongo.database], document_models=DOCUMENTS)


async def test_metrics_endpoint_counts_operations(served, gql):
    await gql("query Probe { __typename }")
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{served.url}/metrics", headers=METRICS_AUTH)).text
    assert 'recograph_graphql_operations_total{operation="Probe",status="ok",type="query"}' in text
