"""A scenario's config history: every config it has had, who set it, how, and what changed from the one before.

A version is recorded when a scenario is created (1) and each time its config changes: by `updateScenario`, by
shipping an experiment's variant, or by rolling back to an earlier version (which records a new version holding the
old config, so the history only ever grows). The scenario document keeps the current config and its number; this
collection keeps them all, so a dashboard can show what changed when, and an operator can return to a config that
worked. Renaming a scenario is not a config change.

The version is written after the scenario's config (a conditional update on the version it replaced, so two
concurrent changes cannot both claim one number). A process that dies between the two leaves the scenario one
version ahead of its history; the version is recorded from the scenario document the next time it is read
(`versions`), with the origin RECORDED, as migration 2 does for scenarios older than the history.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domain.ids import utcnow
from models.documents import Scenario, ScenarioConfigVersion

CREATED = "CREATED"
UPDATED = "UPDATED"
SHIPPED = "SHIPPED"
ROLLED_BACK = "ROLLED_BACK"
RECORDED = "RECORDED"
ORIGINS = (CREATED, UPDATED, SHIPPED, ROLLED_BACK, RECORDED)

MAX_CHANGED = 50  # paths listed per version; a wholesale change lists its first ones and "…"
MAX_VERSIONS_PAGE = 100


def version_id(tenant_id: str, scenario_id: str, version: int) -> str:
    """Return the `_id` of one version's record."""
    return f"{tenant_id}/{scenario_id}/{version}"


def changed_paths(before: Any, after: Any, path: str = "") -> list[str]:
    """Return the dotted paths at which two configs differ, in order: objects are compared key by key, lists of the
    same length entry by entry (`recall[1].weight`), anything else as a whole."""
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        found: list[str] = []
        for key in [*before, *(k for k in after if k not in before)]:
            if key not in before or key not in after:
                found.append(_join(path, key))
            else:
                found.extend(changed_paths(before[key], after[key], _join(path, key)))
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [p for n, (b, a) in enumerate(zip(before, after)) for p in changed_paths(b, a, f"{path}[{n}]")]
    return [] if before == after else [path or "."]


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else str(key)


async def record(
    scenario: Scenario, *, previous: Mapping | None, key_id: str | None, origin: str, origin_ref: str | None = None
) -> ScenarioConfigVersion:
    """Store the scenario's current config as its version `scenario.config_version` (replacing a record of the same
    number, so that recording twice is harmless)."""
    changed = [] if previous is None else changed_paths(previous, scenario.config)
    if len(changed) > MAX_CHANGED:
        changed = [*changed[:MAX_CHANGED], "…"]
    doc = ScenarioConfigVersion(
        id=version_id(scenario.tenant_id, scenario.id, scenario.config_version), tenant_id=scenario.tenant_id,
        scenario_id=scenario.id, version=scenario.config_version, config=scenario.config, created_at=utcnow(),
        key_id=key_id, origin=origin, origin_ref=origin_ref, changed=changed,
    )
    await ScenarioConfigVersion.get_pymongo_collection().replace_one(
        {"_id": doc.id}, doc.model_dump(by_alias=True), upsert=True
    )
    return doc


async def get(tenant_id: str, scenario_id: str, version: int) -> ScenarioConfigVersion | None:
    """Return one recorded version, or None."""
    return await ScenarioConfigVersion.find_one(
        {"_id": version_id(tenant_id, scenario_id, version), "tenant_id": tenant_id}
    )


async def versions(scenario: Scenario, *, first: int) -> list[ScenarioConfigVersion]:
    """Return the scenario's newest `first` versions, newest first (recording the current one if it is missing)."""
    query = {"tenant_id": scenario.tenant_id, "scenario_id": scenario.id}
    found = await ScenarioConfigVersion.find(query).sort("-version").limit(first).to_list()
    if not found or found[0].version < scenario.config_version:
        previous = found[0].config if found and found[0].version == scenario.config_version - 1 else None
        found.insert(0, await record(scenario, previous=previous, key_id=None, origin=RECORDED))
        found = found[:first]
    return found


async def forget(tenant_id: str, scenario_id: str) -> None:
    """Delete a deleted scenario's history."""
    await ScenarioConfigVersion.get_pymongo_collection().delete_many(
        {"tenant_id": tenant_id, "scenario_id": scenario_id}
    )
