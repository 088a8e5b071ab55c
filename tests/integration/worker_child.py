"""A separate arq worker process for the worker-fault tests: the real job functions over the test's MongoDB and
Redis, on its own queue, optionally hanging at a chosen point of a training so that the test can kill it there.

    python -m tests.integration.worker_child MONGO_URL DATABASE REDIS_URL MODELS_DIR QUEUE [--hang POINT MARKER]

POINT is `activated` (after the new version became champion, before serving is told) or `fitted` (after the
artifact is written, before the version is applied). The marker file is written when the worker reaches it.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

from arq.connections import RedisSettings
from arq.worker import Worker

from domain.learning.service import LearningConfig, TrainingService
from domain.services import Services
from models.cache import RedisCache
from models.mongo import connect_mongo
from models.settings import JobsSettings, Settings, TrainingSettings
from workers.settings import job_functions, job_policy, worker_ctx

class HangingNotifier:
    """A swap notifier that never returns: the worker stops right after the version became champion."""

    def __init__(self, marker: Path) -> None:
        self._marker = marker

    async def publish(self, tenant_id: str, scenario_id: str, version: int, revision: int = 0, *,
                      kind: str = "scenario") -> None:
        self._marker.write_text(str(version))
        await asyncio.sleep(3600)


def hang_before_activation(marker: Path) -> None:
    """Make the vector step (after the fit, before activation) never return."""
    async def hang(self, version, data, embeddings):  # noqa: ANN001 - TrainingService._store_vectors' shape
        marker.write_text(str(version.version))
        await asyncio.sleep(3600)

    TrainingService._store_vectors = hang  # type: ignore[method-assign]


async def main(args: argparse.Namespace) -> None:
    await connect_mongo(args.mongo, args.database, timeout_ms=5000)
    cache = RedisCache.from_url(args.redis)
    marker = Path(args.hang[1]) if args.hang else None
    notifier = HangingNotifier(marker) if marker is not None and args.hang[0] == "activated" else None
    if marker is not None and args.hang[0] == "fitted":
        hang_before_activation(marker)
    settings = Settings().model_copy(update={"jobs": JobsSettings(cron=False)})
    learning = LearningConfig(models_dir=Path(args.models), time_limit_s=120, notifier=notifier)
    services = Services.build(cache=cache, vectors=None, learning=learning, jobs_policy=job_policy(settings))
    worker = Worker(
        functions=job_functions(TrainingSettings(), settings.jobs), redis_settings=RedisSettings.from_dsn(args.redis),
        ctx=worker_ctx(services, settings), queue_name=args.queue, poll_delay=0.1, allow_abort_jobs=True,
        handle_signals=False,
    )
    await worker.async_run()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    for name in ("mongo", "database", "redis", "models", "queue"):
        parser.add_argument(name)
    parser.add_argument("--hang", nargs=2, metavar=("POINT", "MARKER"))
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(parse()))
