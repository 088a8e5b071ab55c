"""A trained SASRec as numpy arrays, and its forward pass for one sequence: what serving runs instead of torch.

The arrays are exported by domain.learning.sasrec from models.sasrec.SASRec; `encode` reproduces that module's
forward pass (in eval mode) at the last position only, so one request costs a few small matrix products and one
matrix-vector product over the item embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

LN_EPS = 1e-6  # models.sasrec.LN_EPS (not imported: that module imports torch)
# Per-block weights, stacked over blocks; matrices are stored input x output (x @ w), as numpy multiplies.
BLOCK_ARRAYS = ("attn_norm_w", "attn_norm_b", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "bo",
                "ffn_norm_w", "ffn_norm_b", "w1", "b1", "w2", "b2")


@dataclass(frozen=True)
class SequenceModel:
    """SASRec weights over a vocabulary of trained items (vocabulary position p + 1 is model item items[p])."""

    items: np.ndarray  # int32 (vocabulary): the model catalogue index of each vocabulary entry
    item_embeddings: np.ndarray  # float32 (vocabulary + 1) x d; row 0 is padding
    positions: np.ndarray  # float32 max_len x d; a sequence of n items uses the last n rows
    blocks: dict[str, np.ndarray]  # BLOCK_ARRAYS, each with a leading blocks axis
    norm_w: np.ndarray  # float32 d: the final layer norm
    norm_b: np.ndarray
    heads: int

    @property
    def max_len(self) -> int:
        return int(self.positions.shape[0])

    @property
    def dim(self) -> int:
        return int(self.positions.shape[1])

    @cached_property
    def _vocabulary_of(self) -> np.ndarray:
        """Return model catalogue index -> vocabulary position (0: not in the vocabulary)."""
        size = int(self.items.max()) + 1 if len(self.items) else 0
        out = np.zeros(size, dtype=np.int64)
        out[np.asarray(self.items, dtype=np.int64)] = np.arange(1, len(self.items) + 1)
        return out

    @cached_property
    def _output(self) -> np.ndarray:
        """Return the item embeddings scored against (padding dropped), in memory and contiguous."""
        return np.ascontiguousarray(self.item_embeddings[1:], dtype=np.float32)

    def vocabulary(self, model_items: np.ndarray) -> np.ndarray:
        """Return the newest max_len of the items (model catalogue indexes, oldest first) that the model knows,
        as vocabulary positions."""
        lookup = self._vocabulary_of
        idx = np.asarray(model_items, dtype=np.int64)
        idx = idx[(idx >= 0) & (idx < len(lookup))]
        found = lookup[idx]
        return found[found > 0][-self.max_len :]

    def encode(self, sequence: np.ndarray) -> np.ndarray:
        """Return the hidden state after the newest item of a sequence of vocabulary positions (oldest first)."""
        n = len(sequence)
        x = self.item_embeddings[sequence].astype(np.float32) * np.float32(np.sqrt(self.dim)) + self.positions[-n:]
        depth = len(self.blocks["wq"])
        for b in range(depth):
            x = self._block(x, b, last_only=b == depth - 1)
        return _layer_norm(x[-1], self.norm_w, self.norm_b)

    def _block(self, x: np.ndarray, b: int, *, last_only: bool) -> np.ndarray:
        w = {name: self.blocks[name][b] for name in BLOCK_ARRAYS}
        h = _layer_norm(x, w["attn_norm_w"], w["attn_norm_b"])
        n, d = x.shape
        heads, dh = self.heads, d // self.heads
        queries = h[-1:] if last_only else h  # the last block's other rows feed nothing
        q = (queries @ w["wq"] + w["bq"]).reshape(len(queries), heads, dh).transpose(1, 0, 2)
        k = (h @ w["wk"] + w["bk"]).reshape(n, heads, dh).transpose(1, 0, 2)
        v = (h @ w["wv"] + w["bv"]).reshape(n, heads, dh).transpose(1, 0, 2)
        scores = q @ k.transpose(0, 2, 1) / np.float32(np.sqrt(dh))
        if not last_only:
            scores = np.where(np.tri(n, dtype=bool), scores, np.float32(-np.inf))
        attended = (_softmax(scores) @ v).transpose(1, 0, 2).reshape(len(queries), d)
        x = (x[-1:] if last_only else x) + attended @ w["wo"] + w["bo"]
        ffn = np.maximum(_layer_norm(x, w["ffn_norm_w"], w["ffn_norm_b"]) @ w["w1"] + w["b1"], 0.0)
        return x + ffn @ w["w2"] + w["b2"]

    def logits(self, sequence: np.ndarray) -> np.ndarray:
        """Return the next-item logit of every vocabulary item (aligned with `items`)."""
        return self._output @ self.encode(sequence)

    def next_item_scores(self, model_items: np.ndarray, size: int) -> np.ndarray | None:
        """Return next-item probabilities over the model catalogue (size items; 0 outside the vocabulary) after
        a history of model catalogue indexes, or None when the model knows none of its items."""
        sequence = self.vocabulary(model_items)
        if len(sequence) == 0:
            return None
        logits = self.logits(sequence).astype(np.float64)
        probabilities = np.exp(logits - logits.max())
        probabilities /= probabilities.sum()
        out = np.zeros(size, dtype=np.float32)
        inside = self.items < size
        out[self.items[inside]] = probabilities[inside]
        return out

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """Return every array by file name stem (`prefix.name`), for the model's storage."""
        out = {"items": self.items, "item_embeddings": self.item_embeddings, "positions": self.positions,
               "norm_w": self.norm_w, "norm_b": self.norm_b, **self.blocks}
        return {f"{prefix}.{name}": array for name, array in out.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, *, heads: int) -> SequenceModel | None:
        """Return the model stored under prefix in arrays (see `arrays`), or None when there is none."""
        if f"{prefix}.items" not in arrays:
            return None
        get = lambda name: np.asarray(arrays[f"{prefix}.{name}"])  # noqa: E731
        return cls(items=get("items"), item_embeddings=get("item_embeddings"), positions=get("positions"),
                   blocks={name: get(name) for name in BLOCK_ARRAYS}, norm_w=get("norm_w"), norm_b=get("norm_b"),
                   heads=heads)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(LN_EPS)) * weight + bias


def _softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
