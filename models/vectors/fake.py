"""An in-memory VectorStore (numpy brute force) with the same semantics as the Qdrant ones, for unit tests."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from models.vectors.protocol import (
    SpaceNotFoundError,
    VectorHit,
    VectorPoint,
    VectorStoreError,
    check_distance,
    check_space,
    check_tenant,
    client_payload,
    is_many,
    stored_payload,
)


@dataclass
class _Space:
    dim: int
    distance: str
    # (tenant_id, client id) -> (vector as stored, payload as stored)
    points: dict[tuple[str, str], tuple[np.ndarray, dict[str, Any]]] = field(default_factory=dict)


class InMemoryVectorStore:
    """Keep every space in a dict and score by brute force."""

    def __init__(self) -> None:
        self._spaces: dict[str, _Space] = {}

    async def ensure_space(self, space: str, *, dim: int, distance: str = "cosine") -> None:
        """Create the space unless it exists; reject a different dim or distance."""
        check_space(space)
        check_distance(distance)
        existing = self._spaces.get(space)
        if existing is None:
            self._spaces[space] = _Space(dim, distance)
        elif (existing.dim, existing.distance) != (dim, distance):
            raise VectorStoreError(
                f"vector space {space!r} exists with dim={existing.dim}, distance={existing.distance}; "
                f"asked for dim={dim}, distance={distance}"
            )

    async def upsert(self, space: str, points: Sequence[VectorPoint], *, tenant_id: str) -> int:
        """Insert or replace points; return how many were written."""
        target = self._space(space)
        check_tenant(tenant_id)
        rows = [(p.id, self._prepare(target, p.vector), stored_payload(p, tenant_id)) for p in points]
        for id, vector, payload in rows:
            target.points[(tenant_id, id)] = (vector, payload)
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
        target = self._space(space)
        check_tenant(tenant_id)
        if limit < 1:
            return []
        query = self._prepare(target, vector)
        excluded = set(exclude_ids)
        rows = [
            (id, stored, payload)
            for (tenant, id), (stored, payload) in target.points.items()
            if tenant == tenant_id and id not in excluded and _matches(payload, must or {})
        ]
        if not rows:
            return []
        scores = _scores(target.distance, np.stack([stored for _, stored, _ in rows]), query)
        order = np.argsort(scores if target.distance == "euclid" else -scores, kind="stable")[:limit]
        return [VectorHit(rows[i][0], float(scores[i]), client_payload(rows[i][2]) if with_payload else {}) for i in order]

    async def get_vectors(self, space: str, ids: Collection[str], *, tenant_id: str) -> dict[str, list[float]]:
        """Return the stored vectors of the ids that exist."""
        target = self._space(space)
        check_tenant(tenant_id)
        found = {id: target.points.get((tenant_id, id)) for id in ids}
        return {id: row[0].tolist() for id, row in found.items() if row is not None}

    async def delete(self, space: str, ids: Collection[str], *, tenant_id: str) -> int:
        """Delete the tenant's points with these ids; return how many existed."""
        target = self._space(space)
        check_tenant(tenant_id)
        removed = [target.points.pop((tenant_id, id), None) for id in set(ids)]
        return sum(row is not None for row in removed)

    async def delete_where(self, space: str, *, tenant_id: str, key: str, value: Any) -> int:
        """Delete the tenant's points whose payload `key` matches `value`."""
        return self._delete_matching(space, tenant_id, {key: value})

    async def delete_tenant(self, space: str, *, tenant_id: str) -> int:
        """Delete every point of the tenant in the space."""
        return self._delete_matching(space, tenant_id, {})

    async def count(self, space: str, *, tenant_id: str) -> int:
        """Return the number of the tenant's points in the space."""
        target = self._space(space)
        check_tenant(tenant_id)
        return sum(tenant == tenant_id for tenant, _ in target.points)

    async def drop_space(self, space: str) -> bool:
        """Delete the space with its points; return whether it existed."""
        return self._spaces.pop(check_space(space), None) is not None

    async def ping(self) -> bool:
        """Return True: memory always answers."""
        return True

    async def close(self) -> None:
        """Release nothing: the fake holds only memory, which tests may still inspect."""

    def _space(self, space: str) -> _Space:
        found = self._spaces.get(check_space(space))
        if found is None:
            raise SpaceNotFoundError(space)
        return found

    def _delete_matching(self, space: str, tenant_id: str, must: Mapping[str, Any]) -> int:
        target = self._space(space)
        check_tenant(tenant_id)
        doomed = [key for key, (_, payload) in target.points.items() if key[0] == tenant_id and _matches(payload, must)]
        for key in doomed:
            del target.points[key]
        return len(doomed)

    @staticmethod
    def _prepare(target: _Space, vector: Sequence[float]) -> np.ndarray:
        array = np.asarray(vector, dtype=np.float32)
        if array.shape != (target.dim,):
            raise VectorStoreError(f"vector dimension error: expected dim {target.dim}, got shape {array.shape}")
        if target.distance != "cosine":
            return array
        # Qdrant normalises cosine vectors on the way in; mirror it so get_vectors agrees.
        norm = float(np.linalg.norm(array))
        return array / norm if norm > 0 else array


def _scores(distance: str, matrix: np.ndarray, query: np.ndarray) -> np.ndarray:
    if distance == "euclid":
        return np.linalg.norm(matrix - query, axis=1)
    return matrix @ query


def _matches(payload: Mapping[str, Any], must: Mapping[str, Any]) -> bool:
    for key, wanted in must.items():
        if key not in payload:
            return False
        stored = payload[key]
        have = set(stored) if is_many(stored) else {stored}
        want = set(wanted) if is_many(wanted) else {wanted}
        if not have & want:
            return False
    return True
