"""System health resolver: the stores' state and the caller's tenant's consumer, jobs and serving models (admin)."""

from __future__ import annotations

from domain.errors import Unavailable
from domain.health import SystemHealth
from resolvers.context import ADMINS, RequestContext


async def system_health(ctx: RequestContext) -> SystemHealth:
    """Return each store's state and latency, and the tenant's own figures."""
    tenant_id = ctx.require(ADMINS).tenant_id
    if ctx.services.health is None:
        raise Unavailable("system health is not available in this process")
    return await ctx.services.health.check(tenant_id=tenant_id)
