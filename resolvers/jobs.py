"""Job resolvers: start a scenario's training, read a job."""

from __future__ import annotations

from models.documents import Job
from resolvers.context import ADMINS, READERS, RequestContext


async def train_scenario(ctx: RequestContext, *, scenario_id: str) -> Job:
    """Queue a training of the scenario, or return the one already queued or running."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.training.submit(scenario_id, tenant_id=tenant_id)


async def get_job(ctx: RequestContext, *, id: str) -> Job | None:
    """Return one of the caller's jobs, or None."""
    tenant_id = ctx.require(READERS).tenant_id
    return await ctx.services.jobs.get(id, tenant_id=tenant_id)
