"""Cleanup: remove what outlived its use, per scenario.

- artifacts of retired model versions beyond the newest few (their records stay, with `artifact` null);
- finished job records older than the policy's age;
- interactions more than the scenario's `retention.interactionsDays` older than its newest one (none when null);
- Redis seen sets without a TTL that belong to a scenario of the tenant that no longer exists (deleting a scenario
  leaves them behind, and nothing else ever reads or expires them). SCAN walks the whole keyspace whatever its
  MATCH pattern, so the tenant's scan runs at most once per `orphan_scan_interval_s`, by whichever of its
  scenarios' cleanups comes first, not once per scenario.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import structlog

from domain.errors import NotFound
from domain.events import newest_event_time
from domain.ids import utcnow
from domain.learning import versions
from models.cache import Cache, tenant_key
from models.documents import Interaction, Job, Scenario

log = structlog.get_logger()

Report = Callable[[float, str], Awaitable[None]]
SCAN_COUNT = 500
NO_TTL = -1  # what TTL answers for a key that exists without an expiry


@dataclass(frozen=True)
class CleanupPolicy:
    """What cleanup keeps."""

    keep_finished_jobs_days: float = 30.0
    keep_retired_models: int = versions.KEEP_RETIRED
    orphan_scan_interval_s: int = 12 * 3600


class MaintenanceService:
    """Delete what a scenario no longer needs; each step reports how much it removed."""

    def __init__(self, cache: Cache, *, models_dir: Path | None, policy: CleanupPolicy | None = None) -> None:
        self._cache = cache
        self._models_dir = models_dir
        self._policy = policy or CleanupPolicy()

    async def cleanup(self, *, tenant_id: str, scenario_id: str, report: Report) -> dict[str, Any]:
        """Run every cleanup step for the scenario; return what each removed."""
        scenario = await Scenario.find_one({"_id": scenario_id, "tenant_id": tenant_id})
        if scenario is None:
            raise NotFound(f"scenario {scenario_id} no longer exists", field="scenarioId")
        await report(0.05, "model artifacts")
        artifacts = await self.prune_artifacts(tenant_id=tenant_id, scenario_id=scenario_id)
        await report(0.25, "job records")
        jobs = await self.delete_old_jobs(tenant_id=tenant_id, scenario_id=scenario_id)
        await report(0.45, "interactions")
        days = ((scenario.config or {}).get("retention") or {}).get("interactionsDays")
        interactions = await self.delete_old_interactions(tenant_id=tenant_id, scenario_id=scenario_id, days=days)
        await report(0.7, "redis keys")
        keys = await self.delete_orphan_keys(tenant_id=tenant_id)
        return {"artifactsDeleted": artifacts, "jobsDeleted": jobs, "interactionsDeleted": interactions,
                "retentionDays": days, "redisKeysDeleted": keys}

    async def prune_artifacts(self, *, tenant_id: str, scenario_id: str) -> int:
        """Delete the artifacts of retired versions beyond the newest few (none where no models dir is known)."""
        if self._models_dir is None:
            return 0
        return await versions.prune(tenant_id, scenario_id, self._models_dir, keep=self._policy.keep_retired_models)

    async def delete_old_jobs(self, *, tenant_id: str, scenario_id: str) -> int:
        """Delete the scenario's finished job records older than the policy's age."""
        cutoff = utcnow() - timedelta(days=self._policy.keep_finished_jobs_days)
        result = await Job.get_pymongo_collection().delete_many(
            {"tenant_id": tenant_id, "scenario_id": scenario_id, "active": False, "finished_at": {"$lt": cutoff}}
        )
        return result.deleted_count

    async def delete_old_interactions(self, *, tenant_id: str, scenario_id: str, days: int | None) -> int:
        """Delete the scenario's interactions more than `days` older than its newest one; none when days is None.

        Measured from the newest event, as decay and trending are, so a historical import is not wiped the first
        night; with live traffic the newest event is now.
        """
        if not days:
            return 0
        newest = await newest_event_time(tenant_id=tenant_id, scenario_id=scenario_id)
        if newest is None:
            return 0
        scoped = {"tenant_id": tenant_id, "scenario_id": scenario_id, "ts": {"$lt": newest - timedelta(days=days)}}
        result = await Interaction.get_pymongo_collection().delete_many(scoped)  # the (tenant, scenario, ts) index
        return result.deleted_count

    async def delete_orphan_keys(self, *, tenant_id: str) -> int:
        """Delete the tenant's seen sets that have no TTL and whose scenario no longer exists."""
        client = getattr(self._cache, "client", None)  # only a Redis cache holds keys that outlive their scenario
        if client is None:
            return 0
        # Claim the tenant's scan for the interval; give the claim back when the scan fails, so the next one runs.
        claim = tenant_key(tenant_id, "cleanup", "orphan-scan")
        if not await client.set(claim, "1", nx=True, ex=self._policy.orphan_scan_interval_s):
            return 0
        prefix = tenant_key(tenant_id, "seen", "")
        try:
            alive = {d["_id"] for d in await Scenario.get_pymongo_collection().find(
                {"tenant_id": tenant_id}, {"_id": 1}).to_list(None)}
            candidates = [key async for key in client.scan_iter(match=f"{_escape(prefix)}*", count=SCAN_COUNT)
                          if _scenario_of(key, prefix) not in alive]
            return await _delete_without_ttl(client, candidates)
        except Exception:
            await client.delete(claim)
            raise


def _escape(pattern: str) -> str:
    """Escape the glob characters Redis MATCH knows (tenant keys contain braces, ids may contain others)."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in pattern)


def _scenario_of(key: str | bytes, prefix: str) -> str:
    text = key.decode() if isinstance(key, bytes) else key
    return text[len(prefix):].split(":", 1)[0]


async def _delete_without_ttl(client: Any, keys: Collection[str | bytes]) -> int:
    keys = list(keys)
    if not keys:
        return 0
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.ttl(key)
        ttls = await pipe.execute()
    stale = [key for key, ttl in zip(keys, ttls, strict=True) if ttl == NO_TTL]
    if stale:
        await client.delete(*stale)
        log.info("cleanup.keys_deleted", count=len(stale))
    return len(stale)
