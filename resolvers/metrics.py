"""Live metrics resolvers: a scenario's snapshot now (the `metrics` subscription streams the same)."""

from __future__ import annotations

from domain.errors import Unavailable
from domain.realtime.live import LiveMetrics
from domain.realtime.snapshots import MetricsSnapshot, MetricsWindow
from resolvers.context import READERS, RequestContext

DEFAULT_WINDOW = MetricsWindow.HOUR


async def checked_scenario(ctx: RequestContext, *, scenario_id: str) -> str:
    """Return the caller's tenant after checking the scenario is theirs (another tenant's is NOT_FOUND)."""
    tenant_id = ctx.require(READERS).tenant_id
    await ctx.services.scenarios.get_or_raise(scenario_id, tenant_id=tenant_id, field="scenarioId")
    return tenant_id


def live_metrics(ctx: RequestContext) -> LiveMetrics:
    """Return the live metrics service, or raise SERVICE_UNAVAILABLE when this process has none."""
    live = ctx.services.live
    if live is None or not live.available:
        raise Unavailable("live metrics need Redis; this process runs without it")
    return live


async def metrics_snapshot(ctx: RequestContext, *, scenario_id: str, window: MetricsWindow | None) -> MetricsSnapshot:
    """Return one of the caller's scenarios' live metrics over the window (default: the last hour)."""
    tenant_id = await checked_scenario(ctx, scenario_id=scenario_id)
    window = window or DEFAULT_WINDOW
    return await live_metrics(ctx).snapshot(tenant_id=tenant_id, scenario_id=scenario_id, window=window)
