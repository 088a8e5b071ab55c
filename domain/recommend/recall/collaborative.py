"""Personal sources from interactions: item-CF and EASE neighbours of recent items, ALS and user-CF."""

from __future__ import annotations

import numpy as np

from domain.learning.tables import DenseTable, NeighbourTable
from domain.recommend.base import REGISTRY, Candidates
from domain.recommend.recall.context import RecallContext

USER_CF_SHRINK = 5.0  # damps the similarity of users who share only an item or two with the request
# The newest history items that seed user-CF: the lookup reads each seed's users, so an inflated history (a bot,
# an import) must not turn one request into work proportional to every user.
USER_CF_SEEDS = 50


def _table_recall(ctx: RecallContext, table: NeighbourTable | DenseTable | None, limit: int, seeds: int | None) -> Candidates:
    if table is None or ctx.model is None:
        return Candidates.empty()
    items, weights = ctx.seeds(seeds)
    if len(items) == 0:
        return Candidates.empty()
    return ctx.top(table.gather(items, weights, len(ctx.model.catalogue)), limit)


@REGISTRY.recall
class ItemCFSource:
    """Co-occurrence neighbours of the user's most recent items, weighted by recency."""

    name = "item_cf"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        seeds = int(ctx.params.get("seedItems") or 20)
        return _table_recall(ctx, ctx.model.item_cf if ctx.model else None, limit, seeds)


@REGISTRY.recall
class EaseSource:
    """EASE item-item weights applied to the user's recency-weighted history."""

    name = "ease"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        return _table_recall(ctx, ctx.model.ease if ctx.model else None, limit, None)


@REGISTRY.recall
class AlsSource:
    """Matrix factorisation: the history folded into a user vector, scored against every item's factors."""

    name = "als"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        if ctx.model is None or ctx.model.als is None:
            return Candidates.empty()
        items, weights = ctx.seeds()
        if len(items) == 0:
            return Candidates.empty()
        user = ctx.model.als.fold_in(items, weights)
        return ctx.top(np.asarray(ctx.model.als.item_factors) @ user, limit)


@REGISTRY.recall
class UserCFSource:
    """Items of the users whose histories overlap the request's most (cosine-like, recency-weighted)."""

    name = "user_cf"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        model = ctx.model
        if model is None or model.item_users is None:
            return Candidates.empty()
        items, weights = ctx.seeds(int(ctx.params.get("seedItems") or USER_CF_SEEDS))
        if len(items) == 0:
            return Candidates.empty()
        users, sims = _neighbours(ctx, items, weights, int(ctx.params.get("neighbors") or 50))
        scores = np.zeros(len(model.catalogue), dtype=np.float32)
        for user, sim in zip(users, sims, strict=True):
            scores[model.user_row(user)] += sim
        return ctx.top(scores, limit)


def _neighbours(ctx: RecallContext, items: np.ndarray, weights: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    model = ctx.model
    assert model is not None and model.item_users is not None
    rows = model.item_users[items]
    # Only the users the seeds share: the work follows the seeds' users, not every user of the model.
    users, position = np.unique(rows.indices, return_inverse=True)
    overlap = np.bincount(position, weights=np.repeat(weights, np.diff(rows.indptr)), minlength=len(users))
    lengths = (model.history_indptr[users + 1] - model.history_indptr[users]).astype(np.float64)
    sims = overlap / (np.sqrt(lengths * len(items)) + USER_CF_SHRINK)
    if (me := model.user_index.get(ctx.request.user_id)) is not None:
        sims[users == me] = 0.0  # the user's own training row is not a neighbour
    top = np.flatnonzero(sims > 0)
    top = top[np.argsort(-sims[top], kind="stable")[:k]]
    return users[top], sims[top].astype(np.float32)
