"""Top-k neighbour tables: the precomputed form of every item-item and user-user model, cheap to read per request;
and the dense form of a small item-item model whose negative weights matter (EASE)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import numpy as np

BLOCK_FLOATS = 1 << 23  # a dense block of scores holds at most this many floats (32 MiB)
MAX_BLOCK_ROWS = 1024
DENSE_CHUNK = 64  # rows of a DenseTable summed per step


@dataclass(frozen=True)
class NeighbourTable:
    """Row r's best neighbours, best first: indexes (-1 pads a short row) and scores (0 where padded)."""

    neighbors: np.ndarray  # int32, rows x k
    scores: np.ndarray  # float32, rows x k

    @property
    def k(self) -> int:
        return self.neighbors.shape[1]

    def gather(self, rows: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
        """Return a dense score vector of `size`: the weighted sum of the rows' neighbour scores."""
        if len(rows) == 0:
            return np.zeros(size, dtype=np.float32)
        nb = self.neighbors[rows]
        vals = self.scores[rows] * weights[:, None].astype(np.float32)
        ok = nb >= 0
        return np.bincount(nb[ok], weights=vals[ok], minlength=size).astype(np.float32)

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Return one row's neighbours and scores without padding."""
        nb, sc = self.neighbors[r], self.scores[r]
        ok = nb >= 0
        return nb[ok].astype(np.int64), sc[ok]


@dataclass(frozen=True)
class DenseTable:
    """Every weight between the items of a vocabulary, negative ones included: row a, column b is how much item a
    predicts item b. A user's scores are the weighted sum of their items' rows, as with a NeighbourTable, but a
    negative weight (two items one seldom finds together) also lowers a candidate instead of being dropped."""

    vocabulary: np.ndarray  # int32: the catalogue index of each row and column
    weights: np.ndarray  # float32, vocabulary x vocabulary

    @property
    def k(self) -> int:
        return int(self.weights.shape[1])

    @cached_property
    def _position(self) -> np.ndarray:
        """Return catalogue index -> row (-1 outside the vocabulary)."""
        size = int(self.vocabulary.max()) + 1 if len(self.vocabulary) else 0
        out = np.full(size, -1, dtype=np.int64)
        out[np.asarray(self.vocabulary, dtype=np.int64)] = np.arange(len(self.vocabulary))
        return out

    def _rows(self, items: np.ndarray) -> np.ndarray:
        """Return each catalogue index's row (-1 outside the vocabulary)."""
        items = np.asarray(items, dtype=np.int64)
        lookup = self._position
        out = np.full(len(items), -1, dtype=np.int64)
        inside = (items >= 0) & (items < len(lookup))
        out[inside] = lookup[items[inside]]
        return out

    def gather(self, rows: np.ndarray, weights: np.ndarray, size: int) -> np.ndarray:
        """Return a dense score vector of `size`: the weighted sum of the items' rows (items outside the vocabulary
        add nothing)."""
        out = np.zeros(size, dtype=np.float32)
        positions = self._rows(rows)
        known = positions >= 0
        positions, weights = positions[known], np.asarray(weights, dtype=np.float32)[known]
        if len(positions):
            # A few rows at a time: gathering a long history's rows at once copies megabytes first (2-3x slower
            # at 800 items of 3,000).
            total = weights[:DENSE_CHUNK] @ self.weights[positions[:DENSE_CHUNK]]
            for start in range(DENSE_CHUNK, len(positions), DENSE_CHUNK):
                stop = start + DENSE_CHUNK
                total += weights[start:stop] @ self.weights[positions[start:stop]]
            out[self.vocabulary] = total
        return out

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray]:
        """Return one item's positive weights, best first (empty outside the vocabulary)."""
        position = int(self._rows(np.array([r]))[0])
        if position < 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        values = np.asarray(self.weights[position])
        order = np.flatnonzero(values > 0)
        order = order[np.argsort(-values[order], kind="stable")]
        return self.vocabulary[order].astype(np.int64), values[order]


def top_k_table(n_rows: int, n_cols: int, k: int, block_scores: Callable[[int, int], np.ndarray],
                positive_only: bool = True) -> NeighbourTable:
    """Build a table from `block_scores(start, stop)` -> dense (stop - start) x n_cols scores, a block at a time:
    each row's k highest scores, or with `positive_only` off its k largest in magnitude, negative ones kept."""
    neighbors = np.full((n_rows, k), -1, dtype=np.int32)
    scores = np.zeros((n_rows, k), dtype=np.float32)
    step = int(np.clip(BLOCK_FLOATS // max(n_cols, 1), 1, MAX_BLOCK_ROWS))
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        block = np.asarray(block_scores(start, stop), dtype=np.float32)
        nb, sc = _block_top_k(block, k, magnitude=not positive_only)
        if positive_only:
            nb = np.where(sc > 0, nb, -1)
            sc = np.where(sc > 0, sc, 0.0)
        neighbors[start:stop, : nb.shape[1]], scores[start:stop, : sc.shape[1]] = nb, sc
    return NeighbourTable(neighbors, scores)


def _block_top_k(block: np.ndarray, k: int, *, magnitude: bool = False) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, block.shape[1])
    if k == 0:
        return np.empty((block.shape[0], 0), np.int32), np.empty((block.shape[0], 0), np.float32)
    key = np.abs(block) if magnitude else block
    part = np.argpartition(-key, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(block, part, axis=1)
    order = np.argsort(-np.take_along_axis(key, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int32), np.take_along_axis(vals, order, axis=1)


def remap_columns(table: NeighbourTable, columns: np.ndarray) -> NeighbourTable:
    """Return the table with neighbour indexes translated through `columns` (a sub-vocabulary to the full one)."""
    nb = np.where(table.neighbors >= 0, columns[np.maximum(table.neighbors, 0)], -1).astype(np.int32)
    return NeighbourTable(nb, table.scores)


def expand_rows(table: NeighbourTable, rows: np.ndarray, n_rows: int) -> NeighbourTable:
    """Return a table of n_rows where row rows[j] is the input's row j and the others are empty."""
    neighbors = np.full((n_rows, table.k), -1, dtype=np.int32)
    scores = np.zeros((n_rows, table.k), dtype=np.float32)
    neighbors[rows], scores[rows] = table.neighbors, table.scores
    return NeighbourTable(neighbors, scores)
