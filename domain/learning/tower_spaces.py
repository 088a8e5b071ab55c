"""Two-tower item vectors in the vector store: one space per model version that trained the towers, kept while a
version that can serve names it, and kept current as the scenario's items change.

- A training that fits `two_tower` writes every catalogue item's vector into `two_tower_<scenario>_v<version>`,
  recording the space on the version first (so that a space a failed attempt left behind is dropped like any
  other), then catches up with the items written while it trained. A similarity refit keeps its base's towers, and
  with them the base's space.
- Every item write of a scenario that uses `two_tower` queues the `items.vectors` job (a plain arq function, not a
  recorded job): in the worker, which holds the vector store in every topology, the changed items get their vectors
  in the spaces of the versions that can serve: the trained vector for an item the version was trained with, the
  item tower's (domain.learning.item_tower) for an item added since; a removed item leaves those spaces.
- After each training the spaces no version that can serve names are dropped (domain.learning.versions.can_serve:
  the aliases, the champion's rollback target, pinned versions, versions being built): a scenario keeps a handful,
  however many versions it trains. A deleted scenario's spaces go with it.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from pymongo.errors import ConnectionFailure

from domain.ids import new_id
from domain.jobs import JobQueue, Retryable
from domain.learning import versions
from domain.learning.storage import load_item_tower
from domain.learning.towers import TowerModel
from domain.scenarios.service import ScenarioService
from models.documents import Item, ModelVersion, composite_id
from models.vectors import (
    SpaceNotFoundError,
    VectorPoint,
    VectorStore,
    VectorStoreError,
)

log = structlog.get_logger()

KIND = "two_tower"  # the key of the space in ModelVersion.spaces, and the recall source it serves
SYNC_FUNCTION = "items.vectors"  # the arq function of `sync`: (tenant_id, scenario_id, item ids)
UPSERT_CHUNK = 2_000
OPTIMIZE_MAX_POINTS = 20_000  # as for content vectors: a larger embedded space stays unindexed (see service.py)
TOWERS_KEPT = 8  # item towers held by the job (one per version artifact)
ITEM_FIELDS = {"_id": 0, "item_id": 1, "scenarios": 1, "title": 1, "categories": 1, "tags": 1, "attributes": 1,
               "published_at": 1}
Loaded = tuple[TowerModel, dict[str, int]]  # the towers, and the row of each item they were trained with


def tower_space(scenario_id: str, version: int) -> str:
    """Return the name of the space of the item vectors a version's training wrote."""
    return f"{KIND}_{scenario_id}_v{version}"


def uses_towers(config: Mapping[str, Any] | None) -> bool:
    """Return whether a scenario config serves the two-tower source (a recall or fallback source)."""
    config = config or {}
    return any(entry.get("source") == KIND for entry in config.get("recall") or ()) or \
        KIND in ((config.get("fallback") or {}).get("sources") or ())


class TowerSpaces:
    """Write, keep current and drop the two-tower spaces of a tenant's scenarios."""

    def __init__(self, vectors: VectorStore | None, scenarios: ScenarioService, *, models_dir: Path | None,
                 queue: JobQueue | None = None) -> None:
        self._vectors = vectors
        self._scenarios = scenarios
        self._models_dir = models_dir
        self._queue = queue
        self._towers: OrderedDict[tuple[str, int], Loaded | None] = OrderedDict()

    # --- training ---------------------------------------------------------------------------------------------

    async def write(self, version: ModelVersion, vectors: tuple[list[str], np.ndarray] | None,
                    items: Sequence[Mapping[str, Any]]) -> dict[str, str]:
        """Write a new version's item vectors (ids and matrix) into its own space; return {KIND: space}."""
        if self._vectors is None or vectors is None:
            return {}
        ids, matrix = vectors
        space = tower_space(version.scenario_id, version.version)
        await versions.record_space(version, KIND, space)
        await self._vectors.ensure_space(space, dim=int(matrix.shape[1]))
        documents = {d["item_id"]: d for d in items}
        for start in range(0, len(ids), UPSERT_CHUNK):
            chunk = ids[start : start + UPSERT_CHUNK]
            points = [VectorPoint(item_id, matrix[start + i], _payload(documents.get(item_id), version))
                      for i, item_id in enumerate(chunk)]
            await self._vectors.upsert(space, points, tenant_id=version.tenant_id)
        optimize = getattr(self._vectors, "optimize", None)  # embedded shards index only on request
        if optimize is not None and len(ids) <= OPTIMIZE_MAX_POINTS:
            await optimize(space)
        return {KIND: space}

    async def catch_up(self, version: ModelVersion, since: datetime) -> int:
        """Give the version's space the items written since its training read them; return how many changed."""
        space = version.spaces.get(KIND)
        if self._vectors is None or not space:
            return 0
        cursor = Item.get_pymongo_collection().find(
            {"tenant_id": version.tenant_id, "scenarios": version.scenario_id, "updated_at": {"$gte": since}},
            {"_id": 0, "item_id": 1})
        ids = [doc["item_id"] async for doc in cursor]
        return await self._sync_versions([version], ids, tenant_id=version.tenant_id,
                                         scenario_id=version.scenario_id) if ids else 0

    async def prune(self, tenant_id: str, scenario_id: str) -> int:
        """Drop the spaces that no version able to serve names; return how many were dropped."""
        if self._vectors is None:
            return 0
        kept = {v.spaces.get(KIND) for v in await versions.can_serve(tenant_id, scenario_id)}
        return await self._drop(tenant_id, scenario_id, keep=kept)

    async def drop_scenario(self, tenant_id: str, scenario_id: str) -> None:
        """Drop every space of a deleted scenario (a store that fails leaves them named on the versions)."""
        if self._vectors is None:
            return
        try:
            await self._drop(tenant_id, scenario_id, keep=set())
        except VectorStoreError as exc:
            log.warning("towers.drop_failed", tenant_id=tenant_id, scenario_id=scenario_id, error=str(exc))

    async def _drop(self, tenant_id: str, scenario_id: str, *, keep: set[str | None]) -> int:
        assert self._vectors is not None
        named = await ModelVersion.find(
            {"tenant_id": tenant_id, "scenario_id": scenario_id, f"spaces.{KIND}": {"$exists": True}}).to_list()
        doomed = {v.spaces[KIND] for v in named} - keep
        for space in sorted(doomed):
            await self._vectors.drop_space(space)
            await ModelVersion.get_pymongo_collection().update_many(
                {"tenant_id": tenant_id, "scenario_id": scenario_id, f"spaces.{KIND}": space},
                {"$unset": {f"spaces.{KIND}": ""}})
            log.info("towers.space_dropped", tenant_id=tenant_id, scenario_id=scenario_id, space=space)
        return len(doomed)

    # --- item writes --------------------------------------------------------------------------------------------

    async def request_sync(self, tenant_id: str, scenario_id: str, item_ids: Sequence[str]) -> None:
        """Queue the item-vector job for written or removed items, when the scenario serves two towers."""
        if self._queue is None or not item_ids:
            return
        try:
            scenario = await self._scenarios.cached(scenario_id, tenant_id=tenant_id)
            if uses_towers(scenario.config):
                await self._queue.enqueue(SYNC_FUNCTION, new_id("iv"), [tenant_id, scenario_id, list(item_ids)])
        except Exception as exc:  # noqa: BLE001 - the items are stored; their vectors come with the next training
            log.warning("towers.sync_not_queued", tenant_id=tenant_id, scenario_id=scenario_id, error=repr(exc))

    async def sync(self, item_ids: Sequence[str], *, tenant_id: str, scenario_id: str,
                   may_retry: bool = False) -> dict[str, int]:
        """Give the items their current vectors in the spaces of the versions that can serve (removing those no
        longer in the scenario); return how many spaces and items. Raises Retryable when a store was briefly
        unavailable and `may_retry`."""
        if self._vectors is None or self._models_dir is None:
            return {"spaces": 0, "items": 0}
        try:
            targets = [v for v in await versions.can_serve(tenant_id, scenario_id) if v.spaces.get(KIND)]
            changed = await self._sync_versions(targets, item_ids, tenant_id=tenant_id, scenario_id=scenario_id)
        except (ConnectionFailure, VectorStoreError) as exc:
            if may_retry and not isinstance(exc, SpaceNotFoundError):
                raise Retryable(str(exc)) from exc
            raise
        return {"spaces": len({v.spaces[KIND] for v in targets}), "items": changed}

    async def _sync_versions(self, targets: Iterable[ModelVersion], item_ids: Sequence[str], *, tenant_id: str,
                             scenario_id: str) -> int:
        assert self._vectors is not None
        ids = list(dict.fromkeys(item_ids))
        docs = await Item.get_pymongo_collection().find(
            {"_id": {"$in": [composite_id(tenant_id, i) for i in ids]}, "tenant_id": tenant_id}, ITEM_FIELDS
        ).to_list(None)
        present = [d for d in docs if scenario_id in (d.get("scenarios") or ())]
        gone = sorted(set(ids) - {d["item_id"] for d in present})
        by_space = {v.spaces[KIND]: v for v in targets if v.artifact and v.spaces.get(KIND)}
        for space, version in by_space.items():
            loaded = await self._loaded(version)
            try:
                if loaded is not None and present:
                    await self._upsert(space, version, loaded, present)
                if gone:
                    await self._vectors.delete(space, gone, tenant_id=tenant_id)
            except SpaceNotFoundError:  # dropped meanwhile: its version no longer serves
                continue
        return len(present) + len(gone) if by_space else 0

    async def _upsert(self, space: str, version: ModelVersion, loaded: Loaded,
                      docs: list[dict[str, Any]]) -> None:
        assert self._vectors is not None
        towers, rows = loaded
        trained = [d for d in docs if d["item_id"] in rows]
        new = [d for d in docs if d["item_id"] not in rows]
        vectors = [np.asarray(towers.item_vectors[rows[d["item_id"]]]) for d in trained]
        if new:
            computed = await asyncio.to_thread(towers.new_item_vectors, new)
            if computed is None:  # towers exported without an item tower: new items wait for the next training
                new = []
            else:
                vectors.extend(computed)
        points = [VectorPoint(d["item_id"], v, _payload(d, version)) for d, v in zip([*trained, *new], vectors,
                                                                                       strict=True)]
        for start in range(0, len(points), UPSERT_CHUNK):
            await self._vectors.upsert(space, points[start : start + UPSERT_CHUNK], tenant_id=version.tenant_id)

    async def _loaded(self, version: ModelVersion) -> Loaded | None:
        """Return the version's towers, read once per artifact revision (None: it has none, or they do not load)."""
        key = (str(version.artifact), version.revision)
        if key in self._towers:
            self._towers.move_to_end(key)
            return self._towers[key]
        assert self._models_dir is not None
        try:
            found = await asyncio.to_thread(load_item_tower, self._models_dir / str(version.artifact))
        except (OSError, ValueError, KeyError) as exc:  # not kept: the next job reads it again
            log.warning("towers.load_failed", artifact=version.artifact, error=str(exc))
            return None
        loaded = None if found is None else (found[0], {item_id: i for i, item_id in enumerate(found[1])})
        self._towers[key] = loaded
        while len(self._towers) > TOWERS_KEPT:
            self._towers.popitem(last=False)
        return loaded


def _payload(item: Mapping[str, Any] | None, version: ModelVersion) -> dict[str, Any]:
    item = item or {}
    return {"scenarios": [version.scenario_id], "categories": list(item.get("categories") or []),
            "tags": list(item.get("tags") or []), "version": version.version}
