"""Rebuild a restored tenant's derived state: its Redis hot state from its events, its vector points from its
model artifacts. A backup carries neither (Redis and the vector store are not read while it runs); both are rebuilt
by `recograph restore` before it returns, so a service started on the restored data is ready with them.

- Redis: the tenant's keys are gone (a restore clears whatever a stopped restore left), so every event of the
  tenant is replayed once, as the consumer's catch-up replays a Redis that lost its data: profiles, seen sets,
  popularity, markers and the last day's live metrics (domain.realtime.service). The events are read from the
  backup's own file while they are written into MongoDB (`replay_file`); a backup of an older schema is first
  migrated, then replayed from MongoDB (`rebuild_hot_state`). What Redis alone held and no event records (answers
  cached, rate-limit buckets, served pages awaiting attribution, dead letters) starts empty.
- Vectors: each model version that can serve (domain.learning.versions.can_serve) gets its spaces again: the
  content space from the version's item embeddings, as its training wrote it, and the two-tower space from the
  version's towers for every item of the scenario, as the item-vector job keeps it (domain.learning.tower_spaces).
  Items are read in one pass over the scenario's items, never by long lists of ids.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import bson
import numpy as np
import structlog

from domain.backup.files import read_bson
from domain.backup.parts import DECODE
from domain.learning import versions
from domain.learning.model import ScenarioModel
from domain.learning.process import item_embeddings
from domain.learning.storage import load_item_tower
from domain.learning.tower_spaces import ITEM_FIELDS, KIND as TOWERS, OPTIMIZE_MAX_POINTS, UPSERT_CHUNK
from domain.realtime.apply import REPLAY_ASPECTS
from domain.realtime.contracts import METRICS_MINUTE_TTL_S
from domain.realtime.replay import REPLAY_BATCH, event_of
from domain.realtime.service import RealtimeService
from models.documents import Item, ModelVersion, Scenario
from models.vectors import VectorPoint, VectorStore

CONTENT = "content"
log = structlog.get_logger()


async def rebuild_hot_state(realtime: RealtimeService | None, tenant_id: str) -> int:
    """Replay the tenant's stored events into Redis; return how many were applied (0 without Redis)."""
    if realtime is None:
        return 0
    return await realtime.catch_up(tenant_id=tenant_id)


async def replay_file(realtime: RealtimeService | None, path: Path, *, tenant_id: str) -> int:
    """Replay a backup's events of a tenant into Redis straight from its file, as the consumer's catch-up replays a
    tenant that has no state (every aspect, live metrics for the events of the last day, each event once through
    its marker), so that it can run while the same events are written into MongoDB; return how many applied."""
    if realtime is None or not path.exists():
        return 0
    recent = (time.time() - METRICS_MINUTE_TTL_S) * 1000
    reader = read_bson(path)
    applied = 0
    while (batch := await asyncio.to_thread(next, reader, None)) is not None:
        events = [event_of(bson.decode(raw.raw, codec_options=DECODE)) for raw in batch]
        for start in range(0, len(events), REPLAY_BATCH):
            chunk = events[start : start + REPLAY_BATCH]
            aspects = {n: REPLAY_ASPECTS if e.received_ms >= recent else "ops" for n, e in enumerate(chunk)}
            applied += await realtime.processor.apply(chunk, tenant_id=tenant_id, aspects=aspects, live=False)
    log.info("restore.replayed", tenant_id=tenant_id, events=applied)
    return applied


async def rebuild_vectors(vectors: VectorStore | None, models_dir: Path, *, tenant_id: str) -> int:
    """Write the spaces of the tenant's model versions that can serve; return how many points were written."""
    if vectors is None:
        return 0
    written = 0
    async for scenario in Scenario.get_pymongo_collection().find({"tenant_id": tenant_id}, {"_id": 1}):
        serving = [v for v in await versions.can_serve(tenant_id, scenario["_id"]) if v.artifact]
        written += await _content(vectors, models_dir, serving)
        written += await _towers(vectors, models_dir, serving, tenant_id=tenant_id, scenario_id=scenario["_id"])
    return written


async def _content(vectors: VectorStore, models_dir: Path, serving: Sequence[ModelVersion]) -> int:
    """Write each content space from the newest version naming it (the last to write it)."""
    newest: dict[str, ModelVersion] = {}
    for version in sorted(serving, key=lambda v: v.version):
        if space := version.spaces.get(CONTENT):
            newest[space] = version
    written = 0
    for space, version in newest.items():
        ids, matrix = await asyncio.to_thread(_embeddings, models_dir / str(version.artifact))
        if not ids:
            continue
        items = await _items(ids, tenant_id=version.tenant_id, scenario_id=version.scenario_id)
        await vectors.ensure_space(space, dim=int(matrix.shape[1]))
        written += await _upsert(vectors, space, version, ids, matrix, items)
    return written


async def _towers(vectors: VectorStore, models_dir: Path, serving: Sequence[ModelVersion], *, tenant_id: str,
                  scenario_id: str) -> int:
    """Write each two-tower space: every item of the scenario with its vector from the version's towers (the
    trained vector, or the item tower's for an item added since), as the item-vector job keeps it."""
    spaces = {v.spaces[TOWERS]: v for v in serving if v.spaces.get(TOWERS)}
    if not spaces:
        return 0
    cursor = Item.get_pymongo_collection().find({"tenant_id": tenant_id, "scenarios": scenario_id}, ITEM_FIELDS)
    items = [doc async for doc in cursor]
    written = 0
    for space, version in spaces.items():
        found = await asyncio.to_thread(load_item_tower, models_dir / str(version.artifact))
        if found is None:
            continue
        towers, trained = found
        rows = {item_id: n for n, item_id in enumerate(trained)}
        known = [d for d in items if d["item_id"] in rows]
        new = [d for d in items if d["item_id"] not in rows]
        matrix = [np.asarray(towers.item_vectors[rows[d["item_id"]]]) for d in known]
        computed = await asyncio.to_thread(towers.new_item_vectors, new) if new else None
        if computed is None:  # towers exported without an item tower: new items wait for the next training
            new = []
        else:
            matrix.extend(computed)
        await vectors.ensure_space(space, dim=towers.dim)
        written += await _upsert(vectors, space, version, [d["item_id"] for d in [*known, *new]], matrix,
                                 {d["item_id"]: d for d in items})
    return written


async def _upsert(vectors: VectorStore, space: str, version: ModelVersion, ids: Sequence[str],
                  matrix: Sequence[np.ndarray] | np.ndarray, items: dict[str, dict[str, Any]]) -> int:
    written = 0
    for start in range(0, len(ids), UPSERT_CHUNK):
        points = [VectorPoint(item_id, matrix[start + i], _payload(items.get(item_id), version))
                  for i, item_id in enumerate(ids[start : start + UPSERT_CHUNK])]
        written += await vectors.upsert(space, points, tenant_id=version.tenant_id)
    await _optimize(vectors, space, len(ids))
    return written


def _embeddings(path: Path) -> tuple[list[str], np.ndarray]:
    """Return the items that have a content embedding in a saved model, and the embeddings (float32)."""
    return item_embeddings(ScenarioModel.load(path)) or ([], np.zeros((0, 0), np.float32))


async def _items(ids: Sequence[str], *, tenant_id: str, scenario_id: str) -> dict[str, dict[str, Any]]:
    """Return the labels of the scenario's items among ids, read in one pass over the scenario's items (on the
    embedded server a long `$in` of ids costs a scan of the tenant's items per query)."""
    wanted = set(ids)
    cursor = Item.get_pymongo_collection().find({"tenant_id": tenant_id, "scenarios": scenario_id},
                                                {"item_id": 1, "categories": 1, "tags": 1})
    return {doc["item_id"]: doc async for doc in cursor if doc["item_id"] in wanted}


def _payload(item: dict[str, Any] | None, version: ModelVersion) -> dict[str, Any]:
    """Return a point's payload as training writes it (domain.learning.service)."""
    item = item or {}
    return {"scenarios": [version.scenario_id], "categories": list(item.get("categories") or []),
            "tags": list(item.get("tags") or []), "version": version.version}


async def _optimize(vectors: VectorStore, space: str, points: int) -> None:
    optimize = getattr(vectors, "optimize", None)  # embedded shards index and vacuum only on request
    if optimize is not None and points <= OPTIMIZE_MAX_POINTS:
        await optimize(space)
