"""Everything a running recograph holds open: servers, clients, services. Opened once, closed once."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass

import structlog
from pymongo import AsyncMongoClient

from domain.services import Services
from models.cache import RedisCache
from models.embedded import EmbeddedServers
from models.mongo import connect_mongo, mongo_alive
from models.settings import Settings
from models.vectors import VectorStore, open_vector_store

log = structlog.get_logger()


@dataclass
class Runtime:
    settings: Settings
    servers: EmbeddedServers
    mongo: AsyncMongoClient
    cache: RedisCache
    vectors: VectorStore | None
    services: Services

    async def health(self, timeout_s: float = 1.0) -> dict[str, bool]:
        """Return whether each component answers within timeout_s (a probe must answer fast)."""
        checks = {"mongodb": mongo_alive(self.mongo), "redis": self.cache.ping()}
        if self.vectors is not None:
            checks["vectors"] = self.vectors.ping()
        results = await asyncio.gather(*(_within(c, timeout_s) for c in checks.values()))
        return dict(zip(checks, results, strict=True))

    async def close(self) -> None:
        """Close clients, then stop what we started."""
        if self.vectors is not None:
            await self.vectors.close()
        await self.cache.close()
        await self.mongo.close()
        await self.servers.stop()


async def _within(check: Awaitable[bool], timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(check, timeout_s)
    except TimeoutError:
        return False


async def open_runtime(settings: Settings, *, with_vectors: bool = True) -> Runtime:
    """Start or attach to the servers and open every client; undo what was opened if a step fails."""
    data_dir = None if settings.server.in_memory else settings.server.data_dir
    servers = EmbeddedServers(data_dir=data_dir, mongo_url=settings.mongo.url, redis_url=settings.redis.url)
    await servers.start()
    opened: list = []
    try:
        mongo, _ = await connect_mongo(servers.mongo_url, settings.mongo.database, timeout_ms=settings.mongo.timeout_ms)
        opened.append(mongo)
        cache = RedisCache.from_url(servers.redis_url, timeout_s=settings.redis.timeout_s)
        opened.append(cache)
        vectors = (
            open_vector_store(url=settings.qdrant.url, api_key=settings.qdrant.api_key, data_dir=data_dir)
            if with_vectors
            else None
        )
    except BaseException:
        for client in reversed(opened):
            await client.close()
        await servers.stop()
        raise
    services = Services.build(cache=cache, vectors=vectors)
    return Runtime(settings=settings, servers=servers, mongo=mongo, cache=cache, vectors=vectors, services=services)
