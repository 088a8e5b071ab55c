"""`two_tower`: the items nearest the user's two-tower vector.

The user tower runs in numpy on the exported weights (domain.learning.towers) over the request's history (training
history and live events, oldest first), so a new event changes the answer on the next request; the item vectors of
the whole catalogue, items without interactions included, are searched exhaustively in memory. The user's recent
items and the request's exclusions are skipped: the user vector is made of the history, which would fill the list.
"""

from __future__ import annotations

import numpy as np

from domain.recommend.base import REGISTRY, Candidates
from domain.recommend.recall.context import RecallContext, top_candidates


@REGISTRY.recall
class TwoTowerSource:
    """A softmax of the user-item dot products over the catalogue; empty for a new user or an untrained model."""

    name = "two_tower"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        model = ctx.model
        if model is None or model.two_tower is None:
            return Candidates.empty()
        scores = model.two_tower.scores(ctx.history_model)
        if scores is None:
            return Candidates.empty()
        if ctx.index.to_model is not None:
            scores = ctx.index.model_scores(scores)
        return top_candidates(np.where(ctx.blocked, 0.0, scores).astype(np.float32), limit)
