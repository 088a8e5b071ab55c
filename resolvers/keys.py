"""API key resolvers."""

from __future__ import annotations

from datetime import datetime

from domain.tenancy import NewKey, Scope
from models.documents import ApiKey
from resolvers.context import ADMINS, RequestContext


async def list_keys(ctx: RequestContext) -> list[ApiKey]:
    """Return the caller's tenant's live keys (prefixes only)."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.tenancy.list_keys(tenant_id=tenant_id)


async def create_key(
    ctx: RequestContext, *, scope: Scope, expires_at: datetime | None = None, require_user_token: bool = False
) -> NewKey:
    """Create a key; its secret is returned this once."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.tenancy.create_key(
        scope, tenant_id=tenant_id, expires_at=expires_at, require_user_token=require_user_token
    )


async def rotate_signing_secret(ctx: RequestContext) -> str:
    """Create or replace the tenant's user-signing secret; it is returned this once."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.tenancy.rotate_signing_secret(tenant_id=tenant_id)


async def revoke_key(ctx: RequestContext, *, id: str) -> bool:
    """Revoke a key of the caller's tenant."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.tenancy.revoke_key(id, tenant_id=tenant_id)


async def rotate_key(ctx: RequestContext, *, id: str) -> NewKey:
    """Replace a key by a new one of the same scope."""
    tenant_id = ctx.require(ADMINS).tenant_id
    return await ctx.services.tenancy.rotate_key(id, tenant_id=tenant_id)
