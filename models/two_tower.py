"""Two-tower retrieval (Yi et al., "Sampling-bias-corrected neural modeling for large corpus item
recommendations", RecSys 2019): an item tower over an item's id and features, a user tower over the user's newest
items, each ending in an L2-normalised vector; a user-item score is their dot product over a temperature.

Layers and `forward` only: training lives in domain.learning.two_tower, which exports every catalogue item's vector
and the user tower's weights as numpy arrays (domain.learning.towers), so that serving never imports torch.

Items are coded as catalogue index + 1; code 0 is padding (no item, no features). The item features are buffers
indexed by code, so a batch passes codes only. An item has an id embedding when training saw it often enough
(`ids[code] > 0`); the others, and items without interactions, are their features alone, which training teaches
the tower to use by dropping ids at random (`id_dropout`): that is what makes a new item retrievable.

The user tower is attention-free: a softmax over learned per-position logits (newest last) weighs the item vectors
of the user's newest items and the category preferences of those items; a residual MLP mixes the two.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

FEATURES = ("ids", "categories", "tags", "numeric", "content")  # buffers by code; row 0 is padding


def label_mean(embedding: nn.EmbeddingBag, codes: torch.Tensor) -> torch.Tensor:
    """Return the mean embedding of each row of label codes (0 is no label; a row without labels gives zeros)."""
    return embedding(codes.reshape(-1, codes.shape[-1])).view(*codes.shape[:-1], -1)


class TwoTower(nn.Module):
    """Item tower: id + mean category + mean tag embeddings + linear maps of numeric attributes and the content
    vector, then a residual MLP. User tower: recency-weighted means of the history's item vectors and category
    preferences, then a residual MLP."""

    def __init__(self, features: Mapping[str, torch.Tensor], *, vocabulary: int, dim: int = 64, max_len: int = 50,
                 id_dropout: float = 0.1) -> None:
        super().__init__()
        for name in FEATURES:
            self.register_buffer(name, features[name], persistent=False)
        self.max_len, self.id_dropout = max_len, id_dropout
        n_categories = int(features["categories"].max()) + 1
        self.id_embedding = nn.Embedding(vocabulary + 1, dim, padding_idx=0)
        # Bags average their labels without materialising one vector per label slot (padding 0 left out).
        self.category_embedding = nn.EmbeddingBag(n_categories, dim, mode="mean", padding_idx=0)
        self.tag_embedding = nn.EmbeddingBag(int(features["tags"].max()) + 1, dim, mode="mean", padding_idx=0)
        width, content = features["numeric"].shape[1], features["content"].shape[1]
        self.numeric_map = nn.Linear(width, dim) if width else None
        self.content_map = nn.Linear(content, dim, bias=False) if content else None
        self.item_in, self.item_out = nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.preference_embedding = nn.EmbeddingBag(n_categories, dim, mode="mean", padding_idx=0)
        self.positions = nn.Parameter(torch.linspace(-1.0, 0.0, max_len))  # recency logits, newest last
        self.user_in, self.user_out = nn.Linear(2 * dim, dim), nn.Linear(dim, dim)
        for embedding in (self.id_embedding, self.category_embedding, self.tag_embedding, self.preference_embedding):
            nn.init.normal_(embedding.weight, std=dim**-0.5)
            with torch.no_grad():
                embedding.weight[0].zero_()

    def item_vectors(self, codes: torch.Tensor) -> torch.Tensor:
        """Return the L2-normalised vectors of items by code (any shape; a trailing dim axis is added)."""
        ids = self.ids[codes]
        if self.training and self.id_dropout > 0:
            ids = ids * (torch.rand(ids.shape, device=ids.device) >= self.id_dropout)
        x = self.id_embedding(ids) + label_mean(self.category_embedding, self.categories[codes]) \
            + label_mean(self.tag_embedding, self.tags[codes])
        if self.numeric_map is not None:
            x = x + self.numeric_map(self.numeric[codes])
        if self.content_map is not None:
            x = x + self.content_map(self.content[codes])
        x = x + self.item_out(torch.relu(self.item_in(x)))
        return F.normalize(x, dim=-1)

    def item_preferences(self, codes: torch.Tensor) -> torch.Tensor:
        """Return each item's category preference input to the user tower: its categories' mean embedding."""
        return label_mean(self.preference_embedding, self.categories[codes])

    def user_vectors(self, history: torch.Tensor, vectors: torch.Tensor,
                     preferences: torch.Tensor | None = None) -> torch.Tensor:
        """Return L2-normalised user vectors from left-padded histories of item codes (batch x n, n <= max_len,
        each with at least one item), those items' vectors (batch x n x dim) and, when already computed, their
        category preferences (likewise)."""
        real = history > 0
        logits = self.positions[-history.shape[1] :].expand(history.shape).masked_fill(~real, float("-inf"))
        weights = torch.softmax(logits, dim=-1)[..., None]
        mean = (weights * vectors).sum(1)
        if preferences is None:
            preferences = self.item_preferences(history)
        preference = (weights * preferences).sum(1)
        h = mean + self.user_out(torch.relu(self.user_in(torch.cat([mean, preference], dim=-1))))
        return F.normalize(h, dim=-1)

    def forward(self, history: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (user vectors, target item vectors) of a batch; each distinct item goes through the tower once."""
        unique, inverse = torch.unique(torch.cat([history.flatten(), targets]), return_inverse=True)
        vectors, preferences = self.item_vectors(unique), self.item_preferences(unique)
        n, shape = history.numel(), (*history.shape, -1)
        users = self.user_vectors(history, vectors[inverse[:n]].view(shape), preferences[inverse[:n]].view(shape))
        return users, vectors[inverse[n:]]
