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

from domain.realtime.consumer import ConsumerStats, StreamConsumer
from domain.services import Services
from models.embedded.process import Child, spawn
from models.settings import Settings
from workers.settings import close_context, open_context

log = structlog.get_logger()
_RUNNING: list[StreamConsumer] = []  # this process's consumers, for the metrics exporter


@asynccontextmanager
async def consumer_running(services: Services, **options: Any) -> AsyncIterator[StreamConsumer | None]:
    """Run a consumer over the services' Redis while the block runs (nothing without Redis); stop it after."""
    if services.realtime is None:
        yield None
        return
    consumer = services.realtime.consumer(**options)
    task = asyncio.create_task(consumer.run(), name="recograph-consumer")
    _RUNNING.append(consumer)
    try:
        yield consumer
    finally:
        _RUNNING.remove(consumer)
        consumer.stop()
        with suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, timeout=10)


async def run_until_signal(services: Services) -> None:
    """Run a consumer until SIGTERM or SIGINT (the `recograph consumer` process)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with consumer_running(services):
        await stop.wait()


@asynccontextmanager
async def consumer_child(
    settings: Settings, *, mongo_url: str, redis_url: str, logs_dir: Path, check_every_s: float = 1.0
) -> AsyncIterator[ConsumerSupervisor]:
    """Run `recograph consumer` attached to these servers while the block runs, as a child that dies with this
    process and is started again when it dies; stop it after (SIGTERM: it applies and acknowledges what it read
    first)."""
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "MONGODB_URL": mongo_url, "REDIS_URL": redis_url, "MONGODB_DATABASE": settings.mongo.database,
           "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    supervisor = ConsumerSupervisor(env, logs_dir / "consumer.log")
    await supervisor.start()
    watch = asyncio.create_task(supervisor.watch(check_every_s), name="recograph-consumer-supervisor")
    try:
        yield supervisor
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        await supervisor.stop()


class ConsumerSupervisor:
    """Keep one consumer child running: a child that exits is started again (the entries it left pending are
    claimed by the next one, so nothing is lost or counted twice)."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self._env = env
        self._log_path = log_path
        self.child: Child | None = None
        self.restarts = 0

    async def start(self) -> None:
        """Start the child."""
        self.child = await spawn("consumer", [sys.executable, "-m", "graph.cli", "consumer"], self._log_path,
                                 env=self._env)
        log.info("consumer.child_started", pid=self.child.pid)

    async def watch(self, every_s: float) -> None:
        """Check every `every_s` that the child lives; start another when it has exited."""
        while True:
            await asyncio.sleep(every_s)
            if self.child is not None and (code := self.child.exit_code()) is not None:
                log.warning("consumer.child_exited", pid=self.child.pid, exit_code=code, tail=self.child.tail())
                self.restarts += 1
                try:
                    await self.start()
                except (OSError, RuntimeError) as exc:
                    log.error("consumer.child_restart_failed", error=str(exc))

    async def stop(self) -> None:
        """Stop the child."""
        if self.child is not None:
            await self.child.stop()


def consumer_metrics() -> dict[str, float]:
    """Return this process's consumer counters (summed over its consumers) for Prometheus."""
    total = ConsumerStats()
    for consumer in _RUNNING:
        for name in ("read", "applied", "claimed", "batches", "errors"):
            setattr(total, name, getattr(total, name) + getattr(consumer.stats, name))
        total.last_batch_at = max(total.last_batch_at, consumer.stats.last_batch_at)
    return {
        "recograph_consumer_read_total": total.read, "recograph_consumer_applied_total": total.applied,
        "recograph_consumer_claimed_total": total.claimed, "recograph_consumer_batches_total": total.batches,
        "recograph_consumer_errors_total": total.errors, "recograph_consumer_last_batch_timestamp": total.last_batch_at,
        "recograph_consumers_running": len(_RUNNING),
    }


def run_beside(worker: Worker, settings: Settings) -> None:
    """Run the arq worker and a consumer in the worker's event loop until a signal stops the worker."""
    worker.loop.run_until_complete(_main(worker, settings))


async def _main(worker: Worker, settings: Settings) -> None:
    ctx = await open_context(settings)
    try:
        async with consumer_running(ctx["services"]):
            worker.main_task = asyncio.ensure_future(worker.main())  # what arq's signal handler cancels
            with suppress(asyncio.CancelledError):
                await worker.main_task
    finally:
        await worker.close()
        await close_context(ctx)
