"""The embedded VectorStore: Qdrant's engine in-process through qdrant-edge-py, one EdgeShard per space."""

from __future__ import annotations

import asyncio
import shutil
import uuid
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from qdrant_edge import (
    CountRequest,
    Distance,
    EdgeConfig,
    EdgeOptimizersConfig,
    EdgeShard,
    EdgeVectorParams,
    FieldCondition,
    Filter,
    HasIdCondition,
    KeywordIndexParams,
    MatchAny,
    MatchValue,
    PayloadSchemaType,
    Point,
    Query,
    QueryRequest,
    UpdateOperation,
)

from models.vectors.protocol import (
    ID_KEY,
    INDEXED_KEYS,
    TENANT_KEY,
    SpaceNotFoundError,
    VectorHit,
    VectorPoint,
    VectorStoreError,
    check_distance,
    check_space,
    check_tenant,
    client_payload,
    is_many,
    point_uuid,
    stored_payload,
)

T = TypeVar("T")

_DISTANCES = {"cosine": Distance.Cosine, "dot": Distance.Dot, "euclid": Distance.Euclid}

# The binding holds the GIL through each update (about 20 us a point), so a thread alone does not keep the
# event loop responsive: bulk writes go in chunks this size (~5 ms each), letting the loop run between them.
_CHUNK = 256

# qdrant-edge reports a held WAL lock (another open of the same path) with this text.
_LOCK_MARKERS = ("WouldBlock", "failed to open WAL")


class EdgeVectorStore:
    """Store each embedding space as an EdgeShard directory under `root`."""

    def __init__(self, root: Path, *, indexing_threshold_kb: int | None = None, remove_on_close: bool = False) -> None:
        self._root = Path(root)
        # Qdrant builds HNSW only for segments above this size; None keeps Qdrant's default.
        self._optimizers = (
            EdgeOptimizersConfig(indexing_threshold=indexing_threshold_kb) if indexing_threshold_kb else None
        )
        self._remove_on_close = remove_on_close
        self._shards: dict[str, EdgeShard] = {}
        self._params: dict[str, tuple[int, str]] = {}
        self._open_lock = asyncio.Lock()
        self._closed = False

    @property
    def root(self) -> Path:
        """Return the directory holding one shard per space."""
        return self._root

    async def ensure_space(self, space: str, *, dim: int, distance: str = "cosine") -> None:
        """Create or open the space's shard with its payload indexes; reject a different dim or distance."""
        check_space(space)
        check_distance(distance)
        async with self._open_lock:
            self._check_open()
            known = self._params.get(space)
            if known is not None:
                if known != (dim, distance):
                    raise VectorStoreError(_mismatch(space, known, (dim, distance)))
                return
            # A shard opened lazily (without a config) is reopened with one so Qdrant checks compatibility.
            await self._close_shard(space)
            self._shards[space] = await asyncio.to_thread(self._open_or_create, space, dim, distance)
            self._params[space] = (dim, distance)

    async def upsert(self, space: str, points: Sequence[VectorPoint], *, tenant_id: str) -> int:
        """Insert or replace points; return how many were written.

        Batches above 256 points are written chunk by chunk, so a failure can leave earlier chunks written;
        upserts are idempotent, so retry the batch.
        """
        shard = await self._shard(space)
        check_tenant(tenant_id)
        # Payloads are checked up front so a bad point fails the batch before any chunk is written.
        rows = [(p, stored_payload(p, tenant_id)) for p in points]
        if len(rows) <= _CHUNK:
            return self._upsert_sync(space, shard, rows, tenant_id) if rows else 0
        for start in range(0, len(rows), _CHUNK):
            await asyncio.to_thread(self._upsert_sync, space, shard, rows[start : start + _CHUNK], tenant_id)
        return len(rows)

    async def search(
        self,
        space: str,
        vector: Sequence[float],
        *,
        tenant_id: str,
        limit: int,
        must: Mapping[str, Any] | None = None,
        exclude_ids: Collection[str] = (),
        with_payload: bool = True,
    ) -> list[VectorHit]:
        """Return the tenant's nearest points, best first (sub-millisecond, so on the loop)."""
        shard = await self._shard(space)
        check_tenant(tenant_id)
        if limit < 1:
            return []
        with _errors(space):
            request = QueryRequest(
                limit=limit,
                query=Query.Nearest(_floats(vector)),
                filter=_filter(tenant_id, must, exclude_ids),
                with_payload=True if with_payload else [ID_KEY],
            )
            points = shard.query(request)
        if not with_payload:
            return [VectorHit(p.payload[ID_KEY], float(p.score), {}) for p in points]
        return [VectorHit(p.payload[ID_KEY], float(p.score), client_payload(p.payload)) for p in points]

    async def get_vectors(self, space: str, ids: Collection[str], *, tenant_id: str) -> dict[str, list[float]]:
        """Return the stored vectors of the ids that exist."""
        shard = await self._shard(space)
        wanted = _uuids(check_tenant(tenant_id), ids)
        with _errors(space):
            # Positional: the binding requires with_payload although its stub marks it optional.
            records = shard.retrieve(list(wanted), [TENANT_KEY], True)
        found = {_as_uuid(r.id): r.vector for r in records if (r.payload or {}).get(TENANT_KEY) == tenant_id}
        return {id: list(found[key]) for key, id in wanted.items() if key in found}

    async def delete(self, space: str, ids: Collection[str], *, tenant_id: str) -> int:
        """Delete the tenant's points with these ids; return how many existed."""
        shard = await self._shard(space)
        wanted = _uuids(check_tenant(tenant_id), ids)
        with _errors(space):
            records = shard.retrieve(list(wanted), [TENANT_KEY], False)
            existing = [r.id for r in records if (r.payload or {}).get(TENANT_KEY) == tenant_id]
            if existing:
                shard.update(UpdateOperation.delete_points(existing))
        return len(existing)

    async def delete_where(self, space: str, *, tenant_id: str, key: str, value: Any) -> int:
        """Delete the tenant's points whose payload `key` matches `value`."""
        shard = await self._shard(space)
        return await asyncio.to_thread(self._delete_sync, space, shard, check_tenant(tenant_id), {key: value})

    async def delete_tenant(self, space: str, *, tenant_id: str) -> int:
        """Delete every point of the tenant in the space."""
        shard = await self._shard(space)
        return await asyncio.to_thread(self._delete_sync, space, shard, check_tenant(tenant_id), {})

    async def count(self, space: str, *, tenant_id: str) -> int:
        """Return the exact number of the tenant's points in the space."""
        shard = await self._shard(space)
        check_tenant(tenant_id)
        with _errors(space):
            return shard.count(CountRequest(exact=True, filter=_filter(tenant_id)))

    async def optimize(self, space: str) -> bool:
        """Build HNSW, merge segments and vacuum deletes; return whether anything was optimised.

        qdrant-edge runs no optimiser in the background, so call this after bulk loads and periodically.
        The binding holds the GIL for the whole run (a 30k-point, 64-d shard stalled the loop for all of its
        10 s on a 2-core machine), even in a thread: schedule it at startup or in quiet hours.
        """
        shard = await self._shard(space)
        return await asyncio.to_thread(_call, space, shard.optimize)

    async def drop_space(self, space: str) -> bool:
        """Close the space's shard and delete its directory; return whether it existed."""
        check_space(space)
        async with self._open_lock:
            self._check_open()
            await self._close_shard(space)
            self._params.pop(space, None)
            path = self._root / space
            existed = path.exists()
            await asyncio.to_thread(shutil.rmtree, path, True)
            return existed

    async def ping(self) -> bool:
        """Return whether the store is open."""
        return not self._closed

    async def close(self) -> None:
        """Flush and close every shard, and remove the root when it was temporary."""
        async with self._open_lock:
            self._closed = True
            for space in list(self._shards):
                await self._close_shard(space)
            self._params.clear()
            if self._remove_on_close:
                await asyncio.to_thread(shutil.rmtree, self._root, ignore_errors=True)

    async def _shard(self, space: str) -> EdgeShard:
        shard = self._shards.get(space)
        if shard is not None:
            return shard
        check_space(space)
        async with self._open_lock:
            self._check_open()
            if space not in self._shards:
                # After a restart the shard is on disk but not open yet: load it as it was created.
                if not _has_data(self._root / space):
                    raise SpaceNotFoundError(space)
                self._shards[space] = await asyncio.to_thread(self._load, space, None)
            return self._shards[space]

    def _open_or_create(self, space: str, dim: int, distance: str) -> EdgeShard:
        vectors = EdgeVectorParams(size=dim, distance=_DISTANCES[distance])
        config = EdgeConfig(vectors=vectors, optimizers=self._optimizers)
        path = self._root / space
        if _has_data(path):
            shard = self._load(space, config)
        else:
            with _errors(space, path):
                shard = EdgeShard.create(str(path), config)
        try:
            _ensure_indexes(space, shard)
        except VectorStoreError:
            shard.close()
            raise
        return shard

    def _load(self, space: str, config: EdgeConfig | None) -> EdgeShard:
        path = self._root / space
        with _errors(space, path):
            return EdgeShard.load(str(path), config)

    async def _close_shard(self, space: str) -> None:
        shard = self._shards.pop(space, None)
        if shard is not None:
            await asyncio.to_thread(_flush_and_close, space, shard)

    def _check_open(self) -> None:
        if self._closed:
            raise VectorStoreError(f"the vector store at {self._root} is closed")

    @staticmethod
    def _upsert_sync(space: str, shard: EdgeShard, rows: list[tuple[VectorPoint, dict]], tenant_id: str) -> int:
        with _errors(space):
            batch = [Point(point_uuid(tenant_id, p.id), _floats(p.vector), payload) for p, payload in rows]
            shard.update(UpdateOperation.upsert_points(batch))
        return len(batch)

    @staticmethod
    def _delete_sync(space: str, shard: EdgeShard, tenant_id: str, must: Mapping[str, Any]) -> int:
        # The shard reports no count for a delete, so count what the filter matches first.
        with _errors(space):
            where = _filter(tenant_id, must)
            matched = shard.count(CountRequest(exact=True, filter=where))
            if matched:
                shard.update(UpdateOperation.delete_points_by_filter(where))
        return matched


@contextmanager
def _errors(space: str, path: Path | None = None) -> Iterator[None]:
    """Turn qdrant-edge's bare Exceptions into VectorStoreError naming the space."""
    try:
        yield
    except VectorStoreError:
        raise
    except Exception as exc:
        if path is not None and any(marker in str(exc) for marker in _LOCK_MARKERS):
            raise VectorStoreError(
                f"another recograph process holds the shard at {path}; a shard opens in one process only, "
                "so stop the other process or go through its API"
            ) from exc
        raise VectorStoreError(f"qdrant-edge failed on vector space {space!r}: {exc}") from exc


def _call(space: str, fn: Callable[..., T], *args: Any) -> T:
    with _errors(space):
        return fn(*args)


def _flush_and_close(space: str, shard: EdgeShard) -> None:
    with _errors(space):
        shard.flush()
        shard.close()


def _ensure_indexes(space: str, shard: EdgeShard) -> None:
    with _errors(space):
        existing = shard.info().payload_schema
        if TENANT_KEY not in existing:
            # is_tenant groups each tenant's points on disk, which keeps tenant-filtered search local.
            shard.update(UpdateOperation.create_field_index(TENANT_KEY, KeywordIndexParams(is_tenant=True)))
        for key in INDEXED_KEYS:
            if key not in existing:
                shard.update(UpdateOperation.create_field_index(key, PayloadSchemaType.Keyword))


def _filter(tenant_id: str, must: Mapping[str, Any] | None = None, exclude_ids: Collection[str] = ()) -> Filter:
    conditions = [FieldCondition(TENANT_KEY, match=MatchValue(tenant_id))]
    for key, value in (must or {}).items():
        match = MatchAny(list(value)) if is_many(value) else MatchValue(value)
        conditions.append(FieldCondition(key, match=match))
    must_not = [HasIdCondition({point_uuid(tenant_id, id) for id in exclude_ids})] if exclude_ids else None
    return Filter(must=conditions, must_not=must_not)


def _uuids(tenant_id: str, ids: Collection[str]) -> dict[uuid.UUID, str]:
    return {point_uuid(tenant_id, id): id for id in ids}


def _as_uuid(point_id: Any) -> uuid.UUID:
    return point_id if isinstance(point_id, uuid.UUID) else uuid.UUID(str(point_id))


def _floats(vector: Sequence[float]) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()


def _has_data(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _mismatch(space: str, known: tuple[int, str], asked: tuple[int, str]) -> str:
    return (
        f"vector space {space!r} exists with dim={known[0]}, distance={known[1]}; "
        f"asked for dim={asked[0]}, distance={asked[1]}"
    )
