"""Item resolvers."""

from __future__ import annotations

from collections.abc import Sequence

from domain.catalogue import ItemData, ItemFilter, UpsertResult
from domain.errors import BadInput
from domain.scenarios.service import Page
from models.documents import Item
from resolvers.context import ADMINS, ANYONE, RequestContext


async def get_item(ctx: RequestContext, *, id: str) -> Item | None:
    """Return one of the caller's items, or None."""
    ctx.require(ANYONE)
    return await ctx.loaders.items.load(id)


async def get_items(ctx: RequestContext, *, ids: Sequence[str]) -> list[Item | None]:
    """Return the caller's items in the order of ids, None for missing ones (one batch)."""
    ctx.require(ANYONE)
    return list(await ctx.loaders.items.load_many(list(ids)))


async def list_items(
    ctx: RequestContext, *, scenario_id: str, filters: ItemFilter | None, first: int | None, after: str | None
) -> Page:
    """Return a page of a scenario's items."""
    tenant_id = ctx.require(ANYONE).tenant_id
    return await ctx.services.catalogue.list(
        tenant_id=tenant_id, scenario_id=scenario_id, filters=filters, first=first, after=after,
        max_first=ctx.limits.max_first,
    )


async def upsert_items(ctx: RequestContext, *, scenario_id: str, items: Sequence[ItemData]) -> UpsertResult:
    """Insert or update items under a scenario."""
    tenant_id = ctx.require(ADMINS).tenant_id
    check_batch(len(items), ctx.limits.max_batch, field="items")
    return await ctx.services.catalogue.upsert(items, tenant_id=tenant_id, scenario_id=scenario_id)


async def delete_items(ctx: RequestContext, *, scenario_id: str, ids: Sequence[str]) -> int:
    """Remove items from a scenario."""
    tenant_id = ctx.require(ADMINS).tenant_id
    check_batch(len(ids), ctx.limits.max_batch, field="ids")
    return await ctx.services.catalogue.delete(ids, tenant_id=tenant_id, scenario_id=scenario_id)


def check_batch(size: int, maximum: int, *, field: str) -> None:
    """Refuse an oversized batch as a whole (never truncate)."""
    if size > maximum:
        raise BadInput(f"at most {maximum} per call, got {size}", field=field)
