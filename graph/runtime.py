"""Everything a running recograph holds open: servers, clients, services. Opened once, closed once."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path

import structlog
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from pymongo import AsyncMongoClient

from domain.jobs import ArqQueue
from domain.learning.service import LearningConfig
from domain.migrations import migrate
from domain.ratelimit import Limit, RatePolicy
from domain.recommend.serving import ModelRegistry, SwapChannel
from graph.heap import HeapSettler
from domain.services import Services
from domain.tenancy import Scope
from models.breaker import CircuitBreaker
from models.cache import RedisCache
from models.embedded import EmbeddedServers
from models.mongo import connect_mongo, mongo_alive, sorts_every_match
from models.settings import RateLimitSettings, Settings
from models.vectors import VectorStore, open_vector_store, searches_in_memory
from workers.settings import job_policy

log = structlog.get_logger()


@dataclass
class Runtime:
    settings: Settings
    servers: EmbeddedServers
    mongo: AsyncMongoClient
    cache: RedisCache
    vectors: VectorStore | None
    services: Services
    arq: ArqRedis | None = None  # the job queue
    registry: ModelRegistry | None = None  # the serving copy of every scenario's model (serving processes only)
    models_dir: Path | None = None
    scratch_models: bool = False  # models_dir is a temporary directory to remove on close
    heap: HeapSettler | None = None  # freezes the heap after models change (serving processes, `freeze_heap`)

    async def health(self, timeout_s: float = 1.0) -> dict[str, bool]:
        """Return whether each component answers within timeout_s (a probe must answer fast)."""
        checks = {"mongodb": mongo_alive(self.mongo), "redis": self.cache.ping()}
        if self.vectors is not None:
            checks["vectors"] = self.vectors.ping()
        results = await asyncio.gather(*(_within(c, timeout_s) for c in checks.values()))
        return dict(zip(checks, results, strict=True))

    def breakers(self) -> dict[str, CircuitBreaker]:
        """Return the circuit breaker of each store that has one, by store name."""
        found = [getattr(self.cache, "breaker", None), getattr(self.vectors, "breaker", None)]
        return {breaker.name: breaker for breaker in found if breaker is not None}

    async def close(self) -> None:
        """Stop training and serving models, close clients, then stop what we started."""
        await self.services.training.close()
        if self.registry is not None:
            await self.registry.stop()
        if self.arq is not None:
            await self.arq.aclose()
        if self.vectors is not None:
            await self.vectors.close()
        await self.cache.close()
        await self.mongo.close()
        await self.servers.stop()
        if self.scratch_models and self.models_dir is not None:
            shutil.rmtree(self.models_dir, ignore_errors=True)


async def _within(check: Awaitable[bool], timeout_s: float) -> bool:
    try:
        return await asyncio.wait_for(check, timeout_s)
    except TimeoutError:
        return False


async def open_runtime(settings: Settings, *, with_vectors: bool = True, serving: bool | None = None) -> Runtime:
    """Start or attach to the servers and open every client; undo what was opened if a step fails.

    `serving` (default: with_vectors) keeps models in memory for answering; a serving child of `serve` serves
    without the vector store when that is embedded (the shards open in one process only) and searches the models'
    embeddings in memory instead, which ranks the same. So does every process when MongoDB and Redis are shared
    servers and no Qdrant server is named (models.vectors.searches_in_memory): then no host opens a shard of its own.
    """
    serving = with_vectors if serving is None else serving
    with_vectors = with_vectors and not _searches_in_memory(settings)
    data_dir = None if settings.server.in_memory else settings.server.data_dir
    servers = EmbeddedServers(data_dir=data_dir, mongo_url=settings.mongo.url, redis_url=settings.redis.url,
                              redis_maxmemory_mb=settings.redis.maxmemory_mb)
    await servers.start()
    opened: list = []
    try:
        mongo, db = await connect_mongo(servers.mongo_url, settings.mongo.database,
                                        timeout_ms=settings.mongo.timeout_ms)
        opened.append(mongo)
        await migrate(db)  # pending schema migrations, once, under a lock (one read when none is pending)
        windowed_listing = await sorts_every_match(mongo)
        cache = RedisCache.from_url(servers.redis_url, timeout_s=settings.redis.timeout_s,
                                    failures=settings.breaker.failures, cooldown_s=settings.breaker.cooldown_s,
                                    user_ttl_s=settings.redis.user_state_ttl_s)
        opened.append(cache)
        arq = await create_pool(RedisSettings.from_dsn(servers.redis_url))
        opened.append(arq)
        vectors = (
            open_vector_store(url=settings.qdrant.url, api_key=settings.qdrant.api_key, data_dir=data_dir,
                              breaker=settings.breaker)
            if with_vectors
            else None
        )
    except BaseException:
        for client in reversed(opened):
            await client.close()
        await servers.stop()
        raise
    models_dir, scratch = _models_dir(settings)
    channel = SwapChannel(cache.client)
    # Only a process that serves keeps models in memory; CLI commands do not.
    heap = HeapSettler() if serving and settings.server.freeze_heap else None
    registry = _registry(settings, vectors, models_dir, channel, heap, cache) if serving else None
    learning = LearningConfig(
        models_dir=models_dir, time_limit_s=settings.training.train_time_limit_s, swaps=registry, notifier=channel,
        similarity_time_limit_s=settings.jobs.similarity_time_limit_s,
    )
    services = Services.build(cache=cache, vectors=vectors, engines=registry, queue=ArqQueue(arq), learning=learning,
                              jobs_policy=job_policy(settings), windowed_listing=windowed_listing,
                              rate_policy=rate_policy(settings.rate),
                              attribution_s=settings.realtime.attribution_window_s,
                              consumer_stall_s=settings.server.ready_consumer_stall_s)
    return Runtime(
        settings=settings, servers=servers, mongo=mongo, cache=cache, vectors=vectors, services=services, arq=arq,
        registry=registry, models_dir=models_dir, scratch_models=scratch, heap=heap,
    )


def rate_policy(settings: RateLimitSettings) -> RatePolicy:
    """Return the domain's rate policy from the settings."""
    return RatePolicy(
        keys={
            Scope.PUBLIC: Limit(settings.public_rate, settings.public_burst),
            Scope.ADMIN: Limit(settings.admin_rate, settings.admin_burst),
            Scope.GATEWAY: Limit(settings.gateway_rate, settings.gateway_burst),
        },
        tenant=Limit(settings.tenant_rate, settings.tenant_burst),
        max_subscriptions=settings.max_subscriptions,
        overrides_refresh_s=settings.overrides_refresh_s,
        fallback_s=settings.fallback_s,
        redis_timeout_s=settings.redis_timeout_s,
        enabled=settings.enabled,
    )


def _searches_in_memory(settings: Settings) -> bool:
    """Return whether this process opens no vector store though asked to (shared servers, no Qdrant), saying so."""
    if not searches_in_memory(settings):
        return False
    log.info("vectors.in_memory", reason="MONGODB_URL and REDIS_URL without QDRANT_URL: no vector "
             "store; the models' embeddings are searched in memory")
    return True


def _models_dir(settings: Settings) -> tuple[Path, bool]:
    """Return where model artifacts live, and whether it is a temporary directory (memory mode)."""
    if settings.training.models_dir is not None:
        path, scratch = settings.training.models_dir, False
    elif settings.server.in_memory:
        path, scratch = Path(tempfile.mkdtemp(prefix="recograph-models-")), True
    else:
        path, scratch = settings.server.data_dir / "models", False
    path.mkdir(parents=True, exist_ok=True)
    return path, scratch


def _registry(
    settings: Settings, vectors: VectorStore | None, models_dir: Path, channel: SwapChannel, heap: HeapSettler | None,
    cache: RedisCache,
) -> ModelRegistry:
    training = settings.training
    return ModelRegistry(
        vectors=vectors, models_dir=models_dir, channel=channel, refresh_s=training.models_refresh_s,
        catalogue_refresh_s=training.catalogue_refresh_s, max_loaded=training.max_loaded_scenarios,
        ann_min_items=training.ann_min_items, on_change=heap.request if heap is not None else None, versions=cache,
        preload=True,  # a serving process: a new champion loads before its first request here, not during it
    )
