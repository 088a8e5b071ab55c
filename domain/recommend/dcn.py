"""The `dcn` ranker: the DCN-v2 the training fitted (domain.learning.ranking) scores the fused candidates.

It builds the same candidate matrix as fusion, adds the item, user and time columns (domain.recommend.features),
and runs the model's numpy forward pass over all candidates at once. The scores are the model's logits shifted so
that the list's lowest is SCORE_FLOOR: positive, as the fallback rows and the rerankers expect, and linear in the
logits, as fusion's sums are. It ranks with fusion's arithmetic (default settings, the served weights) where the
model has no ranker (untrained, too little data, or the training's gate found fusion better) or where the config
names a recall source the ranker was not trained with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np

from domain.recommend.base import REGISTRY, Candidates, Ranked, StageContext
from domain.recommend.features import ItemTable, request_features
from domain.recommend.rank import Fusion, candidate_matrix, ranked_from_scores, source_weights

SCORE_FLOOR = 0.01


@REGISTRY.ranker
class Dcn:
    """Rank by the trained DCN-v2 over the candidates' features; fusion where there is no trained ranker."""

    name: ClassVar[str] = "dcn"

    def __init__(self) -> None:
        self._table: tuple[Any, Any, ItemTable] | None = None  # (catalogue index, ranker, table): built once

    def rank(self, per_source: Mapping[str, Candidates], ctx: StageContext) -> Ranked:
        """Score the sources' candidates with the trained ranker, best first."""
        recall = ctx.recall
        ranker = getattr(recall.model, "ranker", None) if recall is not None else None
        if ranker is None or not ranker.spec.serves(e["source"] for e in ctx.config["recall"]):
            return Fusion().rank(per_source, replace(ctx, params={}))
        matrix = candidate_matrix(per_source, "minmax", size=len(ctx.catalogue))
        if len(matrix.idx) == 0:
            return Ranked(np.empty(0, np.int64), np.empty(0, np.float32), [], {})
        rows = request_features(per_source, matrix, ctx, ranker.spec, self._items(recall.index, ranker))
        logits = ranker.score(rows)
        scores = (logits - logits.min() + SCORE_FLOOR).astype(np.float32)
        return ranked_from_scores(matrix, scores, source_weights(matrix.names, ctx.config))

    def _items(self, index: Any, ranker: Any) -> ItemTable:
        cached = self._table
        if cached is None or cached[0] is not index or cached[1] is not ranker:
            table = ItemTable.build(index.catalogue, index.counts, index.popularity, ranker.spec.attributes)
            cached = self._table = (index, ranker, table)
        return cached[2]
