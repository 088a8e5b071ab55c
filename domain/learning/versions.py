"""Model version records: one per training attempt's output, keyed by the job that made it.

A version is `training` while its artifact is written, `ready` once the artifact is complete, `active` while it
serves and `retired` after a newer one took over (`failed` if it never became active). A job applies its result at
most once: a retried attempt finds the version its job already activated and returns it instead of building a new
one, and a version left half-built by an attempt whose worker died is marked failed before the next is built.
"""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path
from typing import Any

from domain.ids import new_id, utcnow
from models.documents import ModelVersion

MODEL_KIND = "scenario"  # model_versions kind: one ScenarioModel holding every model the scenario uses
KEEP_RETIRED = 2  # retired versions whose artifacts stay on disk (rollback, a lagging pod)
APPLIED = ("active", "retired")
UNFINISHED = ("training", "ready")


async def active_version(tenant_id: str, scenario_id: str) -> ModelVersion | None:
    """Return the version serving the scenario, or None when it was never trained."""
    return await ModelVersion.find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "kind": MODEL_KIND, "status": "active"}
    ).sort([("version", -1)]).first_or_none()


async def applied_by(job_id: str, *, tenant_id: str) -> ModelVersion | None:
    """Return the version this job already activated (an earlier attempt got that far), or None."""
    return await ModelVersion.find_one({"tenant_id": tenant_id, "job_id": job_id, "status": {"$in": list(APPLIED)}})


async def new_version(job_id: str, *, tenant_id: str, scenario_id: str, models_dir: Path) -> ModelVersion:
    """Insert the next version (status training), after failing what an earlier attempt of the job left unfinished."""
    await _abandon_unfinished(job_id, tenant_id=tenant_id, models_dir=models_dir)
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


async def _abandon_unfinished(job_id: str, *, tenant_id: str, models_dir: Path) -> None:
    left = await ModelVersion.find(
        {"tenant_id": tenant_id, "job_id": job_id, "status": {"$in": list(UNFINISHED)}}
    ).to_list()
    for version in left:
        await discard(version, models_dir, "abandoned: the attempt that built it stopped")


async def set_status(version: ModelVersion, status: str) -> None:
    """Record the version's new status."""
    await ModelVersion.get_pymongo_collection().update_one(
        {"_id": version.id, "tenant_id": version.tenant_id}, {"$set": {"status": status}}
    )


async def activate(version: ModelVersion, spaces: dict[str, str], metrics: dict[str, float]) -> None:
    """Make the version active, then retire the one before (readers take the newest active version)."""
    col = ModelVersion.get_pymongo_collection()
    await col.update_one(
        {"_id": version.id, "tenant_id": version.tenant_id},
        {"$set": {"status": "active", "activated_at": utcnow(), "spaces": spaces, "metrics": metrics}},
    )
    await col.update_many(
        {"tenant_id": version.tenant_id, "scenario_id": version.scenario_id, "kind": MODEL_KIND,
         "status": "active", "_id": {"$ne": version.id}},
        {"$set": {"status": "retired"}},
    )


async def prune(tenant_id: str, scenario_id: str, models_dir: Path, *, keep: int = KEEP_RETIRED) -> int:
    """Delete the artifacts of retired versions beyond the newest `keep`; return how many were deleted."""
    retired = await ModelVersion.find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "kind": MODEL_KIND, "status": "retired",
         "artifact": {"$ne": None}}
    ).sort([("version", -1)]).to_list()
    for old in retired[keep:]:
        await asyncio.to_thread(shutil.rmtree, models_dir / (old.artifact or ""), True)
        await ModelVersion.get_pymongo_collection().update_one(
            {"_id": old.id, "tenant_id": old.tenant_id}, {"$set": {"artifact": None}}
        )
    return len(retired[keep:])


async def discard(version: ModelVersion, models_dir: Path, error: str) -> None:
    """Mark a version that never became active as failed and delete its files."""
    marked = await ModelVersion.get_pymongo_collection().update_one(
        {"_id": version.id, "tenant_id": version.tenant_id, "status": {"$in": list(UNFINISHED)}},
        {"$set": {"status": "failed", "artifact": None, "error": error}},
    )
    if marked.modified_count and version.artifact:
        await asyncio.to_thread(shutil.rmtree, models_dir / version.artifact, True)


async def expected_events(tenant_id: str, scenario_id: str) -> int:
    """Return how many interactions the last version trained on: the scale of the loading progress (0: unknown)."""
    latest = await ModelVersion.find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "kind": MODEL_KIND, "metrics.interactions": {"$gt": 0}}
    ).sort([("version", -1)]).first_or_none()
    return int(latest.metrics["interactions"]) if latest else 0


def applied_result(version: ModelVersion) -> dict[str, Any]:
    """Return the result of a job whose version an earlier attempt already activated."""
    metrics = version.metrics
    return {
        "modelVersionId": version.id, "version": version.version, "interactions": int(metrics.get("interactions", 0)),
        "users": int(metrics.get("users", 0)), "items": int(metrics.get("items", 0)),
        "modelBytes": int(metrics.get("model_bytes", 0)), "alreadyApplied": True,
    }


def content_space(scenario_id: str, slot: str, dim: int) -> str:
    """Return the name of one of a scenario's two content-embedding spaces (the dim is part of a space's shape)."""
    return f"content_{scenario_id}_{slot}{dim}"
