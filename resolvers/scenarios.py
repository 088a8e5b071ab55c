"""Scenario resolvers."""

from __future__ import annotations

from collections.abc import Mapping

from domain.scenarios.config import config_json_schema
from domain.scenarios.service import Page, ScenarioStats
from models.documents import Scenario, ScenarioConfigVersion
from resolvers.context import ADMINS, READERS, RequestContext


async def get_scenario(ctx: RequestContext, *, id: str) -> Scenario | None:
    """Return one of the caller's scenarios, or None."""
    ctx.require(READERS)
    return await ctx.loaders.scenarios.load(id)


async def list_scenarios(ctx: RequestContext, *, first: int | None, after: str | None) -> Page:
    """Return a page of the caller's scenarios."""
    tenant_id = ctx.require(READERS).tenant_id
    return await ctx.services.scenarios.list(tenant_id=tenant_id, first=first, after=after, max_first=ctx.limits.max_first)


async def create_scenario(ctx: RequestContext, *, name: str, template: str, config: Mapping | None) -> Scenario:
    """Create a scenario from a template."""
    caller = ctx.require(ADMINS)
    return await ctx.services.scenarios.create(tenant_id=caller.tenant_id, name=name, template=template, config=config,
                                               key_id=caller.key_id)


async def update_scenario(ctx: RequestContext, *, id: str, name: str | None, config: Mapping | None) -> Scenario:
    """Rename a scenario or change its config."""
    caller = ctx.require(ADMINS)
    return await ctx.services.scenarios.update(id, tenant_id=caller.tenant_id, name=name, config=config,
                                               key_id=caller.key_id)


async def roll_back_scenario_config(ctx: RequestContext, *, id: str, version: int) -> Scenario:
    """Make an earlier config version the scenario's current config again (as a new version)."""
    caller = ctx.require(ADMINS)
    return await ctx.services.scenarios.roll_back(id, version=version, tenant_id=caller.tenant_id,
                                                  key_id=caller.key_id)


async def scenario_config_versions(
    ctx: RequestContext, *, scenario_id: str, first: int | None
) -> list[ScenarioConfigVersion]:
    """Return a scenario's config history, newest first (admins only: it names the keys that made each change)."""
    ctx.require(ADMINS)
    scenario = await ctx.loaders.scenarios.load(scenario_id)
    return [] if scenario is None else await ctx.services.scenarios.versions(scenario, first=first)


async def delete_scenario(ctx: RequestContext, *, id: str) -> bool:
    """Delete a scenario and what belongs to it alone."""
    tenant_id = ctx.require(ADMINS).tenant_id
    deleted = await ctx.services.scenarios.delete(id, tenant_id=tenant_id)
    await ctx.services.catalogue.forget_everywhere(tenant_id=tenant_id)
    return deleted


async def scenario_config_schema(ctx: RequestContext) -> dict:
    """Return the JSON Schema scenario configs are validated against."""
    ctx.require(READERS)
    return config_json_schema()


async def scenario_stats(ctx: RequestContext, *, id: str) -> ScenarioStats:
    """Count what a scenario holds."""
    tenant_id = ctx.require(READERS).tenant_id
    return await ctx.services.scenarios.stats(id, tenant_id=tenant_id)
