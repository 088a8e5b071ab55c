"""The features a learned ranker reads: one row per (user, candidate), built by the same code in training and serving.

Per recall source (in a fixed order, so a row means the same at every request): its min-max normalised score, whether
it recalled the candidate, and the reciprocal of the candidate's rank in its list (0 where it did not). Then the
fusion score with the served weights and its reciprocal rank (so a learned ranker starts from what fusion ranks
first), how many sources recalled the candidate, the item's popularity (log users in training, and log of its
time-decayed popularity: the model's `popularity`, in events), its age in days at
the request's time (log; 0 and a flag off when the item has no publish time), the user's history length (log), the
share of the user's recent items in the candidate's categories (the most shared of its categories), and the numeric
item attributes the scenario names in `features.item` (sign-preserving log). Everything is arrays over the
candidates: no Python loop runs per candidate.

The request's time is the scenario's newest event (serving measures decay and age from it, so that a historical
import behaves like live traffic), not the wall clock: the hour of day or weekday it would give is the same for
every request to one version, so they are no features. Nor is the request context: no training list carries one
(served lists are stored without it).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from domain.recommend.base import Candidates, CatalogueView, LabelCodes, StageContext
from domain.recommend.rank import CandidateMatrix, source_weights

PER_SOURCE = ("score", "recalled", "reciprocalRank")
GENERAL = ("fusion", "fusionReciprocalRank", "sources", "popularity", "recentPopularity", "ageDays", "dated",
           "historyLength", "categoryShare")
COLD_START = "affinity"  # the engine adds it for a new user with stated preferences, whatever the config lists
MAX_ATTRIBUTES = 16
DAY = 86400.0


@dataclass(frozen=True)
class FeatureSpec:
    """Which sources and item attributes the feature columns stand for, in column order."""

    sources: tuple[str, ...]
    attributes: tuple[str, ...] = ()

    @classmethod
    def of(cls, config: Mapping[str, Any], catalogue: CatalogueView) -> FeatureSpec:
        """Return the spec of a config's recall sources and its numeric `features.item` attributes."""
        sources = tuple(dict.fromkeys([e["source"] for e in config["recall"]] + [COLD_START]))
        wanted = (config.get("features") or {}).get("item") or ()
        numeric = [name for name in wanted if any(_number(a.get(name)) is not None for a in catalogue.attributes)]
        return cls(sources, tuple(numeric[:MAX_ATTRIBUTES]))

    @property
    def names(self) -> list[str]:
        """Return every column's name."""
        return ([f"{s}.{f}" for s in self.sources for f in PER_SOURCE] + list(GENERAL)
                + [f"attributes.{a}" for a in self.attributes])

    def serves(self, sources: Iterable[str]) -> bool:
        """Return whether every named source has its columns (a source added since training has none)."""
        return set(sources) <= set(self.sources)


@dataclass(frozen=True)
class ItemTable:
    """The per-item inputs of the features over one catalogue, computed once per serving engine."""

    popularity: np.ndarray  # float32 log(1 + users per item)
    recent: np.ndarray  # float32 log(1 + decayed popularity, in events)
    published: np.ndarray  # float64 epoch seconds, NaN when unknown
    categories: np.ndarray  # int32 (most categories of an item) x items: category codes, padded with `vocabulary`
    vocabulary: int  # distinct categories
    attributes: np.ndarray  # float32 items x attributes: sign(x) log(1 + |x|), 0 where missing

    @classmethod
    def build(cls, catalogue: CatalogueView, counts: np.ndarray, popularity: np.ndarray,
              attributes: Sequence[str]) -> ItemTable:
        """Return the table of a catalogue with its users-per-item counts and decayed popularity shares (aligned
        with it: domain.recommend.recall.index.CatalogueIndex has both)."""
        values = np.zeros((len(catalogue), len(attributes)), dtype=np.float32)
        for column, name in enumerate(attributes):
            raw = np.array([_number(a.get(name)) or 0.0 for a in catalogue.attributes], dtype=np.float64)
            values[:, column] = np.sign(raw) * np.log1p(np.abs(raw))
        counts = np.asarray(counts, dtype=np.float32)
        recent = np.log1p(np.asarray(popularity, dtype=np.float32) * counts.sum())
        codes = catalogue.category_codes
        return cls(np.log1p(counts), recent, np.asarray(catalogue.published_at, np.float64), _padded(codes),
                   codes.vocabulary, values)


@dataclass(frozen=True)
class UserSide:
    """What the features read of the request: the recent history (catalogue indexes), its full length, the time."""

    history: np.ndarray
    length: int
    now: float  # epoch seconds


def request_features(per_source: Mapping[str, Candidates], matrix: CandidateMatrix, ctx: StageContext,
                     spec: FeatureSpec, table: ItemTable) -> np.ndarray:
    """Return the feature rows of a request's candidates: `matrix` holds the sources' candidates (and maybe more
    rows); the stage context must carry the request's recall context."""
    history = ctx.recall.history if ctx.recall is not None else np.empty(0, np.int64)
    user = UserSide(history, len(ctx.request.history), ctx.now_ts)
    return features(matrix, source_ranks(per_source, matrix), source_weights(matrix.names, ctx.config), spec,
                    table, user)


def source_ranks(per_source: Mapping[str, Candidates], matrix: CandidateMatrix) -> np.ndarray:
    """Return 1 / (1 + rank) of each candidate in each source's list (best first), 0 where the source lacks it."""
    out = np.zeros(matrix.raw.shape, dtype=np.float32)
    for c, name in enumerate(matrix.names):
        found = per_source[name]
        out[np.searchsorted(matrix.idx, found.idx), c] = 1.0 / np.arange(1, len(found) + 1, dtype=np.float32)
    return out


def features(matrix: CandidateMatrix, reciprocal: np.ndarray, weights: np.ndarray, spec: FeatureSpec,
             table: ItemTable, user: UserSide) -> np.ndarray:
    """Return float32 candidates x len(spec.names): the columns described in the module docstring (`reciprocal`:
    the sources' reciprocal ranks, aligned with the matrix)."""
    n, idx = len(matrix.idx), matrix.idx
    recalled = ~np.isnan(matrix.raw)
    fusion = matrix.normalised @ weights if len(matrix.names) else np.zeros(n, np.float32)
    anywhere = recalled.any(axis=1)
    out = np.zeros((n, len(spec.names)), dtype=np.float32)
    for c, name in enumerate(matrix.names):
        if name in spec.sources:
            at = 3 * spec.sources.index(name)
            out[:, at], out[:, at + 1], out[:, at + 2] = matrix.normalised[:, c], recalled[:, c], reciprocal[:, c]
    general = 3 * len(spec.sources)
    published = table.published[idx]
    dated = np.isfinite(published)
    columns = (
        fusion, _reciprocal_ranks(fusion, anywhere),
        recalled.sum(axis=1), table.popularity[idx], table.recent[idx],
        np.log1p(np.maximum(user.now - np.where(dated, published, user.now), 0.0) / DAY), dated,
        math.log1p(user.length), _category_share(idx, user.history, table),
    )
    for k, column in enumerate(columns):
        out[:, general + k] = column
    out[:, general + len(GENERAL):] = table.attributes[idx]
    return out


def _reciprocal_ranks(scores: np.ndarray, present: np.ndarray) -> np.ndarray:
    """Return 1 / (1 + rank) of each score (best first, ties by position), 0 where not present."""
    order = np.argsort(-np.where(present, scores, -np.inf), kind="stable")
    ranks = np.empty(len(order), dtype=np.float32)
    ranks[order] = np.arange(len(order), dtype=np.float32)
    return np.where(present, 1.0 / (1.0 + ranks), 0.0).astype(np.float32)


def _category_share(idx: np.ndarray, history: np.ndarray, table: ItemTable) -> np.ndarray:
    """Return, per candidate, the largest share of the history items in one of the candidate's categories."""
    if len(history) == 0 or table.vocabulary == 0:
        return np.zeros(len(idx), dtype=np.float32)
    seen = np.bincount(table.categories[:, history].ravel(), minlength=table.vocabulary + 1).astype(np.float32)
    seen[table.vocabulary] = 0.0  # the padding
    # Items are columns: the maximum runs down the few category rows, vectorised across the candidates (`take`
    # keeps the rows contiguous, where `[:, idx]` would hand back a transposed array and a slow reduction).
    return (seen / len(history))[np.take(table.categories, idx, axis=1)].max(axis=0)


def _padded(codes: LabelCodes) -> np.ndarray:
    """Return each item's category codes as one column, padded with the vocabulary size (at least one row)."""
    lengths = np.diff(codes.indptr)
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    out = np.full((width, len(lengths)), codes.vocabulary, dtype=np.int32)
    items = np.repeat(np.arange(len(lengths)), lengths)
    out[np.arange(len(codes.codes)) - np.repeat(codes.indptr[:-1], lengths), items] = codes.codes
    return out


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None
