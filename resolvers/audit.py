"""Audit log resolvers."""

from __future__ import annotations

from domain.scenarios.service import Page
from resolvers.context import ADMINS, RequestContext


async def audit_log(ctx: RequestContext, *, first: int | None, after: str | None) -> Page:
    """Return a page of the caller's tenant's audit entries, newest first."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.audit.page(tenant_id=tenant_id, first=first, after=after, max_first=ctx.limits.max_first)
