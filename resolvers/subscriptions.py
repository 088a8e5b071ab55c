"""Subscription resolvers: async generators of domain objects, checked exactly like the matching queries."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from domain.errors import NotFound
from domain.experiments.report import ExperimentResults
from domain.jobs import JobStatus
from domain.jobwatch import TERMINAL
from domain.realtime.snapshots import MetricsSnapshot, MetricsWindow
from models.documents import Job
from resolvers.context import READERS, RequestContext
from resolvers.metrics import DEFAULT_WINDOW, checked_scenario, live_metrics

RESULTS_POLL_S = 2.0  # experimentResults: how often the results are read again


async def metrics(
    ctx: RequestContext, *, scenario_id: str, window: MetricsWindow | None
) -> AsyncIterator[MetricsSnapshot]:
    """Yield the scenario's snapshot at once, then a fresh one (at most one a second) while its counters move."""
    tenant_id = await checked_scenario(ctx, scenario_id=scenario_id)
    stream = live_metrics(ctx).stream(tenant_id=tenant_id, scenario_id=scenario_id, window=window or DEFAULT_WINDOW)
    try:
        async for snapshot in stream:
            yield snapshot
    finally:
        await stream.aclose()  # leave the feed now, not when the generator is collected


async def job_progress(ctx: RequestContext, *, id: str) -> AsyncIterator[Job]:
    """Yield one of the caller's jobs at once, then each change; stop after it ends (another tenant's: NOT_FOUND)."""
    tenant_id = ctx.require(READERS).tenant_id
    job = await ctx.services.jobs.get(id, tenant_id=tenant_id)
    if job is None:
        raise NotFound(f"no job {id}", field="id")
    yield job
    if JobStatus(job.status) in TERMINAL:
        return
    # Followers of one job share one poll in this process (JobWatch), whatever their number.
    updates = ctx.services.job_watch.follow(job, lambda: ctx.services.jobs.get(id, tenant_id=tenant_id),
                                            tenant_id=tenant_id)
    try:
        async for latest in updates:
            yield latest
    finally:
        await updates.aclose()


async def experiment_results(
    ctx: RequestContext, *, id: str, poll_s: float = RESULTS_POLL_S
) -> AsyncIterator[ExperimentResults]:
    """Yield an experiment's results at once (once there are any), then whenever its figures change, reading
    them every `poll_s`; stop after the frozen results of a stopped experiment (another tenant's: NOT_FOUND)."""
    tenant_id = ctx.require(READERS).tenant_id
    experiments = ctx.services.experiments
    last: dict | None = None
    while True:
        exp = await experiments.get_or_raise(str(id), tenant_id=tenant_id)
        results = await experiments.results_of(exp)
        figures = {**results.to_doc(), "computed_at": None} if results is not None else None
        if results is not None and figures != last:
            last = figures
            yield results
        if exp.status == "STOPPED":
            return
        await asyncio.sleep(poll_s)
