"""A vector store behind a circuit breaker: the Protocol's calls pass it, and reads are bounded in time.

A Qdrant server that hangs would hold each vector recall for the client's whole timeout (and the server store's
error path asks the server once more). Here a read that takes longer than `read_timeout_s` fails and opens the
breaker; from then on vector calls raise `VectorStoreUnavailable` at once, so recall drops the vector source and
answers from the others at normal latency, until a background ping finds the store back.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

import httpx

from models.breaker import DEFAULT_COOLDOWN_S, DEFAULT_FAILURES, CircuitBreaker
from models.vectors.protocol import VectorHit, VectorPoint, VectorStore, VectorStoreError

T = TypeVar("T")

STORE = "vectors"
DEFAULT_READ_TIMEOUT_S = 2.0
_TRANSPORT = (httpx.TransportError, OSError, TimeoutError)
QDRANT_ERRORS = "qdrant_client.http.exceptions"  # only the server store loads qdrant-client (1-2 s to import)


class VectorStoreUnavailable(VectorStoreError):
    """The vector store did not answer lately: the call was not made (the breaker is open)."""


def is_unavailable(exc: BaseException) -> bool:
    """Return whether a failure means the store did not answer (a missing space or a bad argument means it did)."""
    # Without qdrant-client loaded (an embedded store), none of its errors can have been raised.
    qdrant = sys.modules.get(QDRANT_ERRORS)
    transport = _TRANSPORT if qdrant is None else (*_TRANSPORT, qdrant.ResponseHandlingException)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, VectorStoreUnavailable):
            return False
        if isinstance(current, transport):
            return True
        if qdrant is not None and isinstance(current, qdrant.UnexpectedResponse) and (current.status_code or 500) >= 500:
            return True
        current = current.__cause__ or current.__context__
    return False


class GuardedVectorStore:
    """Implements VectorStore by passing each call of `store` through `breaker`."""

    def __init__(self, store: VectorStore, breaker: CircuitBreaker, *, read_timeout_s: float) -> None:
        self.store = store
        self.breaker = breaker
        self._read_timeout_s = read_timeout_s

    async def ensure_space(self, space: str, *, dim: int, distance: str = "cosine") -> None:
        """Create the space unless it exists (see VectorStore)."""
        await self.breaker.call(lambda: self.store.ensure_space(space, dim=dim, distance=distance))

    async def upsert(self, space: str, points: Sequence[VectorPoint], *, tenant_id: str) -> int:
        """Insert or replace points (see VectorStore)."""
        return await self.breaker.call(lambda: self.store.upsert(space, points, tenant_id=tenant_id))

    async def search(
        self, space: str, vector: Sequence[float], *, tenant_id: str, limit: int, must: Mapping[str, Any] | None = None,
        exclude_ids: Collection[str] = (), with_payload: bool = True,
    ) -> list[VectorHit]:
        """Return the tenant's nearest points (see VectorStore), within the read timeout."""
        return await self._read(lambda: self.store.search(
            space, vector, tenant_id=tenant_id, limit=limit, must=must, exclude_ids=exclude_ids,
            with_payload=with_payload))

    async def get_vectors(self, space: str, ids: Collection[str], *, tenant_id: str) -> dict[str, list[float]]:
        """Return stored vectors (see VectorStore), within the read timeout."""
        return await self._read(lambda: self.store.get_vectors(space, ids, tenant_id=tenant_id))

    async def delete(self, space: str, ids: Collection[str], *, tenant_id: str) -> int:
        """Delete the tenant's points with these ids (see VectorStore)."""
        return await self.breaker.call(lambda: self.store.delete(space, ids, tenant_id=tenant_id))

    async def delete_where(self, space: str, *, tenant_id: str, key: str, value: Any) -> int:
        """Delete the tenant's points whose payload key matches (see VectorStore)."""
        return await self.breaker.call(
            lambda: self.store.delete_where(space, tenant_id=tenant_id, key=key, value=value))

    async def delete_tenant(self, space: str, *, tenant_id: str) -> int:
        """Delete every point of the tenant in the space (see VectorStore)."""
        return await self.breaker.call(lambda: self.store.delete_tenant(space, tenant_id=tenant_id))

    async def count(self, space: str, *, tenant_id: str) -> int:
        """Return the tenant's number of points (see VectorStore), within the read timeout."""
        return await self._read(lambda: self.store.count(space, tenant_id=tenant_id))

    async def drop_space(self, space: str) -> bool:
        """Delete the space with its points (see VectorStore)."""
        return await self.breaker.call(lambda: self.store.drop_space(space))

    async def ping(self) -> bool:
        """Return whether the store answers: False at once while the breaker is open."""
        try:
            return await self.breaker.call(self._ping)
        except VectorStoreError:
            return False

    async def close(self) -> None:
        """Stop the probe, then flush and release the backend."""
        await self.breaker.close()
        await self.store.close()

    async def _ping(self) -> bool:
        if not await self.store.ping():
            raise VectorStoreError("the vector store does not answer a ping") from ConnectionError("ping failed")
        return True

    async def _read(self, read: Callable[[], Awaitable[T]]) -> T:
        async def bounded() -> T:
            return await asyncio.wait_for(read(), self._read_timeout_s)

        return await self.breaker.call(bounded)

    def __getattr__(self, name: str) -> Any:
        # Backend specifics beside the Protocol (the edge store's root, its optimiser) stay reachable.
        if name == "store":  # not set yet (a copy being built): no recursion
            raise AttributeError(name)
        return getattr(self.store, name)


def guard(
    store: VectorStore, *, failures: int = DEFAULT_FAILURES, cooldown_s: float = DEFAULT_COOLDOWN_S,
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
) -> GuardedVectorStore:
    """Wrap `store` in a breaker named "vectors" whose probe is the store's own ping."""
    breaker = CircuitBreaker(
        STORE, open_error=VectorStoreUnavailable, is_failure=is_unavailable, failures=failures, cooldown_s=cooldown_s,
        slow_s=read_timeout_s, probe=store.ping, probe_timeout_s=read_timeout_s,
    )
    return GuardedVectorStore(store, breaker, read_timeout_s=read_timeout_s)
