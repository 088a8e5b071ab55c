"""Filters: drop candidates that must never be shown (seen, unavailable, against the rules, blocked).

Each filter returns a bool mask over the candidate index array; the pipeline keeps the items where every filter
says True. Filters read only the request, the catalogue view and their own params. Facts that need Python work
per item (expiry dates, blocked categories) are kept per catalogue in lazily filled columns, so a request pays for
items no earlier request has asked about and numpy indexing for the rest.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from typing import Any, ClassVar

import numpy as np

from domain.recommend.base import REGISTRY, CatalogueView, StageContext
from domain.recommend.columns import lazy_column
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
        if ctx.exclude_mask is not None:
            return ~ctx.exclude_mask[idx]
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
        attributes = ctx.catalogue.attributes

        def compute(rows: np.ndarray) -> list[float]:
            return [available_until(attributes[i]) for i in rows.tolist()]

        until = lazy_column(ctx.catalogue, "availability.until", np.float64).take(idx, compute)
        return ctx.catalogue.active[idx] & (until > ctx.now_ts)


def available_until(attributes: Mapping[str, Any]) -> float:
    """Return the epoch second an item stops being available by its attributes (inf: never; -inf: not now)."""
    if not attributes:
        return math.inf
    get = attributes.get
    if get("inStock") is False:
        return -math.inf
    stock = get("stock")
    if stock is not None and is_number(stock) and stock <= 0:
        return -math.inf
    expires_at = to_epoch(get("expiresAt"))
    return math.inf if expires_at is None else expires_at


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
        catalogue, mask = ctx.catalogue, _all(idx)
        ids = frozenset(ctx.params.get("itemIds") or ())
        if ids:
            item_ids = catalogue.item_ids
            mask &= _kept_test(idx, catalogue, ("blocklist.itemIds", ids), lambda i: item_ids[i] not in ids)
        blocked = frozenset(ctx.params.get("categories") or ())
        if blocked:
            categories = catalogue.categories
            mask &= _kept_test(idx, catalogue, ("blocklist.categories", blocked),
                               lambda i: blocked.isdisjoint(categories[i]))
        return mask


def _kept_test(idx: np.ndarray, catalogue: CatalogueView, key: Hashable, test: Callable[[int], bool]) -> np.ndarray:
    """Return test(item) per candidate, answered once per catalogue item and kept under key."""
    return lazy_column(catalogue, key, bool).take(idx, lambda rows: [test(i) for i in rows.tolist()])
