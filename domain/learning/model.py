"""A scenario's trained model: everything the recall sources read, in the catalogue's item index space."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from domain.learning.content import ContentModel
from domain.learning.factors import Factors
from domain.learning.rankers import RankerModel
from domain.learning.sequences import SequenceModel
from domain.learning.tables import DenseTable, NeighbourTable
from domain.learning.towers import TowerModel
from domain.recommend.base import CatalogueView


@dataclass
class ScenarioModel:
    """Trained arrays of one scenario version; the optional parts exist when the config's sources need them."""

    scenario_id: str
    version: int
    trained_at: datetime
    newest_event: datetime  # newest interaction time: the time reference of decay, trending and freshness
    catalogue: CatalogueView  # the index space of every array below
    user_ids: list[str]
    history_indptr: np.ndarray  # int64 (users + 1): each user's positive training items, oldest first
    history_items: np.ndarray  # int32
    counts: np.ndarray  # float32: users per item, all time
    popularity: np.ndarray  # float32: decayed share of events, shrunk toward the all-time share
    trending: np.ndarray | None = None  # float32: rise over the recent baseline, 0 when not rising
    item_cf: NeighbourTable | None = None
    ease: NeighbourTable | DenseTable | None = None
    item_users: sp.csr_matrix | None = None  # items x users, for user-CF at request time
    als: Factors | None = None
    content: ContentModel | None = None
    sasrec: SequenceModel | None = None  # next-item transformer weights, for numpy inference (no torch)
    two_tower: TowerModel | None = None  # every item's two-tower vector and the user tower's weights (numpy)
    ranker: RankerModel | None = None  # the learned ranker's weights (numpy), when its training's gate chose it
    # The event behind each history item (aligned with history_items), kept where sasrec reads event features:
    history_types: np.ndarray | None = None  # int16 index into event_types
    history_values: np.ndarray | None = None  # float32 value (NaN: none)
    event_types: tuple[str, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)  # settings trained with, sizes and timings (JSON)
    user_index: dict[str, int] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.user_index = {u: i for i, u in enumerate(self.user_ids)}

    def user_history(self, user_id: str) -> list[str]:
        """Return the user's training items, oldest first ([] for unknown users)."""
        row = self.user_index.get(user_id)
        if row is None:
            return []
        items = self.history_items[self.history_indptr[row] : self.history_indptr[row + 1]]
        return [self.catalogue.item_ids[i] for i in items]

    def user_events(self, user_id: str, newest: int | None = None) -> list[tuple[str | None, float | None]]:
        """Return the type and value (None: none) of the event behind each of the user's newest training items (all
        when newest is None), oldest first, aligned with the end of user_history; [] when the model keeps none."""
        row = self.user_index.get(user_id)
        if row is None or self.history_types is None or self.history_values is None:
            return []
        start, end = int(self.history_indptr[row]), int(self.history_indptr[row + 1])
        if newest is not None:
            start = max(start, end - newest)
        names = self.event_types
        values = self.history_values[start:end].tolist()
        return [(names[t], None if v != v else v)  # v != v: NaN, no value
                for t, v in zip(self.history_types[start:end].tolist(), values, strict=True)]

    def user_row(self, row: int) -> np.ndarray:
        """Return a user's training item indexes by user row, oldest first."""
        return np.asarray(self.history_items[self.history_indptr[row] : self.history_indptr[row + 1]])

    def item_embedding(self, item_id: str) -> np.ndarray | None:
        """Return the item's content embedding, or None when unknown, untrained or without usable text."""
        i = self.catalogue.index.get(item_id)
        if i is None or self.content is None:
            return None
        vector = np.asarray(self.content.embeddings[i])
        return vector if np.any(vector) else None

    def embed_items(self, items: Iterable[Mapping[str, Any]]) -> np.ndarray | None:
        """Return content embeddings for item documents not seen in training (None when content is untrained)."""
        return None if self.content is None else self.content.embed(items)

    def save(self, path: Path) -> None:
        """Write the model as a directory of .npy and .json files, atomically (tmp dir + rename)."""
        from domain.learning.storage import save_model

        save_model(self, Path(path))

    @classmethod
    def load(cls, path: Path) -> ScenarioModel:
        """Read a saved model; large arrays are memory-mapped."""
        from domain.learning.storage import load_model

        return load_model(cls, Path(path))

    def nbytes(self) -> int:
        """Return the bytes held by the model's arrays (item metadata and id strings not counted)."""
        from domain.learning.storage import model_arrays

        return int(sum(a.nbytes for a in model_arrays(self).values()))
