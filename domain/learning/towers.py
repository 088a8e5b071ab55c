"""A trained two-tower model as numpy arrays, and its user tower for one history: what serving runs instead of torch.

The arrays are exported by domain.learning.two_tower from models.two_tower.TwoTower: every catalogue item's vector
(items without interactions included, from their features) and the user tower's weights. `user_vector` reproduces
the module's user tower (in eval mode), so one request costs two small matrix products and one matrix-vector
product over the item vectors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

USER_ARRAYS = ("positions", "user_in_w", "user_in_b", "user_out_w", "user_out_b")


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

    def scores(self, model_items: np.ndarray) -> np.ndarray | None:
        """Return a softmax over the model catalogue of the user's dot products over the temperature (positive, as
        the fusion expects), or None when the history holds no item of the model."""
        user = self.user_vector(model_items)
        if user is None:
            return None
        logits = (np.asarray(self.item_vectors) @ user).astype(np.float64) / self.temperature
        probabilities = np.exp(logits - logits.max())
        return (probabilities / probabilities.sum()).astype(np.float32)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Return every array by file name stem (`prefix.name`), for the model's storage."""
        out = {"item_vectors": self.item_vectors, "item_preferences": self.item_preferences,
               **{name: getattr(self, name) for name in USER_ARRAYS}}
        return {f"{prefix}.{name}": array for name, array in out.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, *, temperature: float) -> TowerModel | None:
        """Return the model stored under prefix in arrays (see `arrays`), or None when there is none."""
        if f"{prefix}.item_vectors" not in arrays:
            return None
        get = lambda name: np.asarray(arrays[f"{prefix}.{name}"])  # noqa: E731
        return cls(item_vectors=get("item_vectors"), item_preferences=get("item_preferences"),
                   temperature=temperature, **{name: get(name) for name in USER_ARRAYS})
