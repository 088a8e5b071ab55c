"""Erase one user's data on request: interactions, profile (its Redis hot state and MongoDB snapshot), cached state
and user vectors."""

from __future__ import annotations

import structlog

from domain.errors import BadInput
from domain.profiles import ProfileService
from domain.scenarios.service import ScenarioService
from models.cache import Cache, CacheUnavailable
from models.documents import Interaction
from models.vectors import VectorStore, VectorStoreError

log = structlog.get_logger()
USER_SPACES = ("users",)


class PrivacyService:
    """Carry out privacy requests for a tenant."""

    def __init__(
        self, cache: Cache, vectors: VectorStore | None, scenarios: ScenarioService, profiles: ProfileService
    ) -> None:
        self._cache = cache
        self._vectors = vectors
        self._scenarios = scenarios
        self._profiles = profiles

    async def delete_user_data(self, user_id: str, *, tenant_id: str) -> int:
        """Delete everything stored about a user; return how many records were removed."""
        if not user_id or not user_id.strip():
            raise BadInput("userId must not be blank", field="userId")
        removed = 0
        scenario_ids = await self._scenarios.ids(tenant_id=tenant_id)
        try:
            # Redis first: the profile hot state and its pending MongoDB snapshot go before the stored profile, so
            # the event consumer's next snapshot cannot write the profile back.
            removed += await self._cache.erase_user(user_id, scenario_ids, tenant_id=tenant_id)
        except CacheUnavailable as exc:
            log.warning("cache.unavailable", op="privacy.erase", error=str(exc))
        result = await Interaction.get_pymongo_collection().delete_many({"tenant_id": tenant_id, "user_id": user_id})
        removed += result.deleted_count + await self._profiles.delete(user_id, tenant_id=tenant_id)
        return removed + await self._erase_vectors(user_id, tenant_id=tenant_id)

    async def _erase_vectors(self, user_id: str, *, tenant_id: str) -> int:
        if self._vectors is None:
            return 0
        removed = 0
        for space in USER_SPACES:
            try:
                removed += await self._vectors.delete_where(space, tenant_id=tenant_id, key="user_id", value=user_id)
            except VectorStoreError:
                continue  # no such space yet: nothing was ever stored for users
        return removed
