"""1: model versions stored before the model registry get the registry's statuses (`active` -> READY + champion)."""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from domain.learning.versions import upgrade_statuses


async def apply(db: AsyncDatabase) -> int:
    """Rewrite the legacy statuses (idempotent: versions already in the new shape match nothing)."""
    return await upgrade_statuses()
