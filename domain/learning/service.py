"""Train a scenario's models as a job: load its data from MongoDB, fit in a child process, store the result as a
new model version (artifact on disk, metadata in MongoDB, item embeddings in the vector store) and make it the one
served.

Two depths share one path: `train` fits every model the scenario uses; `refresh_similarity` refits only the
item-similarity models (item-CF neighbours, content embeddings) over the champion's catalogue and copies the
rest from it (see domain.learning.train.refit_similarity), which costs a fraction of a training.

Fitting is CPU-bound, so it runs in a child process (domain.learning.process), never on the serving event loop.
A failed or timed-out training leaves the champion serving. A new version becomes champion when it beats the
champion by the scenario's `models.promotionMargin` (else it is kept as the challenger; domain.learning.versions).
A job applies its result once: a retry after a worker died finds the version its job already applied.

Besides timings and size, the child's outcome may carry `model_metrics` (validation figures; `ndcg@10`, and
`champion_ndcg@10` for the champion scored on the same slice, decide promotion), `device` (where it trained) and
`config` (fitted values); they are stored on the version and shown by the registry.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import structlog
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from domain import erasure
from domain.errors import NotFound, Unavailable
from domain.ids import utcnow
from domain.jobs import JOB_FUNCTIONS, TRANSIENT, JobKind, JobService, Retryable, error_message
from domain.learning import versions
from domain.learning.forget import forget_users
from domain.learning.process import TrainingProcess, TrainingTimeout
from domain.learning.served import load_served
from domain.learning.tower_spaces import TowerSpaces
from domain.learning.train import TrainingData
from domain.learning.versions import CHAMPION, KEEP_RETIRED, MODEL_KIND, content_space
from domain.scenarios.service import ScenarioService
from models.documents import Interaction, Item, Job, ModelVersion, Scenario
from models.vectors import VectorPoint, VectorStore, VectorStoreError

__all__ = ["KEEP_RETIRED", "MODEL_KIND", "LearningConfig", "Retryable", "TrainingService", "content_space"]

log = structlog.get_logger()

TRAIN_KIND = JobKind.TRAIN.value  # job kind: (re)train everything a scenario uses
TRAIN_FUNCTION = JOB_FUNCTIONS[JobKind.TRAIN]  # the arq job that runs TrainingService.train
SIMILARITY_KIND = JobKind.SIMILARITY.value
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
TRAINING_TRANSIENT = (*TRANSIENT, VectorStoreError)
NO_MODEL = "the scenario has no trained model yet: run a TRAIN job first"
SUPERSEDED = "another version became champion while refitting over the older one: it is kept"
TRAINED_SECTIONS = ("recall", "ranker", "interactionWeights")  # what a version records of the config it was trained on
Report = Callable[[float, str], Awaitable[None]]


def _learns_from_served(scenario: Scenario, partial: bool) -> bool:
    """Return whether a training of the scenario reads its served lists: a full one, of a learned ranker."""
    return not partial and ((scenario.config or {}).get("ranker") or {}).get("name") == "dcn"


class Superseded(Exception):
    """Another version became champion while the similarity models were refitted over the older one."""


class SwapTarget(Protocol):
    async def swap(self, tenant_id: str, scenario_id: str, version: int, revision: int = 0) -> bool: ...


class SwapNotifier(Protocol):
    async def publish(self, tenant_id: str, scenario_id: str, version: int, revision: int = 0, *,
                      kind: str = MODEL_KIND) -> None: ...


@dataclass(frozen=True)
class LearningConfig:
    """Where artifacts go, how long a training may run, and who hears about a new version."""

    models_dir: Path
    time_limit_s: float = 1800.0
    swaps: SwapTarget | None = None  # this process's serving registry (embedded mode)
    notifier: SwapNotifier | None = None  # every other API process
    similarity_time_limit_s: float = 900.0


async def load_training_data(
    *, tenant_id: str, scenario_id: str, expected: int = 0, report: Report | None = None, served: bool = False
) -> TrainingData:
    """Read the scenario's items and interactions: only the fields training uses, in large batches; with `served`,
    also the lists served to its users and the events attributed to them (what a learned ranker learns from).

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
        served=await load_served(tenant_id, scenario_id) if served else None,
    )


class TrainingService:
    """Submit and run scenario trainings; one child process trains at a time."""

    def __init__(
        self, jobs: JobService, scenarios: ScenarioService, *, vectors: VectorStore | None,
        config: LearningConfig | None, towers: TowerSpaces | None = None,
    ) -> None:
        self._jobs = jobs
        self._scenarios = scenarios
        self._vectors = vectors
        self._config = config
        self._towers = towers or TowerSpaces(vectors, scenarios, models_dir=config.models_dir if config else None)
        self._process = TrainingProcess()

    def time_limit_s(self, kind: str) -> float | None:
        """Return the time limit of a TRAIN or SIMILARITY attempt (None where training is not configured)."""
        if self._config is None:
            return None
        return self._config.similarity_time_limit_s if kind == SIMILARITY_KIND else self._config.time_limit_s

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
        return await self._jobs.create(
            TRAIN_KIND, tenant_id=tenant_id, scenario_id=scenario_id, time_limit_s=self.time_limit_s(TRAIN_KIND)
        )

    async def active_version(self, scenario_id: str, *, tenant_id: str) -> ModelVersion | None:
        """Return the version serving the scenario (its champion), or None when it was never trained."""
        return await versions.champion(tenant_id, scenario_id)

    async def train(
        self, job_id: str, *, tenant_id: str, scenario_id: str, attempt: int = 1, may_retry: bool = False
    ) -> dict[str, Any] | None:
        """Run one attempt of a training job; return its result, or None when it failed or was not to run.

        Raises Retryable (after putting the job back to QUEUED) when a store was briefly unavailable and
        `may_retry`; cancellation puts the job back to QUEUED too, so a restarted worker runs it again.
        """
        async def work(report: Report) -> dict[str, Any]:
            return await self._run(job_id, tenant_id=tenant_id, scenario_id=scenario_id, report=report, partial=False)

        return await self._jobs.run(job_id, tenant_id=tenant_id, attempt=attempt, may_retry=may_retry, work=work,
                                    transient=TRAINING_TRANSIENT, expected=(NotFound, TrainingTimeout))

    async def refresh_similarity(
        self, job_id: str, *, tenant_id: str, scenario_id: str, attempt: int = 1, may_retry: bool = False
    ) -> dict[str, Any] | None:
        """Run one attempt of a SIMILARITY job: refit item-CF and content embeddings and swap them in.

        A scenario never trained has nothing to refresh: the job succeeds with `skipped` in its result.
        """
        async def work(report: Report) -> dict[str, Any]:
            return await self._run(job_id, tenant_id=tenant_id, scenario_id=scenario_id, report=report, partial=True)

        return await self._jobs.run(job_id, tenant_id=tenant_id, attempt=attempt, may_retry=may_retry, work=work,
                                    transient=TRAINING_TRANSIENT, expected=(NotFound, TrainingTimeout))

    async def _run(
        self, job_id: str, *, tenant_id: str, scenario_id: str, report: Report, partial: bool
    ) -> dict[str, Any]:
        config = self._require_config()
        if (done := await versions.applied_by(job_id, tenant_id=tenant_id)) is not None:
            return await self._already_applied(done, config)
        started, since = time.perf_counter(), utcnow()
        scenario = await Scenario.find_one({"_id": scenario_id, "tenant_id": tenant_id})
        if scenario is None:
            raise NotFound(f"scenario {scenario_id} no longer exists", field="scenarioId")
        base = await versions.champion(tenant_id, scenario_id) if partial else None
        if partial and (base is None or not base.artifact):
            return {"skipped": NO_MODEL}
        data = await self._load(tenant_id, scenario_id, report, served=_learns_from_served(scenario, partial))
        seconds = {"load": time.perf_counter() - started}
        version = await versions.new_version(
            job_id, tenant_id=tenant_id, scenario_id=scenario_id, models_dir=config.models_dir
        )
        try:
            outcome = await self._build(version, scenario, data, config, report, seconds, base=base, since=since)
        except Superseded as exc:
            await versions.discard(version, config.models_dir, str(exc))
            return {"skipped": str(exc)}
        except BaseException as exc:
            await versions.discard(version, config.models_dir, error_message(exc))
            raise
        seconds["total"] = time.perf_counter() - started
        result = _result(version, data, outcome, seconds)
        return {**result, "basedOn": base.version, "refitted": outcome["refitted"]} if base is not None else result

    async def _already_applied(self, version: ModelVersion, config: LearningConfig) -> dict[str, Any]:
        """Finish a job an earlier attempt already applied: tell serving again (the attempt may have died first)."""
        log.info("training.already_applied", job_id=version.job_id, version=version.version)
        if CHAMPION in version.aliases:
            await announce(version, config)
        return versions.applied_result(version)

    async def _load(self, tenant_id: str, scenario_id: str, report: Report, *, served: bool = False) -> TrainingData:
        self._process.warm()  # its imports take seconds: let them run while MongoDB is read
        try:
            await report(0.01, "loading data")
            return await load_training_data(
                tenant_id=tenant_id, scenario_id=scenario_id,
                expected=await versions.expected_events(tenant_id, scenario_id), report=_scaled(report, 0.01, LOADED),
                served=served,
            )
        except BaseException:
            self._process.release()  # the warmed child will not be needed
            raise

    async def _build(
        self, version: ModelVersion, scenario: Scenario, data: TrainingData, config: LearningConfig, report: Report,
        seconds: dict[str, float], *, base: ModelVersion | None = None, since: datetime | None = None,
    ) -> dict[str, Any]:
        """Fit and save in the child, store the embeddings, then apply the version and tell serving if it became
        champion (a refit over the champion always does)."""
        await report(LOADED, "refitting similarity" if base is not None else "training")
        path = config.models_dir / (version.artifact or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        current = await versions.champion(version.tenant_id, version.scenario_id) if base is None else None
        outcome = await self._process.fit(
            data, dict(scenario.config), scenario_id=scenario.id, version=version.version, path=path,
            time_limit_s=self.time_limit_s(SIMILARITY_KIND if base is not None else TRAIN_KIND) or 0,
            report=_scaled(report, LOADED, 0.85),
            base=config.models_dir / base.artifact if base is not None and base.artifact else None,
            champion=config.models_dir / current.artifact if current is not None and current.artifact else None,
        )
        seconds.update(train=outcome["train_s"], save=outcome["save_s"], child=outcome["child_s"])
        if since is not None:
            outcome["forgotten"] = await _forget_erased(path, since, tenant_id=version.tenant_id)
        await versions.mark_ready(version)  # the artifact is complete on disk
        mark = time.perf_counter()
        await report(0.86, "storing vectors")
        spaces = await self._store_vectors(version, data, outcome.pop("embeddings"))
        spaces |= await self._store_towers(version, data, outcome.pop("tower_vectors", None), base, since)
        seconds["vectors"] = time.perf_counter() - mark
        mark = time.perf_counter()
        await report(0.95, "activating")
        if base is not None:
            await _still_serving(base)
        outcome["promoted"] = await versions.apply(
            version, spaces=spaces, metrics=_metrics(data, outcome, seconds), margin=_margin(scenario),
            force=base is not None, device=str(outcome.get("device") or "cpu"), config=_trained(scenario, outcome),
        )
        try:
            if outcome["promoted"]:
                await announce(version, config)
            await versions.prune(version.tenant_id, version.scenario_id, config.models_dir)
            await self._towers.prune(version.tenant_id, version.scenario_id)
        except Exception:  # noqa: BLE001 - the version is applied; serving re-checks champions periodically
            log.exception("training.after_activation_failed", scenario_id=version.scenario_id, version=version.version)
        seconds["swap"] = time.perf_counter() - mark
        return outcome

    async def close(self) -> None:
        """Stop the training process, if any."""
        await self._process.close()

    def _require_config(self) -> LearningConfig:
        if self._config is None:
            raise Unavailable("training is not available in this process")
        return self._config

    async def _store_vectors(self, version: ModelVersion, data: TrainingData, embeddings: Any) -> dict[str, str]:
        """Write the item embeddings into the space the champion does not use; return {kind: space}."""
        if self._vectors is None or embeddings is None:
            return {}
        ids, matrix = embeddings
        space = await self._free_space(version, dim=int(matrix.shape[1]))
        tenant_id = version.tenant_id
        await self._vectors.ensure_space(space, dim=int(matrix.shape[1]))
        await self._vectors.delete_tenant(space, tenant_id=tenant_id)  # left from a version before the champion
        await versions.release_space(version, "content", space)
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

    async def _store_towers(self, version: ModelVersion, data: TrainingData, vectors: Any,
                            base: ModelVersion | None, since: datetime | None) -> dict[str, str]:
        """Write the two-tower item vectors into the version's own space, with the items written since the data was
        read (from now on the item-vector job includes the version: it is READY); a refit keeps its base's space (it
        keeps its towers). Return {"two_tower": space}, or {} without them."""
        if base is not None:
            space = base.spaces.get("two_tower")
            return {"two_tower": space} if space else {}
        spaces = await self._towers.write(version, vectors, data.items)
        if spaces and since is not None:
            await self._towers.catch_up(version.model_copy(update={"spaces": spaces}), since)
        return spaces

    async def _free_space(self, version: ModelVersion, *, dim: int) -> str:
        """Return the content space for a new version: of two per scenario, the one the champion does not use.

        Writing the new vectors beside the served ones makes the swap atomic: a reader sees the old model with the
        old vectors or the new model with the new ones.
        """
        active = await versions.champion(version.tenant_id, version.scenario_id)
        first, second = (content_space(version.scenario_id, slot, dim) for slot in ("a", "b"))
        return second if active is not None and active.spaces.get("content") == first else first


async def announce(version: ModelVersion, config: LearningConfig) -> None:
    """Swap this process's serving copy to the version (its kind's new champion) and tell the other API processes."""
    if config.swaps is not None and version.kind == MODEL_KIND:
        await config.swaps.swap(version.tenant_id, version.scenario_id, version.version, version.revision)
    if config.notifier is not None:
        try:
            await config.notifier.publish(version.tenant_id, version.scenario_id, version.version, version.revision,
                                          kind=version.kind)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # Other processes re-check champions periodically; the notice only makes it faster.
            log.warning("training.notice_not_sent", error=str(exc), scenario_id=version.scenario_id)


async def _forget_erased(path: Path, since: datetime, *, tenant_id: str) -> int:
    """Drop from a freshly built artifact the users erased since its data was loaded; return how many."""
    erased = await erasure.erased_since(since, tenant_id=tenant_id)
    if not erased:
        return 0
    key = await erasure.hash_key(tenant_id=tenant_id)
    return await asyncio.to_thread(forget_users, path, lambda user_id: erasure.digest(key, user_id) in erased)


async def _still_serving(base: ModelVersion) -> None:
    """Raise Superseded when another version replaced the one the similarity models were refitted over."""
    active = await versions.champion(base.tenant_id, base.scenario_id)
    if active is not None and active.id != base.id:
        raise Superseded(SUPERSEDED)


def _payload(item: Mapping[str, Any] | None, version: ModelVersion) -> dict[str, Any]:
    item = item or {}
    return {"scenarios": [version.scenario_id], "categories": list(item.get("categories") or []),
            "tags": list(item.get("tags") or []), "version": version.version}


def _metrics(data: TrainingData, outcome: Mapping[str, Any], seconds: Mapping[str, float]) -> dict[str, float]:
    counts = {"interactions": len(data.user_ids), "users": len(set(data.user_ids)), "items": len(data.items),
              "model_bytes": outcome["model_bytes"], "embeddings": outcome["embeddings_count"]}
    return {**{k: float(v) for k, v in counts.items()}, **{f"{k}_s": round(v, 3) for k, v in seconds.items()},
            **outcome.get("model_metrics", {})}


def _margin(scenario: Scenario) -> float:
    """Return how much higher a new version's validation NDCG@10 must be for it to replace the champion."""
    return float(((scenario.config or {}).get("models") or {}).get("promotionMargin") or 0.0)


def _trained(scenario: Scenario, outcome: Mapping[str, Any]) -> dict[str, Any]:
    """Return what a version records of its config: the sections training reads, then any values it fitted."""
    config = scenario.config or {}
    given = {name: config[name] for name in TRAINED_SECTIONS if name in config}
    return {"configVersion": scenario.config_version, **given, **(outcome.get("config") or {})}


def _result(
    version: ModelVersion, data: TrainingData, outcome: Mapping[str, Any], seconds: Mapping[str, float]
) -> dict:
    return {
        "modelVersionId": version.id, "version": version.version, "interactions": len(data.user_ids),
        "users": len(set(data.user_ids)), "items": len(data.items), "modelBytes": outcome["model_bytes"],
        "promoted": bool(outcome.get("promoted")), "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def _scaled(report: Report, low: float, high: float) -> Report:
    """Map a stage's own 0..1 progress onto its share [low, high] of the job."""
    async def scaled(fraction: float, stage: str) -> None:
        await report(low + (high - low) * min(max(fraction, 0.0), 1.0), stage)

    return scaled
