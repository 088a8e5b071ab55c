"""Ranking: fuse the recall sources' candidates into one list.

`fusion` normalises each source's scores (min-max, rank or max) and sums them with the config's recall weights,
or combines ranks by reciprocal-rank fusion (`method: rrf`). A learned ranker plugs in through the same Protocol:
it builds the per-source feature matrix with `candidate_matrix`, scores it with its own model (adding item and
user features) and returns `ranked_from_scores(...)`; the scenario config then names it instead of `fusion`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from domain.recommend.base import REGISTRY, Candidates, Ranked, StageContext

RECALLED_FLOOR = 0.05  # min-max keeps the weakest candidate of a source above 0: being recalled at all counts
DEFAULT_WEIGHT = 1.0  # a source the config does not list (cold-start affinity, fallback)
DEFAULTS: dict[str, Any] = {"method": "weighted", "normalize": "minmax", "rrfK": 60.0}


@dataclass(frozen=True)
class CandidateMatrix:
    """The union of all candidates and one column per source: normalised scores (0 where not recalled)."""

    idx: np.ndarray  # int64 catalogue indexes, ascending
    names: list[str]
    normalised: np.ndarray  # float32, candidates x sources
    raw: np.ndarray  # float32, candidates x sources (NaN where not recalled)


def normalise(scores: np.ndarray, how: str, rrf_k: float = 60.0) -> np.ndarray:
    """Return one source's scores (best first) mapped onto a common scale."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.float32)
    rank = np.arange(n, dtype=np.float32)
    if how == "rrf":
        return (1.0 / (rrf_k + rank + 1.0)).astype(np.float32)
    if how == "rank":
        return (1.0 - rank / n).astype(np.float32)
    high, low = float(scores.max()), float(scores.min())
    if how == "max":
        return (scores / high).astype(np.float32) if high > 0 else np.ones(n, np.float32)
    if high - low <= 1e-12:
        return np.ones(n, dtype=np.float32)
    return (RECALLED_FLOOR + (1.0 - RECALLED_FLOOR) * (scores - low) / (high - low)).astype(np.float32)


def candidate_matrix(per_source: Mapping[str, Candidates], how: str = "minmax", rrf_k: float = 60.0,
                     size: int | None = None) -> CandidateMatrix:
    """Return the candidates' union with each source's normalised and raw score as columns."""
    # Given the catalogue's length (`size`), the union is built with a mask instead of a sort.
    names = [name for name, found in per_source.items() if len(found)]
    if not names:
        empty = np.zeros((0, 0), np.float32)
        return CandidateMatrix(np.empty(0, np.int64), [], empty, empty)
    idx, position = _union([per_source[n].idx for n in names], size)
    normalised = np.zeros((len(idx), len(names)), dtype=np.float32)
    raw = np.full((len(idx), len(names)), np.nan, dtype=np.float32)
    for col, name in enumerate(names):
        found = per_source[name]
        rows = position(found.idx)
        normalised[rows, col] = normalise(found.scores, how, rrf_k)
        raw[rows, col] = found.scores
    return CandidateMatrix(idx, names, normalised, raw)


def _union(lists: list[np.ndarray], size: int | None) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    if size is None:
        idx = np.unique(np.concatenate(lists))
        return idx, lambda items: np.searchsorted(idx, items)
    mask = np.zeros(size, dtype=bool)
    for items in lists:
        mask[items] = True
    idx = np.flatnonzero(mask)
    rows = np.empty(size, dtype=np.int64)
    rows[idx] = np.arange(len(idx))
    return idx, lambda items: rows[items]


def source_weights(names: list[str], config: Mapping[str, Any]) -> np.ndarray:
    """Return the config's recall weight of each named source."""
    weights = {entry["source"]: float(entry.get("weight", DEFAULT_WEIGHT)) for entry in config.get("recall", ())}
    return np.array([weights.get(n, DEFAULT_WEIGHT) for n in names], dtype=np.float32)


def ranked_from_scores(matrix: CandidateMatrix, scores: np.ndarray, weights: np.ndarray) -> Ranked:
    """Return the candidates ordered by score (ties by index), each with its sources, heaviest weight first."""
    order = np.lexsort((matrix.idx, -scores))
    present = ~np.isnan(matrix.raw[order])
    by_weight = np.argsort(-weights, kind="stable")
    # Rows share few distinct sets of sources: build each set's tuple once.
    masks = present.astype(np.int64) @ (1 << np.arange(len(matrix.names), dtype=np.int64))
    distinct, inverse = np.unique(masks, return_inverse=True)
    tuples = [tuple(matrix.names[c] for c in by_weight if m >> c & 1) for m in distinct.tolist()]
    return Ranked(idx=matrix.idx[order], scores=scores[order].astype(np.float32),
                  sources=[tuples[k] for k in inverse.tolist()],
                  source_scores={n: matrix.raw[order, c] for c, n in enumerate(matrix.names)})


@REGISTRY.ranker
class Fusion:
    """Weighted sum of per-source normalised scores, or reciprocal-rank fusion."""

    name: ClassVar[str] = "fusion"

    def rank(self, per_source: Mapping[str, Candidates], ctx: StageContext) -> Ranked:
        """Fuse the sources' candidates into one ranked list."""
        params = {**DEFAULTS, **{k: v for k, v in ctx.params.items() if v is not None}}
        how = "rrf" if params["method"] == "rrf" else str(params["normalize"])
        matrix = candidate_matrix(per_source, how, float(params["rrfK"]), size=len(ctx.catalogue))
        if len(matrix.idx) == 0:
            return Ranked(np.empty(0, np.int64), np.empty(0, np.float32), [], {})
        weights = source_weights(matrix.names, ctx.config)
        return ranked_from_scores(matrix, matrix.normalised @ weights, weights)
