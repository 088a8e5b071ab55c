"""Model version records and their life cycle: one per training attempt's output, keyed by the job that made it.

Statuses: TRAINING while the artifact is written, READY once it is complete, FAILED if it never got there, RETIRED
once it holds no alias any more. Aliases, each held by at most one version of a scenario's kind: `champion` (the
version that serves) and `challenger` (the newest trained version that did not beat the champion). The first
successful version of a kind becomes champion; a later one replaces it only when it `beats` it by the scenario's
`models.promotionMargin`, else it becomes the challenger. A version that loses its alias is RETIRED; the artifacts of
the newest KEEP_RETIRED retired versions of each kind stay on disk (promotion back, rollback, a lagging pod), older
ones are deleted by `prune` (the record stays, with `artifact` null).

Each time a version becomes champion it records the champion it replaced (`previous`), so rollback walks back the
promotions one at a time. A job applies its result at most once: a retried attempt finds the version its job
already applied (`applied_at` set) and returns it instead of building a new one, and a version left half-built by an
attempt whose worker died is marked FAILED before the next is built.
"""

from __future__ import annotations

import asyncio
import math
import shutil
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from domain.ids import new_id, utcnow
from models.documents import Experiment, ModelVersion

MODEL_KIND = "scenario"  # model_versions kind: one ScenarioModel holding every classical model the scenario uses
KEEP_RETIRED = 2  # retired versions of each kind whose artifacts stay on disk
TRAINING, READY, FAILED, RETIRED = "TRAINING", "READY", "FAILED", "RETIRED"
STATUSES = (TRAINING, READY, FAILED, RETIRED)
CHAMPION, CHALLENGER = "champion", "challenger"
ALIASES = (CHAMPION, CHALLENGER)
USABLE = (READY, RETIRED)  # with an artifact, such a version can be promoted, rolled back to or pinned
PROMOTION_METRIC = "ndcg@10"  # on the training's time-ordered validation slice
BASELINE_METRIC = "champion_ndcg@10"  # the champion scored on the new version's own validation slice
COMPARED_METRIC = "compared_ndcg@10"  # ... and the new version on the same users
# The statuses stored before the registry, and what each became.
LEGACY = {"active": READY, "ready": READY, "training": TRAINING, "retired": RETIRED, "failed": FAILED}
_UNFINISHED = {"$or": [{"status": TRAINING}, {"status": READY, "applied_at": None}]}


def beats(new: Mapping[str, float], champion: Mapping[str, float], margin: float) -> bool:
    """Return whether a newly trained version replaces the champion: new NDCG@10 - champion's >= margin.

    When the training scored the champion on its own validation slice (`champion_ndcg@10`, on the users the
    champion never trained on, beside the new pipeline's `compared_ndcg@10` on the same users) those two decide;
    else each version's figure on its own slice. Without both figures (finite) nothing is comparable and the newer
    version wins: it was trained on fresher data.
    """
    same_users = BASELINE_METRIC in new
    score = new.get(COMPARED_METRIC if same_users and COMPARED_METRIC in new else PROMOTION_METRIC)
    baseline = new.get(BASELINE_METRIC, champion.get(PROMOTION_METRIC))
    if score is None or baseline is None or not (math.isfinite(score) and math.isfinite(baseline)):
        return True
    return score - baseline >= margin


def usable(version: ModelVersion) -> bool:
    """Return whether the version is complete, was applied by its training and still has its artifact."""
    return version.status in USABLE and version.artifact is not None and version.applied_at is not None


def _col() -> Any:
    return ModelVersion.get_pymongo_collection()


def _of(tenant_id: str, scenario_id: str, kind: str) -> dict[str, Any]:
    return {"tenant_id": tenant_id, "scenario_id": scenario_id, "kind": kind}


async def champion(tenant_id: str, scenario_id: str, kind: str = MODEL_KIND) -> ModelVersion | None:
    """Return the version of that kind serving the scenario, or None when none was ever promoted."""
    # While a promotion is half-written two versions may hold the alias: the one promoted last wins.
    return await ModelVersion.find(
        {**_of(tenant_id, scenario_id, kind), "aliases": CHAMPION}
    ).sort([("activated_at", -1)]).first_or_none()


async def pinned(tenant_id: str, scenario_id: str, pin: Mapping[str, Any],
                 kind: str = MODEL_KIND) -> ModelVersion | None:
    """Return the version a pin names, `{"version": n}` or `{"alias": name}`, or None."""
    query = _of(tenant_id, scenario_id, kind)
    if pin.get("version") is not None:
        return await ModelVersion.find_one({**query, "version": int(pin["version"])})
    return await ModelVersion.find({**query, "aliases": pin.get("alias")}).sort(
        [("activated_at", -1), ("version", -1)]).first_or_none()


async def listing(tenant_id: str, scenario_id: str, *, limit: int) -> list[ModelVersion]:
    """Return the scenario's versions of every kind, newest first."""
    return await ModelVersion.find({"tenant_id": tenant_id, "scenario_id": scenario_id}).sort(
        [("created_at", -1), ("version", -1)]).limit(limit).to_list()


async def applied_by(job_id: str, *, tenant_id: str) -> ModelVersion | None:
    """Return the version this job already applied (an earlier attempt got that far), or None."""
    return await ModelVersion.find_one(
        {"tenant_id": tenant_id, "job_id": job_id, "status": {"$in": list(USABLE)}, "applied_at": {"$ne": None}}
    )


async def new_version(job_id: str, *, tenant_id: str, scenario_id: str, models_dir: Path,
                      kind: str = MODEL_KIND) -> ModelVersion:
    """Insert the next version (TRAINING), after failing what an earlier attempt of the job left unfinished."""
    await _abandon_unfinished(job_id, tenant_id=tenant_id, models_dir=models_dir)
    latest = await ModelVersion.find(_of(tenant_id, scenario_id, kind)).sort([("version", -1)]).first_or_none()
    number = (latest.version if latest else 0) + 1
    suffix = f"v{number}" if kind == MODEL_KIND else f"{kind}/v{number}"
    version = ModelVersion(
        id=new_id("mv"), tenant_id=tenant_id, scenario_id=scenario_id, kind=kind, version=number, status=TRAINING,
        artifact=f"{tenant_id}/{scenario_id}/{suffix}", job_id=job_id, created_at=utcnow(),
    )
    await version.insert()
    return version


async def _abandon_unfinished(job_id: str, *, tenant_id: str, models_dir: Path) -> None:
    left = await ModelVersion.find({"tenant_id": tenant_id, "job_id": job_id, **_UNFINISHED}).to_list()
    for version in left:
        await discard(version, models_dir, "abandoned: the attempt that built it stopped")


async def mark_ready(version: ModelVersion) -> None:
    """Record that the version's artifact is complete on disk."""
    await _col().update_one({"_id": version.id, "tenant_id": version.tenant_id, "status": TRAINING},
                            {"$set": {"status": READY, "trained_at": utcnow()}})


async def apply(
    version: ModelVersion, *, spaces: dict[str, str], metrics: dict[str, float], margin: float = 0.0,
    force: bool = False, device: str = "cpu", config: Mapping[str, Any] | None = None,
) -> bool:
    """Record a trained version's figures, then make it champion when it beats the champion (or `force`), else
    the challenger; return whether it became champion."""
    await _col().update_one(
        {"_id": version.id, "tenant_id": version.tenant_id},
        {"$set": {"spaces": spaces, "metrics": metrics, "device": device, "config": dict(config or {})}},
    )
    current = await champion(version.tenant_id, version.scenario_id, version.kind)
    if force or current is None or beats(metrics, current.metrics, margin):
        await promote(version)
        return True
    await _challenge(version)
    return False


async def promote(version: ModelVersion, *, remember: bool = True) -> None:
    """Make the version its kind's champion; the champion it replaces, and a challenger older than it, retire.

    `remember` records the replaced champion as where a rollback goes; a rollback itself keeps the target's own
    record, so rolling back again goes one step further back.
    """
    now = utcnow()
    current = await champion(version.tenant_id, version.scenario_id, version.kind)
    changes: dict[str, Any] = {"status": READY, "aliases": [CHAMPION], "activated_at": now,
                               "applied_at": version.applied_at or now}
    if remember and current is not None and current.id != version.id:
        changes["previous"] = current.id
    await _col().update_one({"_id": version.id, "tenant_id": version.tenant_id}, {"$set": changes})
    others = {**_of(version.tenant_id, version.scenario_id, version.kind), "_id": {"$ne": version.id}}
    # Only champions promoted before this one step down: of two promotions racing, the later one wins.
    before = {"$or": [{"activated_at": {"$lt": now}}, {"activated_at": None}]}
    await _retire({**others, "aliases": CHAMPION, **before}, CHAMPION)
    await _retire({**others, "aliases": CHALLENGER, "version": {"$lt": version.version}}, CHALLENGER)


async def _challenge(version: ModelVersion) -> None:
    await _col().update_one({"_id": version.id, "tenant_id": version.tenant_id},
                            {"$set": {"status": READY, "aliases": [CHALLENGER], "applied_at": utcnow()}})
    others = {**_of(version.tenant_id, version.scenario_id, version.kind), "_id": {"$ne": version.id}}
    await _retire({**others, "aliases": CHALLENGER}, CHALLENGER)


async def _retire(query: dict[str, Any], alias: str) -> None:
    await _col().update_many(query, {"$pull": {"aliases": alias}, "$set": {"status": RETIRED}})


async def rollback_target(current: ModelVersion) -> ModelVersion | None:
    """Return the champion `current` replaced, or the one before that when it cannot serve any more; None: none."""
    seen, previous = {current.id}, current.previous
    while previous is not None and previous not in seen:
        seen.add(previous)
        doc = await ModelVersion.find_one({"_id": previous, "tenant_id": current.tenant_id})
        if doc is None:
            return None
        if usable(doc):
            return doc
        previous = doc.previous
    return None


async def prune(tenant_id: str, scenario_id: str, models_dir: Path, *, keep: int = KEEP_RETIRED) -> int:
    """Delete the artifacts of each kind's retired versions beyond the newest `keep`; return how many were deleted.

    A champion's rollback target and the versions pinned by experiments not yet stopped are always kept.
    """
    retired = await ModelVersion.find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "status": RETIRED, "artifact": {"$ne": None}}
    ).sort([("version", -1)]).to_list()
    protected = await _protected(tenant_id, scenario_id)
    kept: Counter[str] = Counter()
    doomed = []
    for old in retired:
        if old.id in protected or (old.kind, old.version) in protected:
            continue
        kept[old.kind] += 1
        if kept[old.kind] > keep:
            doomed.append(old)
    for old in doomed:
        await asyncio.to_thread(shutil.rmtree, models_dir / (old.artifact or ""), True)
        await _col().update_one({"_id": old.id, "tenant_id": old.tenant_id}, {"$set": {"artifact": None}})
    return len(doomed)


async def _protected(tenant_id: str, scenario_id: str) -> set[Any]:
    """Return the ids of the champions' rollback targets and the (kind, version) of versions experiments pin."""
    champions = await ModelVersion.find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "aliases": CHAMPION}
    ).to_list()
    protected: set[Any] = {c.previous for c in champions if c.previous}
    experiments = await Experiment.find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "status": {"$ne": "STOPPED"}}
    ).to_list()
    for exp in experiments:
        for variant in exp.variants:
            if (pin := variant.get("model") or {}).get("version") is not None:
                protected.add((MODEL_KIND, int(pin["version"])))
    return protected


async def can_serve(tenant_id: str, scenario_id: str) -> list[ModelVersion]:
    """Return the versions that serve or may serve soon: those holding an alias, the champions' rollback targets,
    the versions experiments not yet stopped pin, and those still being built (TRAINING, or READY and not applied)."""
    protected = await _protected(tenant_id, scenario_id)
    ids = [p for p in protected if isinstance(p, str)]
    pinned = [{"kind": kind, "version": number} for kind, number in (p for p in protected if isinstance(p, tuple))]
    return await ModelVersion.find({"tenant_id": tenant_id, "scenario_id": scenario_id, "$or": [
        {"aliases": {"$in": list(ALIASES)}}, {"_id": {"$in": ids}}, *pinned, *_UNFINISHED["$or"],
    ]}).to_list()


async def record_space(version: ModelVersion, key: str, space: str) -> None:
    """Record the version's `key` space before it is written: a space a failed attempt left is then found (and
    dropped) as any other version's is."""
    await _col().update_one({"_id": version.id, "tenant_id": version.tenant_id}, {"$set": {f"spaces.{key}": space}})


async def discard(version: ModelVersion, models_dir: Path, error: str) -> None:
    """Mark a version its training never applied as FAILED and delete its files."""
    marked = await _col().update_one(
        {"_id": version.id, "tenant_id": version.tenant_id, **_UNFINISHED},
        {"$set": {"status": FAILED, "artifact": None, "error": error}},
    )
    if marked.modified_count and version.artifact:
        await asyncio.to_thread(shutil.rmtree, models_dir / version.artifact, True)


async def release_space(version: ModelVersion, key: str, space: str) -> None:
    """Forget `space` on the scenario's other versions: the new version's vectors replaced theirs in it (a version
    served without its space searches its in-memory embeddings instead)."""
    await _col().update_many(
        {"tenant_id": version.tenant_id, "scenario_id": version.scenario_id, "_id": {"$ne": version.id},
         f"spaces.{key}": space},
        {"$unset": {f"spaces.{key}": ""}},
    )


async def expected_events(tenant_id: str, scenario_id: str) -> int:
    """Return how many interactions the last version trained on: the scale of the loading progress (0: unknown)."""
    latest = await ModelVersion.find(
        {**_of(tenant_id, scenario_id, MODEL_KIND), "metrics.interactions": {"$gt": 0}}
    ).sort([("version", -1)]).first_or_none()
    return int(latest.metrics["interactions"]) if latest else 0


def applied_result(version: ModelVersion) -> dict[str, Any]:
    """Return the result of a job whose version an earlier attempt already applied."""
    metrics = version.metrics
    return {
        "modelVersionId": version.id, "version": version.version, "interactions": int(metrics.get("interactions", 0)),
        "users": int(metrics.get("users", 0)), "items": int(metrics.get("items", 0)),
        "modelBytes": int(metrics.get("model_bytes", 0)), "promoted": CHAMPION in version.aliases,
        "alreadyApplied": True,
    }


async def upgrade_statuses() -> int:
    """Rewrite the versions stored with the statuses before the registry; return how many (idempotent).

    `active` becomes READY with the champion alias; `ready`, `training`, `retired` and `failed` keep their meaning.
    """
    # Process-wide at startup, before any tenant's request: it reads every tenant's legacy versions (few).
    cursor = _col().find({"status": {"$in": list(LEGACY)}}, {"status": 1, "activated_at": 1, "created_at": 1})
    changed = 0
    async for doc in cursor:
        old = doc["status"]
        changes: dict[str, Any] = {"status": LEGACY[old]}
        if old in ("active", "retired"):  # both were applied by the training that built them
            when = doc.get("activated_at") or doc.get("created_at")
            changes |= {"applied_at": when, "trained_at": when, "aliases": [CHAMPION] if old == "active" else [],
                        "device": "cpu"}
        result = await _col().update_one({"_id": doc["_id"], "status": old}, {"$set": changes})
        changed += result.modified_count
    return changed


def content_space(scenario_id: str, slot: str, dim: int) -> str:
    """Return the name of one of a scenario's two content-embedding spaces (the dim is part of a space's shape)."""
    return f"content_{scenario_id}_{slot}{dim}"
