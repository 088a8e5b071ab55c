"""Top-k neighbour tables: the precomputed form of every item-item and user-user model, cheap to read per request."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

BLOCK_FLOATS = 1 << 23  # a dense block of scores holds at most this many floats (32 MiB)
MAX_BLOCK_ROWS = 1024


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


def top_k_table(n_rows: int, n_cols: int, k: int, block_scores: Callable[[int, int], np.ndarray],
                positive_only: bool = True) -> NeighbourTable:
    """Build a table from `block_scores(start, stop)` -> dense (stop - start) x n_cols scores, a block at a time."""
    neighbors = np.full((n_rows, k), -1, dtype=np.int32)
    scores = np.zeros((n_rows, k), dtype=np.float32)
    step = int(np.clip(BLOCK_FLOATS // max(n_cols, 1), 1, MAX_BLOCK_ROWS))
    for start in range(0, n_rows, step):
        stop = min(start + step, n_rows)
        block = np.asarray(block_scores(start, stop), dtype=np.float32)
        nb, sc = _block_top_k(block, k)
        if positive_only:
            nb = np.where(sc > 0, nb, -1)
            sc = np.where(sc > 0, sc, 0.0)
        neighbors[start:stop, : nb.shape[1]], scores[start:stop, : sc.shape[1]] = nb, sc
    return NeighbourTable(neighbors, scores)


def _block_top_k(block: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, block.shape[1])
    if k == 0:
        return np.empty((block.shape[0], 0), np.int32), np.empty((block.shape[0], 0), np.float32)
    part = np.argpartition(-block, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(block, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
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
