"""Per-catalogue arrays filled lazily: item facts that need Python-level work (parsing an expiry date, testing a
rule against an item's attributes) are computed once per item and catalogue, only for items some request asked
about, and then read back with numpy indexing.

A `CatalogueView` is treated as immutable: the engine builds a new one when items change, and its columns start
empty (they are dropped with the old view).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from domain.recommend.base import CatalogueView

_BY_CATALOGUE: dict[int, dict[Hashable, LazyColumn]] = {}


class LazyColumn:
    """One value per catalogue item, computed on first use."""

    __slots__ = ("filled", "values")

    def __init__(self, size: int, dtype: Any) -> None:
        self.values = np.zeros(size, dtype=dtype)
        self.filled = np.zeros(size, dtype=bool)

    def take(self, idx: np.ndarray, compute: Callable[[np.ndarray], np.ndarray | Sequence[Any]]) -> np.ndarray:
        """Return the values at idx, first computing the unfilled ones (unique item indexes, in one call)."""
        todo = idx[~self.filled[idx]]
        if len(todo):
            rows = np.unique(todo)
            self.values[rows] = compute(rows)
            self.filled[rows] = True
        return self.values[idx]


def lazy_column(catalogue: CatalogueView, key: Hashable, dtype: Any) -> LazyColumn:
    """Return the catalogue's column under key, created empty on first use."""
    owner = id(catalogue)
    columns = _BY_CATALOGUE.get(owner)
    if columns is None:
        columns = _BY_CATALOGUE[owner] = {}
        # Runs while the view is being freed, before its id can be reused by another object.
        weakref.finalize(catalogue, _BY_CATALOGUE.pop, owner, None)
    column = columns.get(key)
    if column is None:
        column = columns[key] = LazyColumn(len(catalogue), dtype)
    return column
