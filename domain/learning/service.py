"""Train a scenario's models as a job: load its data from MongoDB, fit in a child process, store the result as a
new model version (artifact on disk, metadata in MongoDB, item embeddings in the vector store) and make it the one
served.

Fitting is CPU-bound, so it runs in a process pool of one worker, never on the serving event loop; the child cannot
reach MongoDB, so it reports progress through a multiprocessing queue that the parent relays to the job. A failed
or timed-out training leaves the previous active version serving.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue as queue_errors
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog
from pymongo.errors import ConnectionFailure
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from domain.errors import NotFound, Unavailable
from domain.ids import new_id, utcnow
from domain.jobs import JobService
from domain.learning.train import TrainingData, train_scenario_model
from domain.scenarios.service import ScenarioService
from models.documents import Interaction, Item, Job, ModelVersion, Scenario
from models.vectors import VectorPoint, VectorStore, VectorStoreError

log = structlog.get_logger()

TRAIN_KIND = "train"  # job kind: (re)train everything a scenario uses
TRAIN_FUNCTION = "scenarios.train"  # the arq job that runs TrainingService.train
MODEL_KIND = "scenario"  # model_versions kind: one ScenarioModel holding every model the scenario uses
KEEP_RETIRED = 2  # retired versions whose artifacts stay on disk (rollback, a lagging pod)
BATCH = 20_000  # documents per MongoDB round trip when loading
UPSERT_CHUNK = 2_000
ITEM_FIELDS = {"_id": 0, "item_id": 1, "title": 1, "categories": 1, "tags": 1, "attributes": 1, "published_at": 1,
               "status": 1}
EVENT_FIELDS = {"_id": 0, "user_id": 1, "item_id": 1, "type": 1, "value": 1, "ts": 1}
# Errors of a store that may be back in a moment: the attempt is retried (with backoff) instead of failing the job.
TRANSIENT = (ConnectionFailure, RedisConnectionError, RedisTimeoutError, VectorStoreError, BrokenProcessPool)
Report = Callable[[float, str], Awaitable[None]]


class Retryable(Exception):
    """The attempt failed because a store or the training process was briefly unavailable; try again later."""


class TrainingTimeout(Exception):
    """The training process ran past the time limit and was stopped."""


class SwapTarget(Protocol):
    async def swap(self, tenant_id: str, scenario_id: str, version: int) -> bool: ...


class SwapNotifier(Protocol):
    async def publish(self, tenant_id: str, scenario_id: str, version: int) -> None: ...


@dataclass(frozen=True)
class LearningConfig:
    """Where artifacts go, how long a training may run, and who hears about a new version."""

    models_dir: Path
    time_limit_s: float = 1800.0
    swaps: SwapTarget | None = None  # this process's serving registry (embedded mode)
    notifier: SwapNotifier | None = None  # every other API process


def artifact_path(models_dir: Path, relative: str) -> Path:
    """Return the directory of an artifact stored relative to the models dir."""
    return models_dir / relative


async def load_training_data(*, tenant_id: str, scenario_id: str) -> TrainingData:
    """Read the scenario's items and interactions (only the fields training uses, in large batches)."""
    items = await Item.get_pymongo_collection().find(
        {"tenant_id": tenant_id, "scenarios": scenario_id}, ITEM_FIELDS, batch_size=BATCH
    ).to_list(None)
    events = await Interaction.get_pymongo_collection().find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id}, EVENT_FIELDS, batch_size=BATCH
    ).to_list(None)
    return TrainingData(
        items=items,
        user_ids=[e["user_id"] for e in events],
        item_ids=[e["item_id"] for e in events],
        types=[e["type"] for e in events],
        values=[e.get("value") for e in events],
        timestamps=np.fromiter((e["ts"].timestamp() for e in events), dtype=np.float64, count=len(events)),
    )


class TrainingService:
    """Submit and run scenario trainings; one child process trains at a time."""

    def __init__(
        self, jobs: JobService, scenarios: ScenarioService, *, vectors: VectorStore | None,
        config: LearningConfig | None,
    ) -> None:
        self._jobs = jobs
        self._scenarios = scenarios
        self._vectors = vectors
        self._config = config
        self._pool: ProcessPoolExecutor | None = None
        self._progress: Any = None  # the pool's multiprocessing queue
        self._fit_lock = asyncio.Lock()

    async def submit(self, scenario_id: str, *, tenant_id: str) -> Job:
        """Queue a training of the scenario, or return the one already queued or running."""
        if self._config is None:
            raise Unavailable("training is not available in this process")
        await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
        return await self._jobs.submit(
            TRAIN_KIND, TRAIN_FUNCTION, tenant_id=tenant_id, scenario_id=scenario_id,
            time_limit_s=self._config.time_limit_s,
        )

    async def train(
        self, job_id: str, *, tenant_id: str, scenario_id: str, attempt: int = 1, may_retry: bool = False
    ) -> dict[str, Any] | None:
        """Run one attempt of a training job; return its result, or None when it failed or was not to run.

        Raises Retryable (after putting the job back to QUEUED) when a store was briefly unavailable and
        `may_retry`; cancellation puts the job back to QUEUED too, so a restarted worker runs it again.
        """
        if await self._jobs.mark_running(job_id, tenant_id=tenant_id, attempt=attempt) is None:
            log.info("training.skipped", job_id=job_id, reason="cancelled or finished")
            return None
        bound = log.bind(job_id=job_id, tenant_id=tenant_id, scenario_id=scenario_id)
        try:
            result = await self._run(job_id, tenant_id=tenant_id, scenario_id=scenario_id)
        except asyncio.CancelledError:
            await self._jobs.requeue(job_id, tenant_id=tenant_id, error="interrupted: the worker stopped")
            raise
        except TRANSIENT as exc:
            return await self._transient(job_id, tenant_id, exc, may_retry, bound)
        except Exception as exc:  # noqa: BLE001 - any failure ends the job with its message; serving is untouched
            bound.warning("training.failed", error=_message(exc), exc_info=not isinstance(exc, (NotFound, TrainingTimeout)))
            await self._jobs.fail(job_id, tenant_id=tenant_id, error=_message(exc))
            return None
        await self._jobs.succeed(job_id, tenant_id=tenant_id, result=result)
        bound.info("training.succeeded", **{k: v for k, v in result.items() if k != "seconds"}, **result["seconds"])
        return result

    async def _transient(self, job_id: str, tenant_id: str, exc: Exception, may_retry: bool, bound: Any) -> None:
        if not may_retry:
            bound.warning("training.failed", error=_message(exc))
            await self._jobs.fail(job_id, tenant_id=tenant_id, error=_message(exc))
            return None
        bound.warning("training.retrying", error=_message(exc))
        await self._jobs.requeue(job_id, tenant_id=tenant_id, error=f"retrying after: {_message(exc)}")
        raise Retryable(_message(exc)) from exc

    async def _run(self, job_id: str, *, tenant_id: str, scenario_id: str) -> dict[str, Any]:
        config = self._require_config()
        report = self._reporter(job_id, tenant_id)
        started = time.perf_counter()
        scenario = await Scenario.find_one({"_id": scenario_id, "tenant_id": tenant_id})
        if scenario is None:
            raise NotFound(f"scenario {scenario_id} no longer exists", field="scenarioId")
        await report(0.01, "loading data")
        data = await load_training_data(tenant_id=tenant_id, scenario_id=scenario_id)
        seconds = {"load": time.perf_counter() - started}
        version = await self._new_version(job_id, tenant_id=tenant_id, scenario_id=scenario_id)
        try:
            outcome = await self._build(version, scenario, data, config, report, seconds)
        except BaseException as exc:
            await self._discard(version, config, exc)
            raise
        seconds["total"] = time.perf_counter() - started
        return _result(version, data, outcome, seconds)

    async def _build(
        self, version: ModelVersion, scenario: Scenario, data: TrainingData, config: LearningConfig, report: Report,
        seconds: dict[str, float],
    ) -> dict[str, Any]:
        """Fit and save in the child, store the embeddings, then activate the version and tell serving."""
        await report(0.1, "training")
        outcome = await self._fit(data, scenario, version, config, _scaled(report, 0.1, 0.85))
        seconds.update(train=outcome["train_s"], save=outcome["save_s"], child=outcome["child_s"])
        mark = time.perf_counter()
        await report(0.86, "storing vectors")
        spaces = await self._store_vectors(version, data, outcome.pop("embeddings"))
        seconds["vectors"] = time.perf_counter() - mark
        mark = time.perf_counter()
        await report(0.95, "activating")
        await self._activate(version, spaces, _metrics(data, outcome, seconds))
        await self._announce(version, config)
        seconds["swap"] = time.perf_counter() - mark
        await self._prune(version, config)
        return outcome

    async def _fit(
        self, data: TrainingData, scenario: Scenario, version: ModelVersion, config: LearningConfig, report: Report
    ) -> dict[str, Any]:
        """Train and save the model in the child process within the time limit."""
        path = artifact_path(config.models_dir, version.artifact or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        async with self._fit_lock:  # one child: a second training waits instead of competing for the cores
            pool = self._pool_or_new()
            _drain(self._progress)
            future = pool.submit(_fit_in_child, data, dict(scenario.config), scenario.id, version.version, str(path))
            relay = asyncio.create_task(self._relay(report))
            try:
                return await asyncio.wait_for(asyncio.wrap_future(future), config.time_limit_s)
            except TimeoutError:
                self._stop_pool()
                raise TrainingTimeout(f"training ran longer than the {config.time_limit_s:g} s limit") from None
            except (asyncio.CancelledError, BrokenProcessPool):
                self._stop_pool()
                raise
            finally:
                relay.cancel()

    async def _relay(self, report: Report) -> None:
        """Forward the child's latest progress to the job about four times a second."""
        while True:
            await asyncio.sleep(0.25)
            if (latest := _drain(self._progress)) is not None:
                await report(*latest)

    def _pool_or_new(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver/spawn: forking a process that runs threads (Mongo, Redis clients) is unsafe.
            context = multiprocessing.get_context("forkserver" if sys.platform == "linux" else "spawn")
            self._progress = context.Queue()
            self._pool = ProcessPoolExecutor(
                max_workers=1, mp_context=context, initializer=_init_child, initargs=(self._progress,)
            )
        return self._pool

    def _stop_pool(self) -> None:
        """Kill the training process (a timed-out or abandoned fit must not keep the cores busy)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        # The executor has no public way to stop a running task (3.14 adds kill_workers): terminate its processes.
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        pool.shutdown(wait=False, cancel_futures=True)

    async def close(self) -> None:
        """Stop the training process, if any."""
        pool, self._pool = self._pool, None
        if pool is not None:
            await asyncio.to_thread(pool.shutdown, wait=True, cancel_futures=True)

    def _reporter(self, job_id: str, tenant_id: str) -> Report:
        async def report(fraction: float, stage: str) -> None:
            await self._jobs.progress(job_id, tenant_id=tenant_id, fraction=fraction, stage=stage)

        return report

    def _require_config(self) -> LearningConfig:
        if self._config is None:
            raise Unavailable("training is not available in this process")
        return self._config

    @staticmethod
    async def _new_version(job_id: str, *, tenant_id: str, scenario_id: str) -> ModelVersion:
        """Insert the next version (status training) of the scenario's model."""
        latest = await ModelVersion.find(
            {"tenant_id": tenant_id, "scenario_id": scenario_id, "kind": MODEL_KIND}
        ).sort([("version", -1)]).first_or_none()
        number = (latest.version if latest else 0) + 1
        version = ModelVersion(
            id=new_id("mv"), tenant_id=tenant_id, scenario_id=scenario_id, kind=MODEL_KIND, version=number,
            status="training", artifact=f"{tenant_id}/{scenario_id}/v{number}", job_id=job_id, created_at=utcnow(),
        )
        await version.insert()
        return version

    async def _store_vectors(self, version: ModelVersion, data: TrainingData, embeddings: Any) -> dict[str, str]:
        """Write the item embeddings into the space the active version does not use; return {kind: space}."""
        if self._vectors is None or embeddings is None:
            return {}
        ids, matrix = embeddings
        space = await self._free_space(version, dim=int(matrix.shape[1]))
        tenant_id = version.tenant_id
        await self._vectors.ensure_space(space, dim=int(matrix.shape[1]))
        await self._vectors.delete_tenant(space, tenant_id=tenant_id)  # left from the version before the active one
        labels = {d["item_id"]: d for d in data.items}
        for start in range(0, len(ids), UPSERT_CHUNK):
            points = [
                VectorPoint(id=item_id, vector=matrix[start + i], payload=_payload(labels.get(item_id), version))
                for i, item_id in enumerate(ids[start : start + UPSERT_CHUNK])
            ]
            await self._vectors.upsert(space, points, tenant_id=tenant_id)
        optimize = getattr(self._vectors, "optimize", None)  # embedded shards build their HNSW index on request
        if optimize is not None:
            await optimize(space)
        return {"content": space}

    async def _free_space(self, version: ModelVersion, *, dim: int) -> str:
        """Return the content space for a new version: of two per scenario, the one the active version does not use.

        Writing the new vectors beside the served ones makes the swap atomic: a reader sees the old model with the
        old vectors or the new model with the new ones.
        """
        active = await _active_version(version.tenant_id, version.scenario_id)
        first, second = (content_space(version.scenario_id, slot, dim) for slot in ("a", "b"))
        return second if active is not None and active.spaces.get("content") == first else first

    @staticmethod
    async def _activate(version: ModelVersion, spaces: dict[str, str], metrics: dict[str, float]) -> None:
        """Make the version active, then retire the one before (readers take the newest active version)."""
        col = ModelVersion.get_pymongo_collection()
        now = utcnow()
        await col.update_one(
            {"_id": version.id, "tenant_id": version.tenant_id},
            {"$set": {"status": "active", "activated_at": now, "spaces": spaces, "metrics": metrics}},
        )
        await col.update_many(
            {"tenant_id": version.tenant_id, "scenario_id": version.scenario_id, "kind": MODEL_KIND,
             "status": {"$in": ["active", "ready"]}, "_id": {"$ne": version.id}},
            {"$set": {"status": "retired"}},
        )

    @staticmethod
    async def _announce(version: ModelVersion, config: LearningConfig) -> None:
        """Swap this process's serving copy now and tell the other API processes."""
        if config.swaps is not None:
            await config.swaps.swap(version.tenant_id, version.scenario_id, version.version)
        if config.notifier is not None:
            try:
                await config.notifier.publish(version.tenant_id, version.scenario_id, version.version)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                # Other processes re-check active versions periodically; the notice only makes it faster.
                log.warning("training.notice_not_sent", error=str(exc), scenario_id=version.scenario_id)

    @staticmethod
    async def _prune(version: ModelVersion, config: LearningConfig) -> None:
        """Delete the artifacts of retired versions beyond the newest few."""
        retired = await ModelVersion.find(
            {"tenant_id": version.tenant_id, "scenario_id": version.scenario_id, "kind": MODEL_KIND,
             "status": "retired", "artifact": {"$ne": None}}
        ).sort([("version", -1)]).to_list()
        for old in retired[KEEP_RETIRED:]:
            await asyncio.to_thread(shutil.rmtree, artifact_path(config.models_dir, old.artifact or ""), True)
            await ModelVersion.get_pymongo_collection().update_one({"_id": old.id}, {"$set": {"artifact": None}})

    @staticmethod
    async def _discard(version: ModelVersion, config: LearningConfig, exc: BaseException) -> None:
        """Mark a version that never became active as failed and delete its files."""
        await asyncio.to_thread(shutil.rmtree, artifact_path(config.models_dir, version.artifact or ""), True)
        await ModelVersion.get_pymongo_collection().update_one(
            {"_id": version.id, "tenant_id": version.tenant_id, "status": "training"},
            {"$set": {"status": "failed", "artifact": None, "error": _message(exc)}},
        )


def content_space(scenario_id: str, slot: str, dim: int) -> str:
    """Return the name of one of a scenario's two content-embedding spaces (the dim is part of a space's shape)."""
    return f"content_{scenario_id}_{slot}{dim}"


async def _active_version(tenant_id: str, scenario_id: str) -> ModelVersion | None:
    return await ModelVersion.find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "kind": MODEL_KIND, "status": "active"}
    ).sort([("version", -1)]).first_or_none()


def _payload(item: Mapping[str, Any] | None, version: ModelVersion) -> dict[str, Any]:
    item = item or {}
    return {"scenarios": [version.scenario_id], "categories": list(item.get("categories") or []),
            "tags": list(item.get("tags") or []), "version": version.version}


def _metrics(data: TrainingData, outcome: Mapping[str, Any], seconds: Mapping[str, float]) -> dict[str, float]:
    counts = {"interactions": len(data.user_ids), "users": len(set(data.user_ids)), "items": len(data.items),
              "model_bytes": outcome["model_bytes"], "embeddings": outcome["embeddings_count"]}
    return {**{k: float(v) for k, v in counts.items()}, **{f"{k}_s": round(v, 3) for k, v in seconds.items()}}


def _result(version: ModelVersion, data: TrainingData, outcome: Mapping[str, Any], seconds: Mapping[str, float]) -> dict:
    return {
        "modelVersionId": version.id, "version": version.version, "interactions": len(data.user_ids),
        "users": len(set(data.user_ids)), "items": len(data.items), "modelBytes": outcome["model_bytes"],
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def _scaled(report: Report, low: float, high: float) -> Report:
    """Map a stage's own 0..1 progress onto its share [low, high] of the job."""
    async def scaled(fraction: float, stage: str) -> None:
        await report(low + (high - low) * min(max(fraction, 0.0), 1.0), stage)

    return scaled


def _drain(progress: Any) -> tuple[float, str] | None:
    """Return the newest message on the progress queue (older ones are superseded), or None."""
    latest = None
    while progress is not None:
        try:
            latest = progress.get_nowait()
        except (queue_errors.Empty, OSError, ValueError):
            break
    return latest


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (NotFound, TrainingTimeout, Retryable)) else f"{type(exc).__name__}: {text}"


# --- in the child process ---------------------------------------------------------------------------------------

_child_progress: Any = None
_child_last = 0.0


def _init_child(progress: Any) -> None:
    global _child_progress
    _child_progress = progress


def _child_report(fraction: float, stage: str) -> None:
    global _child_last
    now = time.monotonic()
    if now - _child_last >= 0.1 or fraction >= 1.0:  # the parent reads four times a second: send no more
        _child_last = now
        _child_progress.put((float(fraction), str(stage)))


def _fit_in_child(data: TrainingData, config: dict, scenario_id: str, version: int, path: str) -> dict[str, Any]:
    """Train, save the artifact, and return timings, size and the item embeddings (as ids and a float32 matrix)."""
    started = time.perf_counter()
    model = train_scenario_model(data, config, scenario_id=scenario_id, version=version, progress=_child_report)
    trained = time.perf_counter()
    model.save(Path(path))
    saved = time.perf_counter()
    embeddings = _embeddings(model)
    return {
        "train_s": trained - started, "save_s": saved - trained, "child_s": time.perf_counter() - started,
        "model_bytes": int(model.nbytes()), "embeddings": embeddings,
        "embeddings_count": 0 if embeddings is None else len(embeddings[0]),
    }


def _embeddings(model: Any) -> tuple[list[str], np.ndarray] | None:
    ids, rows = [], []
    for item_id in model.catalogue.item_ids:
        vector = model.item_embedding(item_id)
        if vector is not None:
            ids.append(item_id)
            rows.append(np.asarray(vector, dtype=np.float32))
    return (ids, np.vstack(rows)) if rows else None
