"""Interaction and privacy resolvers."""

from __future__ import annotations

from collections.abc import Sequence

from domain.events import IngestResult, InteractionData
from resolvers.context import ADMINS, ANYONE, RequestContext
from resolvers.items import check_batch


async def record_interactions(ctx: RequestContext, *, events: Sequence[InteractionData]) -> IngestResult:
    """Record a batch of interactions; each event succeeds or fails on its own."""
    tenant_id = ctx.require(ANYONE).tenant_id
    check_batch(len(events), ctx.limits.max_batch, field="events")
    # One event for another user refuses the whole batch: a key bound to a user never writes anyone else's profile.
    for user_id in {event.user_id for event in events}:
        ctx.require_user(user_id)
    return await ctx.services.events.record(events, tenant_id=tenant_id)


async def delete_user_data(ctx: RequestContext, *, user_id: str) -> int:
    """Erase a user's interactions, profile and cached state."""
    tenant_id = ctx.require(ADMINS).tenant_id
    ctx.require_user(user_id)
    return await ctx.services.privacy.delete_user_data(user_id, tenant_id=tenant_id)
