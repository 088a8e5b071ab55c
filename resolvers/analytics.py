"""Analytics resolvers (admin keys): a scenario's series, catalogue and audience statistics, and on-demand rollups."""

from __future__ import annotations

from datetime import datetime

from domain.analytics.refresh import Progress
from domain.analytics.figures import AudienceStats, CatalogueStats, Granularity, Series
from resolvers.context import ADMINS, RequestContext


async def analytics_series(ctx: RequestContext, *, scenario_id: str, start: datetime, end: datetime,
                           granularity: Granularity) -> Series:
    """Return one of the caller's scenarios' counters per hour or day over [start, end)."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.analytics.series(tenant_id=tenant_id, scenario_id=str(scenario_id), start=start,
                                               end=end, granularity=granularity)


async def catalogue_stats(ctx: RequestContext, *, scenario_id: str, start: datetime, end: datetime, first: int,
                          min_impressions: int) -> CatalogueStats:
    """Return one of the caller's scenarios' catalogue coverage and top items and categories over [start, end)."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.analytics.catalogue(tenant_id=tenant_id, scenario_id=str(scenario_id), start=start,
                                                  end=end, first=first, min_impressions=min_impressions)


async def audience_stats(ctx: RequestContext, *, scenario_id: str, start: datetime, end: datetime) -> AudienceStats:
    """Return one of the caller's scenarios' audience statistics over [start, end)."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.analytics.audience(tenant_id=tenant_id, scenario_id=str(scenario_id), start=start,
                                                 end=end)


async def refresh_analytics(ctx: RequestContext, *, scenario_id: str | None, start: datetime | None,
                            end: datetime | None) -> Progress:
    """Roll up the caller's new data now (first marking [start, end) to recompute, when given)."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.analytics.refresh(tenant_id=tenant_id, scenario_id=str(scenario_id) if scenario_id
                                                else None, start=start, end=end)
