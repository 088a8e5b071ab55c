"""The production VectorStore: a Qdrant server (or cluster) through qdrant-client, one collection per space."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import numpy as np
from qdrant_client import AsyncQdrantClient
from qdrant_client import models as qm

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

_DISTANCES = {"cosine": qm.Distance.COSINE, "dot": qm.Distance.DOT, "euclid": qm.Distance.EUCLID}


class QdrantServerVectorStore:
    """Store each embedding space as a Qdrant collection shared by all tenants."""

    def __init__(self, client: AsyncQdrantClient) -> None:
        self._client = client

    async def ensure_space(self, space: str, *, dim: int, distance: str = "cosine") -> None:
        """Create the collection and its payload indexes unless they exist; reject a different dim or distance."""
        check_space(space)
        check_distance(distance)
        try:
            if await self._client.collection_exists(space):
                info = await self._client.get_collection(space)
                _check_params(space, info.config.params.vectors, dim, distance)
                indexed = set(info.payload_schema or {})
            else:
                params = qm.VectorParams(size=dim, distance=_DISTANCES[distance])
                await self._client.create_collection(space, vectors_config=params)
                indexed = set()
            await self._create_indexes(space, indexed)
        except VectorStoreError:
            raise
        except Exception as exc:
            raise VectorStoreError(f"qdrant could not prepare vector space {space!r}: {exc}") from exc

    async def upsert(self, space: str, points: Sequence[VectorPoint], *, tenant_id: str) -> int:
        """Insert or replace points; return how many were written."""
        check_space(space)
        check_tenant(tenant_id)
        rows = [(str(point_uuid(tenant_id, p.id)), p.vector, stored_payload(p, tenant_id)) for p in points]
        if not rows:
            await self._require(space)
            return 0
        try:
            structs = [qm.PointStruct(id=id, vector=_floats(vector), payload=payload) for id, vector, payload in rows]
            await self._client.upsert(space, points=structs, wait=True)
        except Exception as exc:
            raise await self._failure(space, exc) from exc
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
        """Return the tenant's nearest points, best first."""
        check_space(space)
        check_tenant(tenant_id)
        if limit < 1:
            return []
        try:
            response = await self._client.query_points(
                space,
                query=_floats(vector),
                query_filter=_filter(tenant_id, must, exclude_ids),
                limit=limit,
                with_payload=True if with_payload else [ID_KEY],
            )
        except Exception as exc:
            raise await self._failure(space, exc) from exc
        if not with_payload:
            return [VectorHit(p.payload[ID_KEY], float(p.score), {}) for p in response.points]
        return [VectorHit(p.payload[ID_KEY], float(p.score), client_payload(p.payload)) for p in response.points]

    async def get_vectors(self, space: str, ids: Collection[str], *, tenant_id: str) -> dict[str, list[float]]:
        """Return the stored vectors of the ids that exist."""
        records = await self._retrieve(space, ids, tenant_id, with_vectors=True)
        return {id: list(record.vector) for id, record in records.items()}

    async def delete(self, space: str, ids: Collection[str], *, tenant_id: str) -> int:
        """Delete the tenant's points with these ids; return how many existed."""
        records = await self._retrieve(space, ids, tenant_id, with_vectors=False)
        if not records:
            return 0
        selector = qm.PointIdsList(points=[record.id for record in records.values()])
        try:
            await self._client.delete(space, points_selector=selector, wait=True)
        except Exception as exc:
            raise await self._failure(space, exc) from exc
        return len(records)

    async def delete_where(self, space: str, *, tenant_id: str, key: str, value: Any) -> int:
        """Delete the tenant's points whose payload `key` matches `value`."""
        return await self._delete_matching(space, tenant_id, {key: value})

    async def delete_tenant(self, space: str, *, tenant_id: str) -> int:
        """Delete every point of the tenant in the collection."""
        return await self._delete_matching(space, tenant_id, {})

    async def count(self, space: str, *, tenant_id: str) -> int:
        """Return the exact number of the tenant's points in the collection."""
        check_space(space)
        check_tenant(tenant_id)
        try:
            result = await self._client.count(space, count_filter=_filter(tenant_id), exact=True)
        except Exception as exc:
            raise await self._failure(space, exc) from exc
        return result.count

    async def drop_space(self, space: str) -> bool:
        """Delete the collection; return whether it existed."""
        check_space(space)
        try:
            return bool(await self._client.delete_collection(space))
        except Exception as exc:
            raise VectorStoreError(f"qdrant could not delete vector space {space!r}: {exc}") from exc

    async def ping(self) -> bool:
        """Return whether the server answers."""
        try:
            await self._client.get_collections()
        except Exception:
            return False
        return True

    async def close(self) -> None:
        """Close the client's connections."""
        await self._client.close()

    async def _create_indexes(self, space: str, indexed: set[str]) -> None:
        if TENANT_KEY not in indexed:
            # is_tenant co-locates each tenant's points, which keeps tenant-filtered search local.
            schema = qm.KeywordIndexParams(type=qm.KeywordIndexType.KEYWORD, is_tenant=True)
            await self._client.create_payload_index(space, TENANT_KEY, field_schema=schema, wait=True)
        for key in INDEXED_KEYS:
            if key not in indexed:
                schema = qm.PayloadSchemaType.KEYWORD
                await self._client.create_payload_index(space, key, field_schema=schema, wait=True)

    async def _retrieve(
        self, space: str, ids: Collection[str], tenant_id: str, *, with_vectors: bool
    ) -> dict[str, qm.Record]:
        check_space(space)
        wanted = {str(point_uuid(check_tenant(tenant_id), id)): id for id in ids}
        if not wanted:
            await self._require(space)
            return {}
        try:
            records = await self._client.retrieve(
                space, list(wanted), with_payload=[TENANT_KEY], with_vectors=with_vectors
            )
        except Exception as exc:
            raise await self._failure(space, exc) from exc
        # The uuid already scopes the id to the tenant; the payload check keeps reads filtered on it regardless.
        found = {str(r.id): r for r in records if (r.payload or {}).get(TENANT_KEY) == tenant_id}
        return {id: found[key] for key, id in wanted.items() if key in found}

    async def _delete_matching(self, space: str, tenant_id: str, must: Mapping[str, Any]) -> int:
        check_space(space)
        check_tenant(tenant_id)
        try:
            where = _filter(tenant_id, must)
            # The server reports no count for a delete, so count what the filter matches first.
            matched = (await self._client.count(space, count_filter=where, exact=True)).count
            if matched:
                await self._client.delete(space, points_selector=qm.FilterSelector(filter=where), wait=True)
        except Exception as exc:
            raise await self._failure(space, exc) from exc
        return matched

    async def _require(self, space: str) -> None:
        try:
            exists = await self._client.collection_exists(space)
        except Exception as exc:
            raise VectorStoreError(f"qdrant failed on vector space {space!r}: {exc}") from exc
        if not exists:
            raise SpaceNotFoundError(space)

    async def _failure(self, space: str, exc: Exception) -> VectorStoreError:
        """Name a missing collection plainly; wrap anything else with the backend's message."""
        # Checked only after a failure so the happy path costs one round trip.
        try:
            missing = not await self._client.collection_exists(space)
        except Exception:
            missing = False
        if missing:
            return SpaceNotFoundError(space)
        return VectorStoreError(f"qdrant failed on vector space {space!r}: {exc}")


def _check_params(space: str, vectors: Any, dim: int, distance: str) -> None:
    if not isinstance(vectors, qm.VectorParams):
        raise VectorStoreError(f"collection {space!r} uses named vectors; recograph expects one unnamed vector")
    if (vectors.size, vectors.distance) != (dim, _DISTANCES[distance]):
        raise VectorStoreError(
            f"vector space {space!r} exists with dim={vectors.size}, distance={vectors.distance.value}; "
            f"asked for dim={dim}, distance={distance}"
        )


def _filter(tenant_id: str, must: Mapping[str, Any] | None = None, exclude_ids: Collection[str] = ()) -> qm.Filter:
    conditions: list[Any] = [qm.FieldCondition(key=TENANT_KEY, match=qm.MatchValue(value=tenant_id))]
    for key, value in (must or {}).items():
        match = qm.MatchAny(any=list(value)) if is_many(value) else qm.MatchValue(value=value)
        conditions.append(qm.FieldCondition(key=key, match=match))
    must_not: list[Any] | None = None
    if exclude_ids:
        must_not = [qm.HasIdCondition(has_id=[str(point_uuid(tenant_id, id)) for id in exclude_ids])]
    return qm.Filter(must=conditions, must_not=must_not)


def _floats(vector: Sequence[float]) -> list[float]:
    return np.asarray(vector, dtype=np.float32).tolist()
