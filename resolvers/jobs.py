"""Job resolvers: start a job of any kind, list, read and cancel jobs."""

from __future__ import annotations

from domain.scenarios.service import Page
from models.documents import Job
from resolvers.context import ADMINS, READERS, RequestContext


async def train_scenario(ctx: RequestContext, *, scenario_id: str) -> Job:
    """Queue a training of the scenario, or return the one already queued or running."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.training.submit(scenario_id, tenant_id=tenant_id)


async def run_job(ctx: RequestContext, *, scenario_id: str, kind: str) -> Job:
    """Queue a job of `kind` for the scenario, or return the one of that kind already queued or running."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.background.submit(kind, scenario_id, tenant_id=tenant_id)


async def cancel_job(ctx: RequestContext, *, id: str) -> Job:
    """Cancel one of the caller's QUEUED or RUNNING jobs."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.background.cancel(id, tenant_id=tenant_id)


async def get_job(ctx: RequestContext, *, id: str) -> Job | None:
    """Return one of the caller's jobs, or None."""
    tenant_id = ctx.require(READERS).tenant_id
    return await ctx.services.jobs.get(id, tenant_id=tenant_id)


async def list_jobs(
    ctx: RequestContext, *, scenario_id: str | None, status: str | None, kind: str | None, first: int | None,
    after: str | None,
) -> Page:
    """Return a page of the caller's jobs, newest first; NOT_FOUND for a scenario that is not theirs."""
    tenant_id = ctx.require(READERS).tenant_id
    if scenario_id is not None:
        await ctx.services.scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
    return await ctx.services.jobs.page(
        tenant_id=tenant_id, first=first, after=after, max_first=ctx.limits.max_first, status=status, kind=kind,
        scenario_id=scenario_id,
    )
