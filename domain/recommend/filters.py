"""Filters: drop candidates that must never be shown (seen, unavailable, against the rules, blocked).

Each filter returns a bool mask over the candidate index array; the pipeline keeps the items where every filter
says True. Filters read only the request, the catalogue view and their own params, so they stay within a few
hundred microseconds for a couple of thousand candidates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from domain.recommend.base import REGISTRY, StageContext
from domain.recommend.rule_values import is_number, to_epoch
from domain.recommend.rules import RuleScope, compile_rule


def _all(idx: np.ndarray) -> np.ndarray:
    return np.ones(len(idx), dtype=bool)


@REGISTRY.filter
class SeenFilter:
    """Drop the items the request excludes (seen recently, already served on earlier pages)."""

    name: ClassVar[str] = "seen"

    def keep(self, idx: np.ndarray, ctx: StageContext) -> np.ndarray:
        """Return False for candidates whose id is in request.exclude."""
        exclude = ctx.request.exclude
        if not exclude:
            return _all(idx)
        # Walk whichever side is shorter: a heavy user's seen set can be far larger than the candidate list.
        if len(exclude) > len(idx):
            ids = ctx.catalogue.item_ids
            return np.fromiter((ids[i] not in exclude for i in idx.tolist()), dtype=bool, count=len(idx))
        return ~np.isin(idx, ctx.catalogue.indexes(exclude))


@REGISTRY.filter
class AvailabilityFilter:
    """Drop inactive, expired and out-of-stock items.

    Unavailable: status not ACTIVE; `attributes.expiresAt` (ISO-8601 text or epoch seconds/milliseconds) at or
    before the request time; `attributes.inStock` false; `attributes.stock` a number <= 0. An expiresAt that is
    not a time is ignored rather than hiding the item.
    """

    name: ClassVar[str] = "availability"

    def keep(self, idx: np.ndarray, ctx: StageContext) -> np.ndarray:
        """Return True for active, unexpired, in-stock candidates."""
        attributes, now = ctx.catalogue.attributes, ctx.now_ts
        in_stock = np.fromiter(
            (available(attributes[i], now) for i in idx.tolist()), dtype=bool, count=len(idx)
        )
        return ctx.catalogue.active[idx] & in_stock


def available(attributes: Mapping[str, Any], now: float) -> bool:
    """Return whether an item's attributes allow showing it at time now (epoch seconds)."""
    if not attributes:
        return True
    get = attributes.get
    if get("inStock") is False:
        return False
    stock = get("stock")
    if stock is not None and is_number(stock) and stock <= 0:
        return False
    expires = get("expiresAt")
    if expires is None:
        return True
    expires_at = to_epoch(expires)
    return expires_at is None or expires_at > now


@REGISTRY.filter
class RulesFilter:
    """Keep the items for which every business rule in `params.expressions` holds (see domain.recommend.rules)."""

    name: ClassVar[str] = "rules"

    def keep(self, idx: np.ndarray, ctx: StageContext) -> np.ndarray:
        """Return the AND of every rule's mask."""
        mask = _all(idx)
        # One scope for all rules, so a field used by several rules is gathered once.
        scope = RuleScope(idx, ctx.catalogue, ctx.request.context, ctx.now_ts)
        for text in ctx.params.get("expressions", ()):
            mask &= compile_rule(text).mask(scope)
        return mask


@REGISTRY.filter
class BlocklistFilter:
    """Drop the item ids and categories the scenario blocks (`params.itemIds`, `params.categories`)."""

    name: ClassVar[str] = "blocklist"

    def keep(self, idx: np.ndarray, ctx: StageContext) -> np.ndarray:
        """Return False for blocked ids and for items in a blocked category."""
        mask = _all(idx)
        item_ids = ctx.params.get("itemIds") or ()
        if item_ids:
            mask &= ~np.isin(idx, ctx.catalogue.indexes(item_ids))
        blocked = frozenset(ctx.params.get("categories") or ())
        if blocked:
            categories = ctx.catalogue.categories
            mask &= np.fromiter(
                (blocked.isdisjoint(categories[i]) for i in idx.tolist()), dtype=bool, count=len(idx)
            )
        return mask
