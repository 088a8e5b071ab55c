"""The vector-store contract: value types, the Protocol, its error and the rules every implementation shares."""

from __future__ import annotations

import functools
import re
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

# Payload keys the store owns: the client's id and the tenant, kept beside the caller's payload.
ID_KEY = "_id"
TENANT_KEY = "tenant_id"
RESERVED_KEYS = (ID_KEY, TENANT_KEY)

# Keyword payload indexes every space gets besides the tenant one; recall filters on these.
INDEXED_KEYS = ("categories", "tags", "scenarios")

DISTANCES = ("cosine", "dot", "euclid")

# Spaces become directory names (embedded) and collection names (server), so keep them portable.
_SPACE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")

# Fixed so the same (tenant, id) maps to the same point id in every process and topology.
_POINT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "recograph:vectors")


class VectorStoreError(RuntimeError):
    """A vector-store operation failed; the backend's exception is the cause."""


class SpaceNotFoundError(VectorStoreError):
    """The embedding space was never created (call `ensure_space` first)."""

    def __init__(self, space: str) -> None:
        super().__init__(f"vector space {space!r} does not exist; call ensure_space({space!r}, dim=...) first")
        self.space = space


@dataclass(frozen=True)
class VectorPoint:
    """One vector to store under a client id, with a payload to filter on and return."""

    id: str
    vector: Sequence[float]
    payload: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VectorHit:
    """One search result: the client id, the backend's score and the stored payload."""

    id: str
    score: float
    payload: dict


@runtime_checkable
class VectorStore(Protocol):
    """Tenant-scoped vector storage, one collection (server) or shard (embedded) per embedding space.

    Scores follow Qdrant: cosine and dot are higher-is-closer, euclid is a distance (lower first).
    Cosine spaces store normalised vectors, so `get_vectors` returns unit vectors there.
    Returned payloads exclude the reserved keys `_id` and `tenant_id`.
    """

    async def ensure_space(self, space: str, *, dim: int, distance: str = "cosine") -> None:
        """Create the space and its payload indexes unless it exists; reject a different dim or distance."""
        ...

    async def upsert(self, space: str, points: Sequence[VectorPoint], *, tenant_id: str) -> int:
        """Insert or replace points (vector and whole payload); return how many were written."""
        ...

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
        """Return the tenant's nearest points, best first; `must` maps a key to a value or a list (any of).

        `with_payload=False` returns hits with empty payloads: cheaper on the request path, where only ids count.
        """
        ...

    async def get_vectors(self, space: str, ids: Collection[str], *, tenant_id: str) -> dict[str, list[float]]:
        """Return the stored vectors of the ids that exist, keyed by client id."""
        ...

    async def delete(self, space: str, ids: Collection[str], *, tenant_id: str) -> int:
        """Delete the tenant's points with these ids; return how many existed."""
        ...

    async def delete_where(self, space: str, *, tenant_id: str, key: str, value: Any) -> int:
        """Delete the tenant's points whose payload `key` matches `value`; return how many matched."""
        ...

    async def delete_tenant(self, space: str, *, tenant_id: str) -> int:
        """Delete every point of the tenant in the space; return how many there were."""
        ...

    async def count(self, space: str, *, tenant_id: str) -> int:
        """Return the exact number of the tenant's points in the space."""
        ...

    async def drop_space(self, space: str) -> bool:
        """Delete the space with every point in it (all tenants'); return whether it existed.

        For spaces one owner names alone (a model version's item vectors): a space shared by tenants loses points
        per tenant with `delete_tenant` instead.
        """
        ...

    async def ping(self) -> bool:
        """Return whether the backend answers; never raise."""
        ...

    async def close(self) -> None:
        """Flush and release the backend."""
        ...


def check_space(space: str) -> str:
    """Return the space name, or raise ValueError when it cannot name a directory and a collection."""
    if not isinstance(space, str) or not _SPACE_NAME.match(space):
        raise ValueError(f"invalid vector space name {space!r}: use 1-63 letters, digits, '_' or '-'")
    return space


def check_distance(distance: str) -> str:
    """Return the distance name, or raise ValueError for one the stores do not support."""
    if distance not in DISTANCES:
        raise ValueError(f"unsupported distance {distance!r}; expected one of {', '.join(DISTANCES)}")
    return distance


def check_tenant(tenant_id: str) -> str:
    """Return the tenant id, or raise ValueError when it is empty (an unscoped call is always a bug)."""
    if not isinstance(tenant_id, str) or not tenant_id:
        raise ValueError("tenant_id must be a non-empty string")
    return tenant_id


@functools.lru_cache(maxsize=262_144)  # request paths exclude the same history ids again and again
def point_uuid(tenant_id: str, id: str) -> uuid.UUID:
    """Map a client id to its Qdrant point id, unique per tenant."""
    # Length-prefix the tenant so ("a:b", "c") and ("a", "b:c") cannot collide.
    return uuid.uuid5(_POINT_NAMESPACE, f"{len(tenant_id)}:{tenant_id}:{id}")


def stored_payload(point: VectorPoint, tenant_id: str) -> dict[str, Any]:
    """Return the payload to store for a point: the caller's keys plus `_id` and `tenant_id`."""
    payload = dict(point.payload)
    for key, owned in ((ID_KEY, point.id), (TENANT_KEY, tenant_id)):
        if payload.get(key, owned) != owned:
            raise ValueError(f"payload key {key!r} is reserved; got {payload[key]!r} for point {point.id!r}")
    payload[ID_KEY] = point.id
    payload[TENANT_KEY] = tenant_id
    return payload


def client_payload(stored: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a stored payload without the keys the store added."""
    return {key: value for key, value in (stored or {}).items() if key not in RESERVED_KEYS}


def is_many(value: Any) -> bool:
    """Return whether a filter value is a collection to match any of (strings are single values)."""
    return isinstance(value, (list, tuple, set, frozenset))
