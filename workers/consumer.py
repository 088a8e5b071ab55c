"""Run the event consumer: beside the arq worker in `recograph worker`; in embedded mode as `recograph consumer`, a
child process of `serve` (or, when configured, a task in the API process).

The consumer is long-running rather than a job: it reads every tenant's stream in the consumer group, so any
number of processes may run one, and entries a dead one left pending are claimed by the others.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import structlog
from arq.worker import Worker
from prometheus_client import Counter, Gauge
from prometheus_client.multiprocess import mark_process_dead

from domain.realtime.consumer import ConsumerStats, StreamConsumer
from domain.services import Services
from models.embedded.process import KeptChild, kept_running
from models.settings import Settings
from workers.settings import close_context, open_context

log = structlog.get_logger()
_RUNNING: list[StreamConsumer] = []  # this process's consumers, for the metrics exporter
CONSUMER_COUNTERS = {
    "read": "Stream entries read by consumers (new and claimed).",
    "applied": "Stream entries that changed state (the rest had been applied already).",
    "claimed": "Stream entries reclaimed from consumers that died.",
    "batches": "Batches applied.",
    "errors": "Redis and MongoDB failures the consumers survived, and batches that failed on their data.",
    "dead_lettered": "Stream entries moved to their tenant's dead letters after failing repeatedly.",
}
POOL_ENV = "PROMETHEUS_MULTIPROC_DIR"  # set by `serve` when its processes pool their Prometheus values
MIRROR_EVERY_S = 1.0
# Running experiments' results and bandit weights are refreshed this often beside each consumer. Not an arq cron job:
# one every minute in the embedded serving process stalled cold answers by about 1.5 s (p99 1,024 ms against 27 ms).
EXPERIMENTS_REFRESH_S = 60.0
ANALYTICS_REFRESH_S = 60.0  # the analytics rollup pass (domain.analytics.refresh), beside each consumer too


class _PooledSeries:
    """This process's consumer series in Prometheus values pooled across processes (one set per process)."""

    _made: _PooledSeries | None = None

    def __init__(self) -> None:
        self.counters = {name: Counter(f"consumer_{name}", doc, namespace="recograph", registry=None)
                         for name, doc in CONSUMER_COUNTERS.items()}
        self.last_batch = Gauge("consumer_last_batch_timestamp", "Wall clock of the last batch a consumer applied.",
                                namespace="recograph", registry=None, multiprocess_mode="max")
        self.running = Gauge("consumers_running", "Consumers running.", namespace="recograph", registry=None,
                             multiprocess_mode="livesum")

    @classmethod
    def get(cls) -> _PooledSeries:
        if cls._made is None:
            cls._made = cls()
        return cls._made


def process_exited(pid: int) -> None:
    """Drop the live gauges of a child that exited (a consumer, a serving process) from the pooled Prometheus values;
    its counters still count."""
    if (directory := os.environ.get(POOL_ENV)) is not None:
        mark_process_dead(pid, directory)


async def _mirror(consumer: StreamConsumer, every_s: float = MIRROR_EVERY_S) -> None:
    """Add what the consumer counted since the last round to the pooled series, every `every_s` until cancelled
    (and once more then)."""
    series = _PooledSeries.get()
    sent = dict.fromkeys(CONSUMER_COUNTERS, 0)
    series.running.inc()

    def flush() -> None:
        for name, counter in series.counters.items():
            value = getattr(consumer.stats, name)
            if value > sent[name]:
                counter.inc(value - sent[name])
                sent[name] = value
        if consumer.stats.last_batch_at:
            series.last_batch.set(consumer.stats.last_batch_at)

    try:
        while True:
            await asyncio.sleep(every_s)
            flush()
    finally:
        flush()
        series.running.dec()


@asynccontextmanager
async def consumer_running(
    services: Services, *, analytics_every_s: float = ANALYTICS_REFRESH_S, **options: Any
) -> AsyncIterator[StreamConsumer | None]:
    """Run a consumer over the services' Redis while the block runs (nothing without Redis), with the periodic
    experiment refresh and analytics rollup beside it (every analytics_every_s; 0: never); stop them after."""
    if services.realtime is None:
        yield None
        return
    consumer = services.realtime.consumer(**options)
    task = asyncio.create_task(consumer.run(), name="recograph-consumer")
    mirror = asyncio.create_task(_mirror(consumer)) if POOL_ENV in os.environ else None
    refresh = asyncio.create_task(refresh_experiments(services), name="recograph-experiments-refresh")
    rollup = (asyncio.create_task(refresh_analytics(services, analytics_every_s), name="recograph-analytics-rollup")
              if analytics_every_s > 0 else None)
    _RUNNING.append(consumer)
    try:
        yield consumer
    finally:
        _RUNNING.remove(consumer)
        consumer.stop()
        with suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)
        for side in (mirror, refresh, rollup):
            if side is not None:
                side.cancel()
                await asyncio.gather(side, return_exceptions=True)


async def refresh_experiments(services: Services, every_s: float = EXPERIMENTS_REFRESH_S) -> None:
    """Every minute, recompute every running experiment's results and re-fit THOMPSON weights, beside the consumer
    that keeps their outcomes (any number of consumers may do it: the same sums give the same results)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await services.experiment_results.refresh_running()
        except Exception:  # noqa: BLE001 - the next minute tries again
            log.exception("experiments.refresh_failed")


async def refresh_analytics(services: Services, every_s: float = ANALYTICS_REFRESH_S) -> None:
    """Every every_s, roll up each tenant's new events and served pages into the analytics (a tenant whose rollups
    another consumer's pass holds is left to it)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await services.analytics.refresh_all()
        except Exception:  # noqa: BLE001 - the next round tries again; pending hours stay pending
            log.exception("analytics.rollup_failed")


def consumer_options(settings: Settings) -> dict[str, Any]:
    """Return the consumer's options from settings (the periodic catch-up, dead letters and analytics rollup)."""
    rt = settings.realtime
    return {"sweep_every_s": rt.sweep_every_s, "sweep_grace_s": rt.sweep_grace_s, "retries": rt.dead_letter_retries,
            "dead_letter_max_len": rt.dead_letter_max_len, "analytics_every_s": rt.analytics_every_s}


async def run_until_signal(services: Services, settings: Settings | None = None) -> None:
    """Run a consumer until SIGTERM or SIGINT (the `recograph consumer` process)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with consumer_running(services, **(consumer_options(settings) if settings is not None else {})):
        await stop.wait()


@asynccontextmanager
async def consumer_child(
    settings: Settings, *, mongo_url: str, redis_url: str, logs_dir: Path, check_every_s: float = 1.0
) -> AsyncIterator[KeptChild]:
    """Run `recograph consumer` attached to these servers while the block runs, as a child that dies with this
    process and is started again when it dies; stop it after (SIGTERM: it applies and acknowledges what it read
    first)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "MONGODB_URL": mongo_url, "REDIS_URL": redis_url, "MONGODB_DATABASE": settings.mongo.database,
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    supervisor = KeptChild("consumer", [sys.executable, "-m", "graph.cli", "consumer"], env, logs_dir / "consumer.log",
                           on_exit=process_exited)
    async with kept_running([supervisor], check_every_s):
        yield supervisor


def consumer_metrics() -> dict[str, float]:
    """Return this process's consumer counters (summed over its consumers) for Prometheus."""
    total = ConsumerStats()
    for consumer in _RUNNING:
        for name in CONSUMER_COUNTERS:
            setattr(total, name, getattr(total, name) + getattr(consumer.stats, name))
        total.last_batch_at = max(total.last_batch_at, consumer.stats.last_batch_at)
    counters = {f"recograph_consumer_{name}_total": float(getattr(total, name)) for name in CONSUMER_COUNTERS}
    return {**counters, "recograph_consumer_last_batch_timestamp": total.last_batch_at,
            "recograph_consumers_running": len(_RUNNING)}


def run_beside(worker: Worker, settings: Settings) -> None:
    """Run the arq worker and a consumer in the worker's event loop until a signal stops the worker."""
    worker.loop.run_until_complete(_main(worker, settings))


async def _main(worker: Worker, settings: Settings) -> None:
    ctx = await open_context(settings)
    worker.ctx.update(ctx)  # the jobs run on the clients the consumer uses (the worker opens none of its own)
    try:
        async with consumer_running(ctx["services"], **consumer_options(settings)):
            worker.main_task = asyncio.ensure_future(worker.main())  # what arq's signal handler cancels
            with suppress(asyncio.CancelledError):
                await worker.main_task
    finally:
        await worker.close()
        await close_context(ctx)
