"""Model registry resolvers: a scenario's model versions, promotion and rollback."""

from __future__ import annotations

from models.documents import ModelVersion
from resolvers.context import ADMINS, READERS, RequestContext


async def list_models(ctx: RequestContext, *, scenario_id: str, first: int | None) -> list[ModelVersion]:
    """Return a scenario's model versions, newest first (the caller already holds the scenario)."""
    tenant_id = ctx.require(READERS).tenant_id
    return await ctx.services.model_versions.list(scenario_id, tenant_id=tenant_id, first=first)


async def promote_model(ctx: RequestContext, *, id: str) -> ModelVersion:
    """Make a model version its kind's champion, served by every process."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.model_versions.promote(id, tenant_id=tenant_id)


async def rollback_model(ctx: RequestContext, *, scenario_id: str, kind: str) -> ModelVersion:
    """Make the champion the current one replaced the champion again."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.model_versions.rollback(scenario_id, tenant_id=tenant_id, kind=kind)
