"""A trained SASRec as numpy arrays, and its forward pass for one sequence: what serving runs instead of torch.

The arrays are exported by domain.learning.sasrec from models.sasrec.SASRec; `encode` reproduces that module's
forward pass (in eval mode) at the last position only, so one request costs a few small matrix products and one
matrix-vector product over the item embeddings.

A model trained with event features also holds the embeddings of its event types (by name: a type it never saw
reads row 0, zero) and of its value buckets, with the bucket edges of each type: a value's bucket is its quantile
among that type's training values (`value_buckets`), so stars and watch seconds each spread over the buckets.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    event_types: tuple[str, ...] = ()  # the type of each type_embeddings row from 1 (row 0: unknown, zero)
    type_embeddings: np.ndarray | None = None  # float32 (types + 1) x d; None: the model reads no event types
    bucket_embeddings: np.ndarray | None = None  # float32 (buckets + 1) x d, row 0: no value; None: no values
    value_edges: np.ndarray | None = None  # float64 (1 or types + 1) x (buckets - 1): see value_buckets

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

    @property
    def reads_events(self) -> bool:
        """Return whether the model reads event types or values beside the items."""
        return self.type_embeddings is not None or self.bucket_embeddings is not None

    @cached_property
    def _type_rows(self) -> dict[str, int]:
        return {name: row for row, name in enumerate(self.event_types, start=1)}

    def type_rows(self, types: Sequence[str | None]) -> np.ndarray:
        """Return each event type's row of type_embeddings (0: a type the model does not know, or none)."""
        rows = self._type_rows
        return np.fromiter((rows.get(t, 0) if t is not None else 0 for t in types), dtype=np.int64, count=len(types))

    def vocabulary(self, model_items: np.ndarray) -> np.ndarray:
        """Return the newest max_len of the items (model catalogue indexes, oldest first) that the model knows,
        as vocabulary positions."""
        return self.inputs(model_items).items

    def inputs(self, model_items: np.ndarray, types: Sequence[str | None] | None = None,
               values: np.ndarray | None = None) -> Inputs:
        """Return the newest max_len of the items (model catalogue indexes, oldest first) that the model knows, as
        vocabulary positions, with their events' type rows and value buckets (types and values aligned with
        model_items; None: unknown)."""
        lookup = self._vocabulary_of
        idx = np.asarray(model_items, dtype=np.int64)
        inside = (idx >= 0) & (idx < len(lookup))
        found = np.zeros(len(idx), dtype=np.int64)
        found[inside] = lookup[idx[inside]]
        keep = np.flatnonzero(found > 0)[-self.max_len :]
        type_rows = buckets = None
        if self.type_embeddings is not None or self.bucket_embeddings is not None:
            type_rows = np.zeros(len(keep), dtype=np.int64) if types is None else \
                self.type_rows([types[k] for k in keep.tolist()])
        if self.bucket_embeddings is not None:
            kept_values = np.full(len(keep), np.nan) if values is None else np.asarray(values, np.float64)[keep]
            buckets = value_buckets(self.value_edges, kept_values, type_rows)
        return Inputs(found[keep], type_rows if self.type_embeddings is not None else None, buckets)

    def encode(self, sequence: np.ndarray, types: np.ndarray | None = None,
               buckets: np.ndarray | None = None) -> np.ndarray:
        """Return the hidden state after the newest item of a sequence of vocabulary positions (oldest first), with
        its events' type rows and value buckets when the model reads them (None: all unknown)."""
        n = len(sequence)
        x = self.item_embeddings[sequence].astype(np.float32) * np.float32(np.sqrt(self.dim)) + self.positions[-n:]
        if self.type_embeddings is not None and types is not None:
            x = x + self.type_embeddings[types]
        if self.bucket_embeddings is not None:
            x = x + self.bucket_embeddings[buckets if buckets is not None else np.zeros(n, dtype=np.int64)]
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

    def logits(self, sequence: np.ndarray, types: np.ndarray | None = None,
               buckets: np.ndarray | None = None) -> np.ndarray:
        """Return the next-item logit of every vocabulary item (aligned with `items`)."""
        return self._output @ self.encode(sequence, types, buckets)

    def next_item_scores(self, model_items: np.ndarray, size: int, types: Sequence[str | None] | None = None,
                         values: np.ndarray | None = None) -> np.ndarray | None:
        """Return next-item probabilities over the model catalogue (size items; 0 outside the vocabulary) after
        a history of model catalogue indexes (with its events' types and values, aligned, where known), or None
        when the model knows none of its items."""
        sequence = self.inputs(model_items, types, values)
        if len(sequence.items) == 0:
            return None
        logits = self.logits(sequence.items, sequence.types, sequence.buckets).astype(np.float64)
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
        if self.type_embeddings is not None:  # the names as a fixed-width text array: no pickle to store them
            out["event_types"] = np.array(self.event_types, dtype=str)
            out["type_embeddings"] = self.type_embeddings
        if self.bucket_embeddings is not None:
            out["bucket_embeddings"], out["value_edges"] = self.bucket_embeddings, self.value_edges
        return {f"{prefix}.{name}": array for name, array in out.items()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], prefix: str, *, heads: int) -> SequenceModel | None:
        """Return the model stored under prefix in arrays (see `arrays`), or None when there is none."""
        if f"{prefix}.items" not in arrays:
            return None
        get = lambda name: np.asarray(arrays[f"{prefix}.{name}"])  # noqa: E731
        optional = lambda name: get(name) if f"{prefix}.{name}" in arrays else None  # noqa: E731
        types = optional("event_types")
        return cls(items=get("items"), item_embeddings=get("item_embeddings"), positions=get("positions"),
                   blocks={name: get(name) for name in BLOCK_ARRAYS}, norm_w=get("norm_w"), norm_b=get("norm_b"),
                   heads=heads, event_types=() if types is None else tuple(str(t) for t in types.tolist()),
                   type_embeddings=optional("type_embeddings"), bucket_embeddings=optional("bucket_embeddings"),
                   value_edges=optional("value_edges"))


@dataclass(frozen=True)
class Inputs:
    """One sequence as the model reads it: vocabulary positions, oldest first, and their events' embedding rows."""

    items: np.ndarray  # int64 vocabulary positions
    types: np.ndarray | None  # int64 type_embeddings rows (None: the model reads no types)
    buckets: np.ndarray | None  # int64 bucket_embeddings rows (None: the model reads no values)


def value_edges(values: np.ndarray, type_rows: np.ndarray | None, types: int, buckets: int) -> np.ndarray:
    """Return the bucket edges of each type row (row 0: every value, for a type unknown to the model): the
    quantiles of its finite values that cut them into at most `buckets` equal shares (each a value seen, so that
    few distinct values, as star ratings, get a bucket each), +inf where fewer are distinct. Without type rows
    there is one row."""
    rows = np.full((types + 1 if type_rows is not None else 1, buckets - 1), np.inf)
    finite = np.isfinite(values)
    cuts = np.linspace(0.0, 1.0, buckets + 1)[1:-1]
    for row in range(len(rows)):
        picked = values[finite & (type_rows == row)] if row > 0 else values[finite]
        if len(picked):
            edges = np.unique(np.quantile(picked, cuts, method="higher"))  # values seen: each distinct one apart
            edges = edges[edges > picked.min()]  # an edge at the least value would leave bucket 1 empty
            rows[row, : len(edges)] = edges
    return rows


def value_buckets(edges: np.ndarray, values: np.ndarray, type_rows: np.ndarray | None) -> np.ndarray:
    """Return each value's bucket: 0 for none (NaN), else 1 + the number of its type row's edges at or below it."""
    values = np.asarray(values, dtype=np.float64)
    rows = edges[type_rows if type_rows is not None and len(edges) > 1 else np.zeros(len(values), dtype=np.int64)]
    finite = np.isfinite(values)
    above = (np.where(finite, values, -np.inf)[:, None] >= rows).sum(axis=1)
    return np.where(finite, 1 + above, 0).astype(np.int64)


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    mean = x.mean(axis=-1, keepdims=True)
    var = ((x - mean) ** 2).mean(axis=-1, keepdims=True)
    return (x - mean) / np.sqrt(var + np.float32(LN_EPS)) * weight + bias


def _softmax(scores: np.ndarray) -> np.ndarray:
    e = np.exp(scores - scores.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)
