"""A trained two-tower model as numpy arrays, and its user tower for one history: what serving runs instead of torch.

The arrays are exported by domain.learning.two_tower from models.two_tower.TwoTower: every catalogue item's vector
(items without interactions included, from their features), the user tower's weights, and the item tower
(domain.learning.item_tower), which gives an item added after training its vector from its features. `user_vector`
reproduces the module's user tower (in eval mode), so one request costs two small matrix products and one
matrix-vector product over the item vectors (or one vector-store search).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from domain.learning.content import ContentModel
from domain.learning.item_tower import ItemTower

USER_ARRAYS = ("positions", "user_in_w", "user_in_b", "user_out_w", "user_out_b")
TINY = float(np.finfo(np.float32).tiny)  # the smallest recall score (the fusion drops scores of 0)


@dataclass(frozen=True)
class TowerModel:
    """Item vectors over the model catalogue and the user tower's weights (matrices stored input x output)."""

    item_vectors: np.ndarray  # float32 items x d, L2-normalised, in model catalogue order
    item_preferences: np.ndarray  # float32 items x d: the mean embedding of each item's categories
    positions: np.ndarray  # float32 max_len: recency logits, newest last
    user_in_w: np.ndarray  # float32 2d x d
    user_in_b: np.ndarray
    user_out_w: np.ndarray  # float32 d x d
    user_out_b: np.ndarray
    temperature: float
    items: ItemTower | None = None  # None: exported before the item tower was (new items then have no vector)

    @property
    def max_len(self) -> int:
        return int(self.positions.shape[0])

    @property
    def dim(self) -> int:
        return int(self.item_vectors.shape[1])

    def user_vector(self, model_items: np.ndarray) -> np.ndarray | None:
        """Return the L2-normalised user vector after a history of model catalogue indexes (oldest first), or None
        when no item of it is in the model."""
        idx = np.asarray(model_items, dtype=np.int64)
        idx = idx[(idx >= 0) & (idx < len(self.item_vectors))][-self.max_len :]
        if len(idx) == 0:
            return None
        logits = self.positions[-len(idx) :].astype(np.float32)
        weights = np.exp(logits - logits.max())
        weights /= weights.sum()
        mean = weights @ np.asarray(self.item_vectors[idx], dtype=np.float32)
        preference = weights @ np.asarray(self.item_preferences[idx], dtype=np.float32)
        hidden = np.maximum(np.concatenate([mean, preference]) @ self.user_in_w + self.user_in_b, 0.0)
        h = mean + hidden @ self.user_out_w + self.user_out_b
        return (h / max(float(np.linalg.norm(h)), 1e-12)).astype(np.float32)

    def affinity(self, dots: np.ndarray) -> np.ndarray:
        """Return the recall score of user-item dot products: exp((dot - 1) / temperature), positive (as the fusion
        expects) and, the vectors being unit, at most 1. It depends on the dot product alone, so an in-memory scan
        and a vector-store search score an item alike; it ranks as the training's softmax does."""
        scores = np.exp((np.asarray(dots, dtype=np.float64) - 1.0) / self.temperature)
        return np.maximum(scores, TINY).astype(np.float32)  # a low temperature must not round far items to 0

    def scores(self, model_items: np.ndarray) -> np.ndarray | None:
        """Return the affinity of every model catalogue item after a history of model indexes, or None when the
        history holds no item of the model."""
        user = self.user_vector(model_items)
        return None if user is None else self.affinity(np.asarray(self.item_vectors) @ user)

    def new_item_vectors(self, items: Sequence[Mapping]) -> np.ndarray | None:
        """Return the vectors of item documents training did not see, from their features (None: no item tower)."""
        return None if self.items is None else self.items.vectors(items)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Return every array by file name stem (`prefix.name`), for the model's storage."""
        out = {"item_vectors": self.item_vectors, "item_preferences": self.item_preferences,
               **{name: getattr(self, name) for name in USER_ARRAYS}}
        arrays = {f"{prefix}.{name}": array for name, array in out.items()}
        if self.items is not None:
            arrays.update(self.items.arrays(f"{prefix}.item"))
        return arrays

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, *, temperature: float,
                    labels: Mapping[str, Sequence[str]] | None = None,
                    content: ContentModel | None = None) -> TowerModel | None:
        """Return the model stored under prefix in arrays (see `arrays`; `labels` and `content`: the item tower's
        vocabularies and content model), or None when there is none."""
        if f"{prefix}.item_vectors" not in arrays:
            return None
        get = lambda name: np.asarray(arrays[f"{prefix}.{name}"])  # noqa: E731
        items = ItemTower.from_arrays(arrays, f"{prefix}.item", labels, content) if labels is not None else None
        return cls(item_vectors=get("item_vectors"), item_preferences=get("item_preferences"),
                   temperature=temperature, items=items, **{name: get(name) for name in USER_ARRAYS})
