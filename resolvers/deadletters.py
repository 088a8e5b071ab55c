"""Dead-letter resolvers: list and replay the caller's tenant's dead letters (admin)."""

from __future__ import annotations

from collections.abc import Sequence

from domain.errors import Unavailable
from domain.realtime.deadletters import DeadLetters
from domain.scenarios.service import Page
from resolvers.context import ADMINS, RequestContext


def _dead_letters(ctx: RequestContext) -> DeadLetters:
    if ctx.services.realtime is None:
        raise Unavailable("dead letters live in Redis, which this deployment does not use")
    return ctx.services.realtime.dead_letters


async def list_dead_letters(ctx: RequestContext, *, first: int | None, after: str | None) -> Page:
    """Return a page of the tenant's dead letters, oldest first."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await _dead_letters(ctx).page(tenant_id=tenant_id, first=first, after=after, max_first=ctx.limits.max_first)


async def replay_dead_letters(ctx: RequestContext, *, ids: Sequence[str] | None) -> int:
    """Send the tenant's dead letters (all when ids is None) through the consumer again; return how many."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await _dead_letters(ctx).replay(tenant_id=tenant_id, ids=None if ids is None else [str(i) for i in ids])
