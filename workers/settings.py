"""arq worker settings: the job functions with their limits and retries, the schedules, and the context jobs find
services in.

Two ways to run one code path:
- embedded mode: `serve` runs the worker inside the API process and event loop (`in_process_worker`), over the
  API's own services, because the embedded vector shards open in one process only;
- production (MONGODB_URL and REDIS_URL set): `recograph worker` runs it as its own deployment (`WorkerSettings`
  with the configured Redis and limits), opening its own clients at startup (`open_context`), including a model
  registry so that candidate precompute can compute answers there. With QDRANT_URL it writes the models' vectors to
  that server; without it no process opens a vector store and each searches the embeddings in memory
  (models.vectors.searches_in_memory).
Jobs read `ctx["services"]` (domain.services.Services), `ctx["max_tries"]` and `ctx["tries"]` (by function).
"""

from __future__ import annotations

from typing import Any

import structlog
from arq.connections import RedisSettings
from arq.worker import Function, Worker, func, get_kwargs
from prometheus_client import CollectorRegistry, start_http_server

from domain.background import JobPolicy
from domain.jobs import JOB_FUNCTIONS, JobKind
from domain.learning.service import LearningConfig
from domain.learning.tower_spaces import SYNC_FUNCTION
from domain.maintenance import CleanupPolicy
from domain.migrations import migrate
from domain.precompute import CandidatePolicy
from domain.recommend.serving import ModelRegistry, SwapChannel
from domain.services import Services
from models.cache import RedisCache
from models.mongo import connect_mongo
from models.settings import JobsSettings, Settings, TrainingSettings
from models.vectors import VectorStore, open_vector_store, searches_in_memory
from workers.cron import cron_jobs
from workers.jobs import JOBS, sync_item_vectors
from workers.metrics import ConsumerCollector, JobMetrics

log = structlog.get_logger()

# arq's own timeout (a job's time limit plus JobsSettings.timeout_margin_s) is a backstop: the domain stops an attempt
# at the job's time limit, and the margin covers recording the outcome. A job whose worker died is picked up again
# once arq's in-progress key expires (the largest timeout plus 10 s), as its next try.
MAX_JOBS = 4  # trainings queue for the one training process; other jobs may run beside them


def time_limits_s(training: TrainingSettings, jobs: JobsSettings) -> dict[JobKind, float]:
    """Return each kind's time limit."""
    return {
        JobKind.TRAIN: training.train_time_limit_s, JobKind.SIMILARITY: jobs.similarity_time_limit_s,
        JobKind.PROFILES: jobs.profiles_time_limit_s, JobKind.CANDIDATES: jobs.candidates_time_limit_s,
        JobKind.CLEANUP: jobs.cleanup_time_limit_s,
    }


def tries(training: TrainingSettings, jobs: JobsSettings) -> dict[str, int]:
    """Return each job function's number of tries."""
    return {**{JOB_FUNCTIONS[kind]: training.job_max_tries if kind is JobKind.TRAIN else jobs.max_tries
               for kind in JobKind}, SYNC_FUNCTION: jobs.max_tries}


def job_functions(training: TrainingSettings, jobs: JobsSettings | None = None) -> list[Function]:
    """Return the registered jobs with the configured time limits, arq timeouts and tries."""
    jobs = jobs or JobsSettings.model_construct()
    limits, counts = time_limits_s(training, jobs), tries(training, jobs)
    return [*(func(JOBS[kind], name=JOB_FUNCTIONS[kind], timeout=limits[kind] + jobs.timeout_margin_s,
                   max_tries=counts[JOB_FUNCTIONS[kind]]) for kind in JobKind),
            func(sync_item_vectors, name=SYNC_FUNCTION, timeout=jobs.item_vectors_timeout_s,
                 max_tries=counts[SYNC_FUNCTION])]


def job_policy(settings: Settings) -> JobPolicy:
    """Return the domain's job policy from the settings."""
    jobs = settings.jobs
    limits = {kind.value: limit for kind, limit in time_limits_s(settings.training, jobs).items()}
    return JobPolicy(
        time_limits_s=limits,
        candidates=CandidatePolicy(active_hours=jobs.active_hours, max_users=jobs.max_active_users,
                                   concurrency=jobs.candidates_concurrency),
        cleanup=CleanupPolicy(keep_finished_jobs_days=jobs.keep_finished_days,
                              keep_retired_models=jobs.keep_retired_models),
    )


def worker_ctx(services: Services, settings: Settings) -> dict[str, Any]:
    """Return what every job finds in its context."""
    return {"services": services, "max_tries": settings.training.job_max_tries,
            "tries": tries(settings.training, settings.jobs)}


def in_process_worker(services: Services, *, redis_url: str, settings: Settings) -> Worker:
    """Return a worker for the API process: it shares the API's services and leaves signals to the server."""
    return Worker(
        functions=job_functions(settings.training, settings.jobs),
        cron_jobs=cron_jobs() if settings.jobs.cron else None,
        redis_settings=RedisSettings.from_dsn(redis_url),  # its own pool: Worker.close() closes the pool it holds
        ctx=worker_ctx(services, settings),
        handle_signals=False,
        max_jobs=MAX_JOBS,
        allow_abort_jobs=True,  # cancelJob on a RUNNING job
    )


def missing_urls(settings: Settings) -> list[str]:
    """Return the server URLs a separate worker needs but the settings lack (QDRANT_URL is optional: without it
    the embeddings are searched in memory)."""
    urls = (("MONGODB_URL", settings.mongo.url), ("REDIS_URL", settings.redis.url))
    return [name for name, url in urls if not url]


async def open_context(settings: Settings) -> dict[str, Any]:
    """Open the clients a separate worker needs and build its services (with a model registry of its own)."""
    if missing := missing_urls(settings):
        # The embedded servers and vector shards belong to `serve`: in embedded mode it runs the worker itself.
        raise RuntimeError(f"a separate worker needs {', '.join(missing)}; in embedded mode `serve` runs the jobs")
    mongo, db = await connect_mongo(
        settings.mongo.url or "", settings.mongo.database, timeout_ms=settings.mongo.timeout_ms
    )
    await migrate(db)  # pending schema migrations, once, under a lock (the API pods may not have started yet)
    cache = RedisCache.from_url(settings.redis.url or "", timeout_s=settings.redis.timeout_s,
                                failures=settings.breaker.failures, cooldown_s=settings.breaker.cooldown_s,
                                user_ttl_s=settings.redis.user_state_ttl_s)
    vectors = _vector_store(settings)
    training = settings.training
    models_dir = training.models_dir or settings.server.data_dir / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    channel = SwapChannel(cache.client)
    registry = ModelRegistry(
        vectors=vectors, models_dir=models_dir, channel=channel, refresh_s=training.models_refresh_s,
        catalogue_refresh_s=training.catalogue_refresh_s, max_loaded=training.max_loaded_scenarios,
        ann_min_items=training.ann_min_items, versions=cache,
    )
    registry.start()
    learning = LearningConfig(
        models_dir=models_dir, time_limit_s=training.train_time_limit_s, swaps=registry, notifier=channel,
        similarity_time_limit_s=settings.jobs.similarity_time_limit_s,
    )
    services = Services.build(cache=cache, vectors=vectors, engines=registry, learning=learning,
                              jobs_policy=job_policy(settings), attribution_s=settings.realtime.attribution_window_s)
    _export_metrics(services, settings.jobs)
    clients = (vectors, cache, mongo) if vectors is not None else (cache, mongo)
    return {**worker_ctx(services, settings), "registry": registry, "clients": clients}


def _vector_store(settings: Settings) -> VectorStore | None:
    """Return the Qdrant server's store, or None when the embeddings are searched in memory (no QDRANT_URL)."""
    if searches_in_memory(settings):
        log.info("vectors.in_memory", process="worker", reason="MONGODB_URL and REDIS_URL without QDRANT_URL: "
                 "no vector store; the models' embeddings are searched in memory")
        return None
    return open_vector_store(url=settings.qdrant.url, api_key=settings.qdrant.api_key, data_dir=None,
                             breaker=settings.breaker)


def _export_metrics(services: Services, jobs: JobsSettings) -> None:
    """Serve job and consumer metrics on the configured port (the worker has no HTTP app); without one, finished jobs
    are logged."""
    if jobs.metrics_port is None:
        return
    registry = CollectorRegistry()
    services.jobs.watch(JobMetrics(registry).observe)
    registry.register(ConsumerCollector())  # the consumer `recograph worker` runs beside the jobs (dead letters too)
    start_http_server(jobs.metrics_port, registry=registry)
    log.info("worker.metrics_served", port=jobs.metrics_port)


async def close_context(ctx: dict[str, Any]) -> None:
    """Stop training and the registry, and close what open_context opened."""
    if "services" in ctx:
        await ctx["services"].training.close()
    if "registry" in ctx:
        await ctx["registry"].stop()
    for client in ctx.get("clients", ()):
        await client.close()


async def startup(ctx: dict[str, Any]) -> None:
    """arq on_startup: read the settings and open the clients."""
    ctx.update(await open_context(Settings()))


class WorkerSettings:
    """arq settings of the separate worker, with the limits at their defaults."""

    functions = job_functions(TrainingSettings.model_construct())  # defaults only: no environment read at import
    cron_jobs = cron_jobs()
    on_startup = startup
    on_shutdown = close_context
    max_jobs = MAX_JOBS
    allow_abort_jobs = True


def standalone_worker(settings: Settings) -> Worker:
    """Return the separate worker (`recograph worker`): WorkerSettings with REDIS_URL and the configured limits.

    Its clients are not its own: the caller opens them once (`open_context`) into `worker.ctx`, for the jobs and the
    event consumer beside them alike, and closes them after (workers.consumer.run_beside).
    """
    options = {
        **get_kwargs(WorkerSettings), "functions": job_functions(settings.training, settings.jobs),
        "cron_jobs": cron_jobs() if settings.jobs.cron else None, "on_startup": None, "on_shutdown": None,
        "redis_settings": RedisSettings.from_dsn(settings.redis.url or "redis://localhost:6379"),
    }
    return Worker(**options)
