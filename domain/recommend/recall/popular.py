"""Non-personal sources: popular (time-decayed), trending (rising in a sliding window) and fresh (new items).

Popular and trending blend the trained counts with the consumer's live window (domain.realtime.popularity) when the
engine has a live snapshot; both read a `PopularityView` computed once per snapshot, so a request walks a prefix of
a ready order instead of sorting the catalogue.

- popular: the trained popularity is the prior of each item's share of the live hour. An item's score is its
  posterior share, (live weight + LIVE_PRIOR x trained share) / (live total + LIVE_PRIOR): a quiet scenario (a
  historical import, a small tenant) keeps its trained order and a busy one follows its last hour, with no
  weight to tune per traffic level (a normalised weighted sum would let one click in a quiet hour top the list).
  Items without live events keep their trained order, scaled, so only the listed live items (at most
  domain.realtime.popularity.TOP) are re-sorted and merged in.
- trending: the live rise (current hour over the hour before) plus the trained rise, which fades by half each
  trending window that the live window's end (event time) lies past the model's newest event.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence

import numpy as np

from domain.learning.model import ScenarioModel
from domain.realtime.popularity import LiveLists
from domain.recommend.base import REGISTRY, Candidates
from domain.recommend.recall.context import PopularityView, RecallContext, from_ranked, top_candidates
from domain.recommend.recall.index import CatalogueIndex

HOUR = 3600.0
POOL = 3  # context fit may reorder: read this many times the limit before cutting
EXPLORATION = 0.5  # share of a fresh item's score drawn per user, so new items spread over the audience
LIVE_PRIOR = 200.0  # weighted live events the trained shares are worth in the live hour
LIVE_DEPTH = 10_000  # a live view keeps this many trained items (a request reads a few hundred past its exclusions)


def trained_view(index: CatalogueIndex, model: ScenarioModel | None) -> PopularityView:
    """Return the popular and trending orders of the trained counts alone."""
    order = index.popular_order
    scores = index.popularity[order]
    popular = Candidates(order[scores > 0].astype(np.int64), scores[scores > 0].astype(np.float32))
    if model is None or model.trending is None:
        return PopularityView(popular, Candidates.empty())
    rise = index.model_scores(model.trending)
    idx = np.flatnonzero((rise > 0) & np.asarray(index.catalogue.active, dtype=bool))
    idx = idx[np.lexsort((idx, -rise[idx]))]
    return PopularityView(popular, Candidates(idx.astype(np.int64), rise[idx].astype(np.float32)))


def live_view(base: PopularityView, index: CatalogueIndex, model: ScenarioModel | None, lists: LiveLists | None,
              *, window_hours: float) -> PopularityView:
    """Return the trained orders (`base`) blended with a live snapshot; `base` itself without live counts."""
    if lists is None or not (lists.popular or lists.trending):
        return base
    idx, weight = _live_items(index, lists.popular)
    trained = float(base.popular.scores.sum())
    share = index.popularity[idx] / trained if trained > 0 else np.zeros(len(idx))
    mass = lists.total + LIVE_PRIOR
    popular = _merge(base.popular, idx, (weight + LIVE_PRIOR * share) / mass,
                     LIVE_PRIOR / mass / trained if trained > 0 else 0.0)
    fade = _fade(model, lists, window_hours)
    idx, rise = _live_items(index, lists.trending)
    trending = _merge(base.trending, idx, rise + fade * _trained_rise(index, model, idx), fade)
    return PopularityView(popular, trending, live=True)


def _live_items(index: CatalogueIndex, scored: Sequence[tuple[str, float]]) -> tuple[np.ndarray, np.ndarray]:
    """Return the active catalogue indexes of live (item id, score) pairs, with their scores."""
    lookup = index.catalogue.index
    idx = np.fromiter((lookup.get(item, -1) for item, _ in scored), dtype=np.int64, count=len(scored))
    scores = np.fromiter((s for _, s in scored), dtype=np.float64, count=len(scored))
    keep = (idx >= 0) & (scores > 0)
    keep[keep] = np.asarray(index.catalogue.active, dtype=bool)[idx[keep]]
    return idx[keep], scores[keep]


def _trained_rise(index: CatalogueIndex, model: ScenarioModel | None, idx: np.ndarray) -> np.ndarray:
    """Return the trained trending score of catalogue items idx (0 for items the model does not know)."""
    if model is None or model.trending is None or len(idx) == 0:
        return np.zeros(len(idx))
    at = idx if index.to_model is None else index.to_model[idx]
    known = at >= 0
    return np.where(known, np.asarray(model.trending, dtype=np.float64)[np.where(known, at, 0)], 0.0)


def _fade(model: ScenarioModel | None, lists: LiveLists, window_hours: float) -> float:
    if model is None or not lists.newest_ms:
        return 1.0
    past = lists.newest_ms / 1000.0 - model.newest_event.timestamp()
    return float(2.0 ** (-max(past, 0.0) / (window_hours * HOUR)))


def _merge(base: Candidates, idx: np.ndarray, scores: np.ndarray, scale: float) -> Candidates:
    """Return the first LIVE_DEPTH of base (best first) scaled by `scale`, with the items idx re-scored and merged
    in at their place (a sort of the few live items, not of the catalogue)."""
    scores = np.asarray(scores, dtype=np.float64)
    keep = scores > 0
    idx, scores = idx[keep], scores[keep]
    order = np.lexsort((idx, -scores))
    idx, scores = idx[order], scores[order]
    head = base.idx[:LIVE_DEPTH] if scale > 0 else base.idx[:0]
    rest = ~np.isin(head, idx)
    rest_idx, rest_scores = head[rest], base.scores[: len(head)][rest].astype(np.float64) * scale
    at = np.searchsorted(-rest_scores, -scores, side="left")
    return Candidates(np.insert(rest_idx, at, idx).astype(np.int64),
                      np.insert(rest_scores, at, scores).astype(np.float32))


def _view(ctx: RecallContext) -> PopularityView:
    return ctx.popularity if ctx.popularity is not None else trained_view(ctx.index, ctx.model)


def fit_context(ctx: RecallContext, found: Candidates, limit: int) -> Candidates:
    """Return the candidates re-scored by how well they fit the request context, best first."""
    if not ctx.request.context or len(found) == 0:
        return Candidates(found.idx[:limit], found.scores[:limit])
    scores = found.scores * ctx.index.context_fit(found.idx, ctx.request.context)
    order = np.lexsort((found.idx, -scores))[:limit]
    return Candidates(found.idx[order], scores[order])


@REGISTRY.recall
class PopularSource:
    """The most popular items (decayed counts from the model, in event time, blended with the live hour)."""

    name = "popular"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        ranked = _view(ctx).popular
        found = from_ranked(ranked.idx, ranked.scores, ctx.excluded, limit * POOL)
        return fit_context(ctx, found, limit)


@REGISTRY.recall
class TrendingSource:
    """Items rising in the trending window over their recent baseline (trained, and live when known)."""

    name = "trending"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        ranked = _view(ctx).trending
        found = from_ranked(ranked.idx, ranked.scores, ctx.excluded, limit * POOL)
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
