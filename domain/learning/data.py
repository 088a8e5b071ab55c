"""What training reads: item documents and interactions as aligned columns, and their weighting into a matrix."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from domain.recommend.base import CatalogueView

# A watch below this completion is barely a signal; above it the weight grows linearly with completion.
WATCH_FLOOR = 0.2
# Ratings count by how good they were, but a low rating still says "watched it" (half the weight at worst).
RATING_FLOOR = 0.5


@dataclass(frozen=True)
class ServedLists:
    """Lists served to users (impressions, newest first) and the events attributed to each: what a learned ranker
    learns clicks from (domain.learning.ranking)."""

    user_ids: list[str]
    served_at: np.ndarray  # float64 epoch seconds
    items: list[list[str]]  # item ids in served order
    events: list[list[tuple[str, str]]]  # (item id, interaction type) of the events citing the list's request id

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class TrainingData:
    """Item documents as stored in MongoDB and interactions as aligned columns (one entry per interaction)."""

    items: list[dict]
    user_ids: list[str]
    item_ids: list[str]
    types: list[str]
    values: list[float | None]
    timestamps: np.ndarray  # float64 epoch seconds
    served: ServedLists | None = None  # loaded only for a scenario whose ranker learns from them


@dataclass(frozen=True)
class Interactions:
    """Positive user-item pairs in the catalogue's index space, and the positive events behind them."""

    user_ids: list[str]
    strength: sp.csr_matrix  # users x items, float32 summed interaction weight (> 0 only)
    history_indptr: np.ndarray  # int64 (users + 1): each user's positive items, oldest first (by newest event)
    history_items: np.ndarray  # int32
    history_times: np.ndarray  # float64: each pair's newest positive event, aligned with history_items
    history_types: np.ndarray  # int16: that event's type as an index into event_types, aligned with history_items
    history_values: np.ndarray  # float32: that event's value (watch seconds, rating...; NaN: none), aligned too
    event_types: tuple[str, ...]  # the types of history_types, sorted
    event_items: np.ndarray  # int64 item index of every positive event
    event_times: np.ndarray  # float64, aligned with event_items
    newest: float  # newest interaction time (NaN when there are none)

    @property
    def shape(self) -> tuple[int, int]:
        return self.strength.shape

    def binary(self) -> sp.csr_matrix:
        """Return the pattern of positive pairs as a float32 0/1 matrix."""
        out = self.strength.copy()
        out.data[:] = 1.0
        return out


def event_weights(data: TrainingData, catalogue: CatalogueView, weights: Mapping[str, float],
                  item_idx: np.ndarray) -> np.ndarray:
    """Return each interaction's weight: its type's weight, scaled by rating value or watch completion."""
    types = np.asarray(data.types, dtype=object)
    base = np.array([float(weights.get(t, 0.0)) for t in types], dtype=np.float64)
    values = np.array([np.nan if v is None else float(v) for v in data.values], dtype=np.float64)
    scale = np.ones(len(types), dtype=np.float64)
    rating = types == "RATING"
    if rating.any():
        scale[rating] = _rating_scale(values[rating])
    watch = types == "WATCH"
    if watch.any():
        scale[watch] = _watch_scale(values[watch], _durations(catalogue, item_idx[watch]))
    return base * scale


def _rating_scale(values: np.ndarray) -> np.ndarray:
    # The scale's top is the best rating seen, so 1-5 stars and 1-10 points both map onto [floor, 1].
    top = np.nanmax(values) if np.isfinite(values).any() else 1.0
    rel = np.clip(np.nan_to_num(values / top if top > 0 else values, nan=1.0), 0.0, 1.0)
    return RATING_FLOOR + (1.0 - RATING_FLOOR) * rel


def _watch_scale(seconds: np.ndarray, durations: np.ndarray) -> np.ndarray:
    completion = np.clip(seconds / durations, 0.0, 1.0)
    # Without a known duration (or watched seconds) the watch counts fully: presence is the only signal.
    completion = np.where(np.isfinite(completion), completion, 1.0)
    return WATCH_FLOOR + (1.0 - WATCH_FLOOR) * completion


def _durations(catalogue: CatalogueView, idx: np.ndarray) -> np.ndarray:
    out = np.full(len(idx), np.nan)
    for k, i in enumerate(idx):
        value = catalogue.attributes[i].get("durationSeconds")
        if isinstance(value, (int, float)) and value > 0:
            out[k] = float(value)
    return out


def build_interactions(data: TrainingData, catalogue: CatalogueView, weights: Mapping[str, float]) -> Interactions:
    """Sum each user-item pair's event weights; keep the pairs whose sum is positive (negatives cancel)."""
    item_idx = np.array([catalogue.index.get(i, -1) for i in data.item_ids], dtype=np.int64)
    known = item_idx >= 0  # interactions on items missing from the catalogue cannot be served or embedded
    users, user_codes = np.unique(np.asarray(data.user_ids, dtype=object)[known], return_inverse=True)
    w = event_weights(data, catalogue, weights, item_idx)[known]
    items, times = item_idx[known], np.asarray(data.timestamps, dtype=np.float64)[known]
    n_items = len(catalogue)
    key = user_codes.astype(np.int64) * n_items + items
    pairs, inverse = np.unique(key, return_inverse=True)
    total = np.bincount(inverse, weights=w, minlength=len(pairs))
    last = np.full(len(pairs), -np.inf)
    np.maximum.at(last, inverse[w > 0], times[w > 0])
    keep = (total > 0) & np.isfinite(last)
    pair_users, pair_items = pairs[keep] // n_items, pairs[keep] % n_items
    strength = sp.csr_matrix((total[keep].astype(np.float32), (pair_users, pair_items)), shape=(len(users), n_items))
    order = np.lexsort((pair_items, last[keep], pair_users))
    indptr = np.r_[0, np.cumsum(np.bincount(pair_users, minlength=len(users)))].astype(np.int64)
    positive = w > 0
    newest = _newest_events(inverse, times, positive, len(pairs))[keep][order]
    event_types, type_codes = np.unique(np.asarray(data.types, dtype=object)[known][newest], return_inverse=True)
    values = np.array([np.nan if v is None else float(v) for v in data.values], dtype=np.float32)[known][newest]
    return Interactions(
        user_ids=[str(u) for u in users], strength=strength, history_indptr=indptr,
        history_items=pair_items[order].astype(np.int32), history_times=last[keep][order],
        history_types=type_codes.astype(np.int16), history_values=values,
        event_types=tuple(str(t) for t in event_types), event_items=items[positive], event_times=times[positive],
        newest=float(times.max()) if len(times) else float("nan"),
    )


def _newest_events(pair_of: np.ndarray, times: np.ndarray, positive: np.ndarray, pairs: int) -> np.ndarray:
    """Return, per pair, the position of its newest positive event (the one that places it in the history; the
    last stored of equal times); 0 for a pair without one."""
    events = np.flatnonzero(positive)
    ordered = events[np.lexsort((events, times[events], pair_of[events]))]
    group = pair_of[ordered]
    ends = np.r_[group[1:] != group[:-1], True] if len(group) else np.zeros(0, dtype=bool)
    out = np.zeros(pairs, dtype=np.int64)
    out[group[ends]] = ordered[ends]
    return out
