"""arq worker settings: the job functions with their limits and retries, and the context jobs find services in.

Two ways to run one code path:
- embedded mode: `serve` runs the worker inside the API process and event loop (`in_process_worker`), over the
  API's own services, because the embedded vector shards open in one process only;
- production (MONGODB_URL, REDIS_URL and QDRANT_URL set): `recograph worker` runs it as its own deployment
  (`WorkerSettings` with the configured Redis and limits), opening its own clients at startup (`open_context`).
Jobs read `ctx["services"]` (domain.services.Services) and `ctx["max_tries"]`.
"""

from __future__ import annotations

from typing import Any

from arq.connections import RedisSettings
from arq.worker import Function, Worker, func, get_kwargs

from domain.learning.service import TRAIN_FUNCTION, LearningConfig
from domain.recommend.serving import SwapChannel
from domain.services import Services
from models.cache import RedisCache
from models.mongo import connect_mongo
from models.settings import Settings, TrainingSettings
from models.vectors import open_vector_store
from workers.jobs import train_scenario

# arq's own timeout is a backstop: the training service stops the fit at the time limit; this also covers loading
# the data and writing the vectors.
TIMEOUT_MARGIN_S = 600
MAX_JOBS = 4  # trainings queue for the one training process; other jobs may run beside them


def job_functions(training: TrainingSettings) -> list[Function]:
    """Return the registered jobs with the configured time limit and tries."""
    return [
        func(train_scenario, name=TRAIN_FUNCTION, timeout=training.train_time_limit_s + TIMEOUT_MARGIN_S,
             max_tries=training.job_max_tries),
    ]


def in_process_worker(services: Services, *, redis_url: str, settings: Settings) -> Worker:
    """Return a worker for the API process: it shares the API's services and leaves signals to the server."""
    return Worker(
        functions=job_functions(settings.training),
        redis_settings=RedisSettings.from_dsn(redis_url),  # its own pool: Worker.close() closes the pool it holds
        ctx={"services": services, "max_tries": settings.training.job_max_tries},
        handle_signals=False,
        max_jobs=MAX_JOBS,
    )


def missing_urls(settings: Settings) -> list[str]:
    """Return the server URLs a separate worker needs but the settings lack."""
    urls = (("MONGODB_URL", settings.mongo.url), ("REDIS_URL", settings.redis.url), ("QDRANT_URL", settings.qdrant.url))
    return [name for name, url in urls if not url]


async def open_context(settings: Settings) -> dict[str, Any]:
    """Open the clients a separate worker needs and build its services."""
    if missing := missing_urls(settings):
        # Embedded vector shards open in one process only: in embedded mode `serve` runs the worker itself.
        raise RuntimeError(f"a separate worker needs {', '.join(missing)}; in embedded mode `serve` runs the jobs")
    mongo, _ = await connect_mongo(
        settings.mongo.url or "", settings.mongo.database, timeout_ms=settings.mongo.timeout_ms
    )
    cache = RedisCache.from_url(settings.redis.url or "", timeout_s=settings.redis.timeout_s)
    vectors = open_vector_store(url=settings.qdrant.url, api_key=settings.qdrant.api_key, data_dir=None)
    models_dir = settings.training.models_dir or settings.server.data_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    learning = LearningConfig(
        models_dir=models_dir, time_limit_s=settings.training.train_time_limit_s, notifier=SwapChannel(cache.client)
    )
    services = Services.build(cache=cache, vectors=vectors, learning=learning)
    return {"services": services, "max_tries": settings.training.job_max_tries, "clients": (vectors, cache, mongo)}


async def close_context(ctx: dict[str, Any]) -> None:
    """Stop training and close what open_context opened."""
    if "services" in ctx:
        await ctx["services"].training.close()
    for client in ctx.get("clients", ()):
        await client.close()


async def startup(ctx: dict[str, Any]) -> None:
    """arq on_startup: read the settings and open the clients."""
    ctx.update(await open_context(Settings()))


class WorkerSettings:
    """arq settings of the separate worker, with the limits at their defaults."""

    functions = job_functions(TrainingSettings.model_construct())  # defaults only: no environment read at import
    on_startup = startup
    on_shutdown = close_context
    max_jobs = MAX_JOBS


def standalone_worker(settings: Settings) -> Worker:
    """Return the separate worker (`recograph worker`): WorkerSettings with REDIS_URL and the configured limits."""

    async def open_clients(ctx: dict[str, Any]) -> None:
        ctx.update(await open_context(settings))

    options = {
        **get_kwargs(WorkerSettings), "functions": job_functions(settings.training), "on_startup": open_clients,
        "redis_settings": RedisSettings.from_dsn(settings.redis.url or "redis://localhost:6379"),
    }
    return Worker(**options)
