"""SASRec (Kang & McAuley, ICDM 2018): a causal transformer over a user's recent items that predicts the next one.

Layers and `forward` only: training lives in domain.learning.sasrec, and serving runs the same forward pass in
numpy (domain.learning.sequences) from the exported weights, so that serving never imports torch.

Item 0 is padding; real items are 1..n_items. Sequences are left-padded and right-aligned: the newest item always
sits at the last position, so a sequence of any length up to max_len uses the last positional embeddings. A query
attends to itself and to earlier real items, never to padding, which makes an unpadded sequence give exactly the
outputs of its padded form.

Event features (optional): where a scenario's histories carry more than one event type, or event values (watch
seconds, ratings), each position adds an embedding of its event's type (row 0: padding or a type unknown to the
model) and of its value's bucket (row 0: no value; domain.learning.sasrec chooses the bucket edges). Both start at
zero, so an untrained row adds nothing; a model built without them is the plain SASRec.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LN_EPS = 1e-6


class _Block(nn.Module):
    """Pre-norm transformer block: causal self-attention, then a position-wise feed-forward layer."""

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.query, self.key, self.value = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=LN_EPS)
        self.ffn_in, self.ffn_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """Return the block's output for x (batch x length x dim); allowed: batch x length x length keys."""
        b, n, d = x.shape
        h = self.attn_norm(x)

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        q, k, v = split(self.query(h)), split(self.key(h)), split(self.value(h))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        attended = (self.dropout(torch.softmax(scores, dim=-1)) @ v).transpose(1, 2).reshape(b, n, d)
        x = x + self.dropout(self.out(attended))
        return x + self.dropout(self.ffn_out(self.dropout(torch.relu(self.ffn_in(self.ffn_norm(x))))))


class SASRec(nn.Module):
    """Item and positional embeddings (plus event-type and value-bucket embeddings when `types` / `buckets` are
    positive), `blocks` causal transformer blocks and a final layer norm.

    The output at each position is scored against the item embeddings (tied input and output embeddings): a dot
    product per candidate item, which serving computes as one matrix-vector product.
    """

    def __init__(self, n_items: int, *, max_len: int = 50, dim: int = 64, blocks: int = 2, heads: int = 1,
                 dropout: float = 0.2, types: int = 0, buckets: int = 0) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.max_len, self.heads = max_len, heads
        self.items = nn.Embedding(n_items + 1, dim, padding_idx=0)
        self.positions = nn.Embedding(max_len, dim)
        # Row 0 of types is padding and unknown types (kept at zero); row 0 of buckets is "no value" (learned).
        self.types = nn.Embedding(types + 1, dim, padding_idx=0) if types > 0 else None
        self.buckets = nn.Embedding(buckets + 1, dim) if buckets > 0 else None
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(blocks))
        self.norm = nn.LayerNorm(dim, eps=LN_EPS)
        nn.init.normal_(self.items.weight, std=dim**-0.5)
        with torch.no_grad():
            self.items.weight[0].zero_()
            for table in (self.types, self.buckets):
                if table is not None:
                    table.weight.zero_()

    def forward(self, items: torch.Tensor, types: torch.Tensor | None = None,
                buckets: torch.Tensor | None = None) -> torch.Tensor:
        """Return the hidden state at every position (batch x max_len x dim) of left-padded item sequences, with
        each position's event type and value bucket (aligned with items; ignored by a model without them)."""
        n = items.shape[1]
        real = items > 0
        x = self.items(items) * math.sqrt(self.items.embedding_dim) + self.positions.weight[-n:]
        if self.types is not None and types is not None:
            x = x + self.types(types)
        if self.buckets is not None and buckets is not None:
            x = x + self.buckets(buckets)
        x = self.dropout(x) * real[..., None]
        causal = torch.ones(n, n, dtype=torch.bool, device=items.device).tril()
        # A padded query attends to itself only, so no row of the softmax is empty (its output is unused).
        allowed = causal & (real[:, None, :] | torch.eye(n, dtype=torch.bool, device=items.device))
        for block in self.blocks:
            x = block(x, allowed) * real[..., None]
        return self.norm(x)

    def item_vectors(self) -> torch.Tensor:
        """Return the embeddings that outputs are scored against (row 0, padding, included)."""
        return self.items.weight
