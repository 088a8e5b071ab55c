"""Non-personal sources: popular (time-decayed), trending (rising in a sliding window) and fresh (new items)."""

from __future__ import annotations

import zlib

import numpy as np

from domain.recommend.base import REGISTRY, Candidates
from domain.recommend.recall.context import RecallContext, from_ranked, top_candidates

HOUR = 3600.0
POOL = 3  # context fit may reorder: read this many times the limit before cutting
EXPLORATION = 0.5  # share of a fresh item's score drawn per user, so new items spread over the audience


def fit_context(ctx: RecallContext, found: Candidates, limit: int) -> Candidates:
    """Return the candidates re-scored by how well they fit the request context, best first."""
    if not ctx.request.context or len(found) == 0:
        return Candidates(found.idx[:limit], found.scores[:limit])
    scores = found.scores * ctx.index.context_fit(found.idx, ctx.request.context)
    order = np.lexsort((found.idx, -scores))[:limit]
    return Candidates(found.idx[order], scores[order])


@REGISTRY.recall
class PopularSource:
    """The most popular items (decayed counts from the model, in event time)."""

    name = "popular"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        order = ctx.index.popular_order
        scores = ctx.index.popularity[order]
        found = from_ranked(order[scores > 0], scores[scores > 0], ctx.excluded, limit * POOL)
        return fit_context(ctx, found, limit)


@REGISTRY.recall
class TrendingSource:
    """Items rising in the trending window over their recent baseline."""

    name = "trending"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        if ctx.model is None or ctx.model.trending is None:
            return Candidates.empty()
        found = ctx.top(ctx.model.trending, limit * POOL)
        return fit_context(ctx, found, limit)


@REGISTRY.recall
class FreshSource:
    """Items published within `maxAgeHours` of the request time, newest first, with a per-user exploration draw."""

    name = "fresh"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        now = ctx.request.now.timestamp()
        max_age = float(ctx.params.get("maxAgeHours") or 72.0) * HOUR
        times = ctx.index.newest_times  # descending
        start = np.searchsorted(-times, -now, side="left")  # skip items scheduled in the future
        stop = np.searchsorted(-times, -(now - max_age), side="right")
        idx = ctx.index.newest_order[start:stop]
        idx = idx[~ctx.excluded[idx]]
        if len(idx) == 0:
            return Candidates.empty()
        half_life = float(ctx.config.get("freshness", {}).get("halfLifeHours", 48.0)) * HOUR
        freshness = np.exp2(-(now - ctx.catalogue.published_at[idx]) / half_life)
        scores = freshness * (1.0 - EXPLORATION + EXPLORATION * _draw(ctx.request.user_id, idx))
        found = top_candidates(np.bincount(idx, weights=scores, minlength=len(ctx.catalogue)), limit * POOL)
        return fit_context(ctx, found, limit)


def _draw(user_id: str, idx: np.ndarray) -> np.ndarray:
    """Return a uniform number in [0, 1) per (user, item), stable across requests."""
    seed = np.uint64(zlib.crc32(user_id.encode()) * 0xBF58476D1CE4E5B9 % (1 << 64))
    x = idx.astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15) ^ seed
    x ^= x >> np.uint64(31)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(29)
    return (x >> np.uint64(11)).astype(np.float64) / float(1 << 53)
