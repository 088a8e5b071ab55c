"""Export resolvers: an admin key's tenant's interactions, items and profiles, as exports to stream."""

from __future__ import annotations

from datetime import datetime

from domain.export import Export, ExportService
from resolvers.context import ADMINS, RequestContext


def _exports(ctx: RequestContext) -> ExportService:
    return ExportService(ctx.services.scenarios, ctx.services.profiles)


async def export_interactions(
    ctx: RequestContext, *, scenario_id: str | None, start: datetime | None, end: datetime | None
) -> Export:
    """Return the export of the caller's interactions in [start, end), of one scenario or of all."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await _exports(ctx).interactions(tenant_id=tenant_id, scenario_id=scenario_id, start=start, end=end)


async def export_items(ctx: RequestContext, *, scenario_id: str | None) -> Export:
    """Return the export of the caller's items, of one scenario or of all."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await _exports(ctx).items(tenant_id=tenant_id, scenario_id=scenario_id)


async def export_profiles(ctx: RequestContext) -> Export:
    """Return the export of the caller's user profiles."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await _exports(ctx).profiles(tenant_id=tenant_id)
