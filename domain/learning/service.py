"""Train a scenario's models as a job: load its data from MongoDB, fit in a child process, store the result as a
new model version (artifact on disk, metadata in MongoDB, item embeddings in the vector store) and make it the one
served.

Fitting is CPU-bound, so it runs in a child process (domain.learning.process), never on the serving event loop.
A failed or timed-out training leaves the previous active version serving.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
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
from domain.learning.process import TrainingProcess, TrainingTimeout
from domain.learning.train import TrainingData
from domain.scenarios.service import ScenarioService
from models.documents import Interaction, Item, Job, ModelVersion, Scenario
from models.vectors import VectorPoint, VectorStore, VectorStoreError

log = structlog.get_logger()

TRAIN_KIND = "train"  # job kind: (re)train everything a scenario uses
TRAIN_FUNCTION = "scenarios.train"  # the arq job that runs TrainingService.train
MODEL_KIND = "scenario"  # model_versions kind: one ScenarioModel holding every model the scenario uses
KEEP_RETIRED = 2  # retired versions whose artifacts stay on disk (rollback, a lagging pod)
BATCH = 5_000  # documents per MongoDB round trip when loading: decoding one holds the event loop ~25 ms
UPSERT_CHUNK = 2_000
# qdrant-edge holds the GIL while it optimises (0.6 s for 9.7k points here, ~26 s for 100k), stalling serving in
# this process; a larger space stays unindexed, where a brute-force search still takes a few milliseconds.
OPTIMIZE_MAX_POINTS = 20_000
LOADED = 0.35  # share of a job's progress spent loading from MongoDB (measured: about a third of the time)
ITEM_FIELDS = {"_id": 0, "item_id": 1, "title": 1, "categories": 1, "tags": 1, "attributes": 1, "published_at": 1,
               "status": 1}
EVENT_FIELDS = {"_id": 0, "user_id": 1, "item_id": 1, "type": 1, "value": 1, "ts": 1}
# Errors of a store that may be back in a moment: the attempt is retried (with backoff) instead of failing the job.
TRANSIENT = (ConnectionFailure, RedisConnectionError, RedisTimeoutError, VectorStoreError, BrokenProcessPool)
Report = Callable[[float, str], Awaitable[None]]


class Retryable(Exception):
    """The attempt failed because a store or the training process was briefly unavailable; try again later."""


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


async def load_training_data(
    *, tenant_id: str, scenario_id: str, expected: int = 0, report: Report | None = None
) -> TrainingData:
    """Read the scenario's items and interactions: only the fields training uses, in large batches.

    Columns are built batch by batch, so the event loop (which also serves requests) is never held for long.
    """
    items = await Item.get_pymongo_collection().find(
        {"tenant_id": tenant_id, "scenarios": scenario_id}, ITEM_FIELDS, batch_size=BATCH
    ).to_list(None)
    cursor = Interaction.get_pymongo_collection().find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id}, EVENT_FIELDS, batch_size=BATCH
    )
    columns: dict[str, list] = {"user_id": [], "item_id": [], "type": [], "value": []}
    times: list[np.ndarray] = []
    while batch := await cursor.to_list(BATCH):
        for name, column in columns.items():
            column.extend(e.get(name) for e in batch)
        times.append(np.fromiter((e["ts"].timestamp() for e in batch), dtype=np.float64, count=len(batch)))
        if report is not None and expected:
            await report(min(len(columns["user_id"]) / expected, 1.0), "loading interactions")
    return TrainingData(
        items=items, user_ids=columns["user_id"], item_ids=columns["item_id"], types=columns["type"],
        values=columns["value"], timestamps=np.concatenate(times) if times else np.empty(0, dtype=np.float64),
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
        self._process = TrainingProcess()

    async def submit(self, scenario_id: str, *, tenant_id: str) -> Job:
        """Queue a training of the scenario, or return the one already queued or running."""
        if self._config is None:
            raise Unavailable("training is not available in this process")
        await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
        return await self._jobs.submit(
            TRAIN_KIND, TRAIN_FUNCTION, tenant_id=tenant_id, scenario_id=scenario_id,
            time_limit_s=self._config.time_limit_s,
        )

    async def open_job(self, scenario_id: str, *, tenant_id: str) -> Job:
        """Return the scenario's queued or running training job, or record a new one for the caller to `train`."""
        await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
        if (active := await self._jobs.active_for(TRAIN_KIND, scenario_id, tenant_id=tenant_id)) is not None:
            return active
        time_limit_s = self._config.time_limit_s if self._config else None
        return await self._jobs.create(
            TRAIN_KIND, tenant_id=tenant_id, scenario_id=scenario_id, time_limit_s=time_limit_s
        )

    async def active_version(self, scenario_id: str, *, tenant_id: str) -> ModelVersion | None:
        """Return the version serving the scenario, or None when it was never trained."""
        return await _active_version(tenant_id, scenario_id)

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
            expected = isinstance(exc, (NotFound, TrainingTimeout))
            bound.warning("training.failed", error=_message(exc), exc_info=not expected)
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
        self._process.warm()  # its imports take seconds: let them run while MongoDB is read
        try:
            await report(0.01, "loading data")
            data = await load_training_data(
                tenant_id=tenant_id, scenario_id=scenario_id, expected=await _expected_events(tenant_id, scenario_id),
                report=_scaled(report, 0.01, LOADED),
            )
        except BaseException:
            self._process.release()  # the warmed child will not be needed
            raise
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
        await report(LOADED, "training")
        path = config.models_dir / (version.artifact or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        outcome = await self._process.fit(
            data, dict(scenario.config), scenario_id=scenario.id, version=version.version, path=path,
            time_limit_s=config.time_limit_s, report=_scaled(report, LOADED, 0.85),
        )
        seconds.update(train=outcome["train_s"], save=outcome["save_s"], child=outcome["child_s"])
        await _set_status(version, "ready")  # the artifact is complete on disk
        mark = time.perf_counter()
        await report(0.86, "storing vectors")
        spaces = await self._store_vectors(version, data, outcome.pop("embeddings"))
        seconds["vectors"] = time.perf_counter() - mark
        mark = time.perf_counter()
        await report(0.95, "activating")
        await self._activate(version, spaces, _metrics(data, outcome, seconds))
        try:
            await self._announce(version, config)
            await self._prune(version, config)
        except Exception:  # noqa: BLE001 - the version is active; serving re-checks active versions periodically
            log.exception("training.after_activation_failed", scenario_id=version.scenario_id, version=version.version)
        seconds["swap"] = time.perf_counter() - mark
        return outcome

    async def close(self) -> None:
        """Stop the training process, if any."""
        await self._process.close()

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
        optimize = getattr(self._vectors, "optimize", None)  # embedded shards index and vacuum only on request
        if optimize is not None and len(ids) <= OPTIMIZE_MAX_POINTS:
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
             "status": "active", "_id": {"$ne": version.id}},
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
            await asyncio.to_thread(shutil.rmtree, config.models_dir / (old.artifact or ""), True)
            await ModelVersion.get_pymongo_collection().update_one(
                {"_id": old.id, "tenant_id": old.tenant_id}, {"$set": {"artifact": None}}
            )

    @staticmethod
    async def _discard(version: ModelVersion, config: LearningConfig, exc: BaseException) -> None:
        """Mark a version that never became active as failed and delete its files."""
        marked = await ModelVersion.get_pymongo_collection().update_one(
            {"_id": version.id, "tenant_id": version.tenant_id, "status": {"$in": ["training", "ready"]}},
            {"$set": {"status": "failed", "artifact": None, "error": _message(exc)}},
        )
        if marked.modified_count:
            await asyncio.to_thread(shutil.rmtree, config.models_dir / (version.artifact or ""), True)


def content_space(scenario_id: str, slot: str, dim: int) -> str:
    """Return the name of one of a scenario's two content-embedding spaces (the dim is part of a space's shape)."""
    return f"content_{scenario_id}_{slot}{dim}"


async def _set_status(version: ModelVersion, status: str) -> None:
    await ModelVersion.get_pymongo_collection().update_one(
        {"_id": version.id, "tenant_id": version.tenant_id}, {"$set": {"status": status}}
    )


async def _active_version(tenant_id: str, scenario_id: str) -> ModelVersion | None:
    return await ModelVersion.find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "kind": MODEL_KIND, "status": "active"}
    ).sort([("version", -1)]).first_or_none()


async def _expected_events(tenant_id: str, scenario_id: str) -> int:
    """Return how many interactions the last version trained on: the scale of the loading progress (0: unknown)."""
    latest = await ModelVersion.find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "kind": MODEL_KIND, "metrics.interactions": {"$gt": 0}}
    ).sort([("version", -1)]).first_or_none()
    return int(latest.metrics["interactions"]) if latest else 0


def _payload(item: Mapping[str, Any] | None, version: ModelVersion) -> dict[str, Any]:
    item = item or {}
    return {"scenarios": [version.scenario_id], "categories": list(item.get("categories") or []),
            "tags": list(item.get("tags") or []), "version": version.version}


def _metrics(data: TrainingData, outcome: Mapping[str, Any], seconds: Mapping[str, float]) -> dict[str, float]:
    counts = {"interactions": len(data.user_ids), "users": len(set(data.user_ids)), "items": len(data.items),
              "model_bytes": outcome["model_bytes"], "embeddings": outcome["embeddings_count"]}
    return {**{k: float(v) for k, v in counts.items()}, **{f"{k}_s": round(v, 3) for k, v in seconds.items()}}


def _result(
    version: ModelVersion, data: TrainingData, outcome: Mapping[str, Any], seconds: Mapping[str, float]
) -> dict:
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


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (NotFound, TrainingTimeout, Retryable)) else f"{type(exc).__name__}: {text}"
