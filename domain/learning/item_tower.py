"""The two-tower item tower as numpy arrays: an item's vector from its features alone, without torch.

Exported by domain.learning.two_tower from models.two_tower.TwoTower with what the features need to be coded as
training coded them: the category and tag vocabularies, the numeric attributes' means and scales, and the content
model whose embeddings the tower read. An item training never saw has no id embedding, exactly like an item too rare
for one in training (the tower learnt to place those by dropping ids at random), so `vectors` gives a new item the
vector the torch tower would give it. Serving and the item-vector job call it for items added after training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from domain.learning.content import ContentModel

MAX_LABELS = 16  # categories and tags read per item (as training reads them)
CLIP = 5.0  # standardised numeric values are clipped to +-CLIP
ARRAYS = ("category_embedding", "tag_embedding", "numeric_mean", "numeric_scale", "numeric_w", "numeric_b",
          "content_w", "item_in_w", "item_in_b", "item_out_w", "item_out_b")


@dataclass(frozen=True)
class ItemTower:
    """The item tower's weights (matrices stored input x output) and how an item's features are coded."""

    categories: tuple[str, ...]  # the label of code i + 1
    tags: tuple[str, ...]
    numeric_keys: tuple[str, ...]
    numeric_mean: np.ndarray  # float64 per key
    numeric_scale: np.ndarray  # float64 per key (1 where the training values did not vary)
    category_embedding: np.ndarray  # float32 (labels + 1) x d, row 0 (padding) zero
    tag_embedding: np.ndarray
    numeric_w: np.ndarray  # float32 keys x d (0 x d: no numeric attribute)
    numeric_b: np.ndarray  # float32 d (zeros: no numeric attribute)
    content_w: np.ndarray  # float32 content dim x d (0 x d: no content model)
    item_in_w: np.ndarray
    item_in_b: np.ndarray
    item_out_w: np.ndarray
    item_out_b: np.ndarray
    content: ContentModel | None = None  # embeds an item into the content space the tower was trained on

    def __post_init__(self) -> None:
        object.__setattr__(self, "_category_codes", {label: i + 1 for i, label in enumerate(self.categories)})
        object.__setattr__(self, "_tag_codes", {label: i + 1 for i, label in enumerate(self.tags)})

    @property
    def dim(self) -> int:
        return int(self.item_in_w.shape[1])

    def vectors(self, items: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Return the L2-normalised vectors (float32, items x d) of item documents (MongoDB shape: `categories`,
        `tags`, `attributes`, and `title` and `published_at` for the content model), with no id embedding."""
        if not items:
            return np.zeros((0, self.dim), dtype=np.float32)
        x = _label_mean(self.category_embedding, _codes(items, "categories", self._category_codes))  # type: ignore[attr-defined]
        x += _label_mean(self.tag_embedding, _codes(items, "tags", self._tag_codes))  # type: ignore[attr-defined]
        if self.numeric_keys:
            x += self._numeric(items) @ self.numeric_w + self.numeric_b
        if self.content is not None and self.content_w.shape[0]:
            x += self.content.embed(items) @ self.content_w
        x = x + np.maximum(x @ self.item_in_w + self.item_in_b, 0.0) @ self.item_out_w + self.item_out_b
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        return (x / np.maximum(norms, 1e-12)).astype(np.float32)

    def _numeric(self, items: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Return the standardised numeric attributes (0 where missing), as training coded them."""
        values = np.full((len(items), len(self.numeric_keys)), np.nan, dtype=np.float64)
        for r, item in enumerate(items):
            attributes = item.get("attributes") or {}
            for c, key in enumerate(self.numeric_keys):
                if is_number(value := attributes.get(key)):
                    values[r, c] = float(value)
        values = np.clip((values - self.numeric_mean) / self.numeric_scale, -CLIP, CLIP)
        return np.nan_to_num(values, nan=0.0).astype(np.float32)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Return every array by file name stem (`prefix.name`), for the model's storage."""
        return {f"{prefix}.{name}": getattr(self, name) for name in ARRAYS}

    def labels(self) -> dict[str, list[str]]:
        """Return the vocabularies (JSON), for the model's storage."""
        return {"categories": list(self.categories), "tags": list(self.tags), "numericKeys": list(self.numeric_keys)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str, labels: Mapping[str, Sequence[str]],
                    content: ContentModel | None) -> ItemTower | None:
        """Return the tower stored under prefix (see `arrays` and `labels`), or None when there is none."""
        if f"{prefix}.item_in_w" not in arrays:
            return None
        return cls(categories=tuple(labels["categories"]), tags=tuple(labels["tags"]),
                   numeric_keys=tuple(labels["numericKeys"]), content=content,
                   **{name: np.asarray(arrays[f"{prefix}.{name}"]) for name in ARRAYS})


def is_number(value: Any) -> bool:
    """Return whether an attribute value is a finite number (a bool is not)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def coded(labels: Sequence[str], code: Mapping[str, int]) -> list[int]:
    """Return an item's first MAX_LABELS distinct labels that have a code, as codes."""
    return [code[label] for label in dict.fromkeys(labels) if label in code][:MAX_LABELS]


def _codes(items: Sequence[Mapping[str, Any]], field: str, code: Mapping[str, int]) -> np.ndarray:
    rows = [coded(item.get(field) or (), code) for item in items]
    out = np.zeros((len(rows), max([1, *map(len, rows)])), dtype=np.int64)
    for r, row in enumerate(rows):
        out[r, : len(row)] = row
    return out


def _label_mean(embedding: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Return the mean embedding of each row's label codes (0 is no label; a row without labels gives zeros)."""
    real = codes > 0
    total = (np.asarray(embedding)[codes] * real[..., None]).sum(axis=1, dtype=np.float32)
    return total / np.maximum(real.sum(axis=1, keepdims=True), 1).astype(np.float32)
