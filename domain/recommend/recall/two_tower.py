"""`two_tower`: the items nearest the user's two-tower vector.

The user tower runs in numpy on the exported weights (domain.learning.towers) over the request's history (training
history and live events, oldest first), so a new event changes the answer on the next request. The item vectors
are searched in the vector store when the served version has a space there (one search per request), else
exhaustively in memory; both hold the items added after training (their vectors come from the item tower: the
item-vector job writes them to the store, the catalogue index computes them in memory) and score an item alike, so
an exact store ranks as the scan does. The user's recent items and the request's exclusions are skipped: the user
vector is made of the history, which would fill the list.
"""

from __future__ import annotations

import numpy as np

from domain.recommend.base import REGISTRY, Candidates
from domain.recommend.recall.context import RecallContext, top_candidates, top_of
from domain.recommend.recall.embeddings import search_space


@REGISTRY.recall
class TwoTowerSource:
    """exp((dot - 1) / temperature) of the user-item dot products; empty for a new user or an untrained model."""

    name = "two_tower"
    remote = True  # a vector-store search when the served version has a space

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        towers = ctx.model.two_tower if ctx.model is not None else None
        user = towers.user_vector(ctx.history_model) if towers is not None else None
        if towers is None or user is None:
            return Candidates.empty()
        if ctx.vectors is not None and ctx.two_tower_space:
            idx, dots = await search_space(ctx, ctx.two_tower_space, user, limit)
            return top_of(idx, towers.affinity(dots), limit)
        held = ctx.index.tower_vectors()
        assert held is not None  # the index holds the towers of the model it was built over
        vectors, missing = held
        blocked = ctx.blocked if missing is None else ctx.blocked | missing
        return top_candidates(np.where(blocked, 0.0, towers.affinity(vectors @ user)).astype(np.float32), limit)
