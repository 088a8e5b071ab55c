"""Recommendation resolvers: personal lists and similar items."""

from __future__ import annotations

from collections.abc import Mapping

from domain.errors import Forbidden
from domain.recommend.service import RecommendationPage
from resolvers.context import ANYONE, READERS, RequestContext


async def recommend(
    ctx: RequestContext, *, scenario_id: str, user_id: str, first: int | None, after: str | None,
    context: Mapping | None = None, exclude_seen: bool = True, debug: bool = False,
) -> RecommendationPage:
    """Return a page of a user's recommendations in a scenario."""
    principal = ctx.require(ANYONE)
    tenant_id = principal.tenant_id
    if debug and principal.scope not in READERS:
        # Source scores and failures describe the tenant's setup: not for a key shipped in a frontend.
        raise Forbidden("debug output needs an admin or gateway key", field="debug")
    ctx.require_user(user_id)
    return await ctx.services.recommendations.recommend(
        tenant_id=tenant_id, scenario_id=scenario_id, user_id=user_id, first=first, after=after, context=context,
        exclude_seen=exclude_seen, debug=debug, max_first=ctx.limits.max_first,
    )


async def similar_items(ctx: RequestContext, *, scenario_id: str, item_id: str, first: int | None) -> RecommendationPage:
    """Return items similar to an item."""
    tenant_id = ctx.require(ANYONE).tenant_id
    return await ctx.services.recommendations.similar(
        tenant_id=tenant_id, scenario_id=scenario_id, item_id=item_id, first=first, max_first=ctx.limits.max_first
    )
