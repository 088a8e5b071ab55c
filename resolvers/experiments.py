"""Experiment resolvers: admin keys write, admin or gateway keys read; public keys do neither."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from domain.experiments.report import ExperimentResults
from domain.experiments.service import ExperimentPlan
from domain.scenarios.service import Page
from models.documents import Experiment
from resolvers.context import ADMINS, READERS, RequestContext


async def get_experiment(ctx: RequestContext, *, id: str) -> Experiment | None:
    """Return one of the caller's experiments, or None."""
    tenant_id = ctx.require(READERS).tenant_id
    return await ctx.services.experiments.get(str(id), tenant_id=tenant_id)


async def served_experiment(ctx: RequestContext, *, id: str | None) -> Experiment | None:
    """Return the experiment a recommendation list was served under (None outside any, or since deleted)."""
    tenant_id = ctx.require(READERS).tenant_id
    return await ctx.services.experiments.get(id, tenant_id=tenant_id) if id else None


async def list_experiments(
    ctx: RequestContext, *, scenario_id: str | None, status: str | None, first: int | None, after: str | None
) -> Page:
    """Return a page of the caller's experiments, newest first."""
    tenant_id = ctx.require(READERS).tenant_id
    return await ctx.services.experiments.list(
        tenant_id=tenant_id, scenario_id=str(scenario_id) if scenario_id is not None else None, status=status,
        first=first, after=after, max_first=ctx.limits.max_first,
    )


async def create_experiment(ctx: RequestContext, *, input: Mapping[str, Any]) -> Experiment:
    """Create a DRAFT experiment."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.experiments.create(tenant_id=tenant_id, input=input)


async def update_experiment(ctx: RequestContext, *, id: str, input: Mapping[str, Any]) -> Experiment:
    """Change a DRAFT experiment's design."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.experiments.update(str(id), tenant_id=tenant_id, input=input)


async def start_experiment(ctx: RequestContext, *, id: str) -> Experiment:
    """Start a DRAFT or resume a PAUSED experiment."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.experiments.start(str(id), tenant_id=tenant_id)


async def pause_experiment(ctx: RequestContext, *, id: str) -> Experiment:
    """Pause a RUNNING experiment."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.experiments.pause(str(id), tenant_id=tenant_id)


async def stop_experiment(ctx: RequestContext, *, id: str, ship: str | None) -> Experiment:
    """Stop an experiment, freeze its results, and optionally ship a variant's config to the scenario."""
    caller = ctx.require(ADMINS)
    return await ctx.services.experiments.stop(str(id), tenant_id=caller.tenant_id, ship=ship, key_id=caller.key_id)


async def delete_experiment(ctx: RequestContext, *, id: str) -> Experiment:
    """Delete an experiment and its outcomes."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.experiments.delete(str(id), tenant_id=tenant_id)


async def experiment_results(ctx: RequestContext, *, experiment: Experiment) -> ExperimentResults | None:
    """Return the results of an experiment the caller has read."""
    ctx.require(READERS)
    return await ctx.services.experiments.results_of(experiment)


async def experiment_assignment(ctx: RequestContext, *, experiment_id: str, user_id: str) -> str | None:
    """Return the variant a user has or would get (reads only)."""
    tenant_id = ctx.require(READERS).tenant_id
    return await ctx.services.experiments.assignment(str(experiment_id), str(user_id), tenant_id=tenant_id)


async def experiment_plan(
    ctx: RequestContext, *, metric: str, baseline: float, baseline_sd: float | None, mde: float,
    alpha: float | None, power: float | None, variants: int | None, scenario_id: str | None,
) -> ExperimentPlan:
    """Return the users an experiment needs (and the days they take when a scenario is named); a null option
    takes its default."""
    tenant_id = ctx.require(READERS).tenant_id
    options = {k: v for k, v in (("alpha", alpha), ("power", power), ("variants", variants)) if v is not None}
    return await ctx.services.experiments.plan(
        tenant_id=tenant_id, metric=metric, baseline=baseline, baseline_sd=baseline_sd, mde=mde,
        scenario_id=str(scenario_id) if scenario_id is not None else None, **options,
    )
