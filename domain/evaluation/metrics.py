"""Top-k metrics with binary relevance (any held-out interaction is relevant), and list-level measures.

NDCG@k: DCG over the list with gain 1 per relevant item and discount log2(rank + 1), over the DCG of an ideal list
of min(k, |relevant|) hits. Recall@k: hits / |relevant|. MAP@k: the mean over users of the sum of precision@i at
each relevant rank i, over min(k, |relevant|). Coverage: distinct recommended items over active catalogue items.
Intra-list diversity: 1 - the mean pairwise Jaccard index of category sets within a list. Novelty: the mean
self-information -log2((users of the item + 1) / (training users + 1)) of the recommended items.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations

import numpy as np


@dataclass
class MetricSums:
    """Running sums over evaluated users; `summary()` turns them into the reported means."""

    k: int
    users: int = 0
    ndcg: float = 0.0
    recall: float = 0.0
    ap: float = 0.0
    diversity: float = 0.0
    diversity_lists: int = 0
    novelty: float = 0.0
    novelty_items: int = 0
    recommended: set[str] = field(default_factory=set)

    def add(self, ranked: Sequence[str], relevant: frozenset[str], categories: Mapping[str, tuple[str, ...]],
            self_information: Mapping[str, float]) -> None:
        """Score one user's list against their held-out items."""
        top = list(ranked[: self.k])
        hits = np.array([item in relevant for item in top], dtype=np.float64)
        self.users += 1
        self.ndcg += ndcg(hits, len(relevant), self.k)
        self.recall += hits.sum() / len(relevant) if relevant else 0.0
        self.ap += average_precision(hits, len(relevant), self.k)
        self.recommended.update(top)
        if len(top) >= 2:
            self.diversity += intra_list_diversity([categories.get(i, ()) for i in top])
            self.diversity_lists += 1
        self.novelty += sum(self_information.get(i, 0.0) for i in top)
        self.novelty_items += len(top)

    def summary(self, catalogue_size: int) -> dict[str, float]:
        """Return the means (and coverage) over the users added."""
        users = max(self.users, 1)
        return {
            "ndcg": self.ndcg / users, "recall": self.recall / users, "map": self.ap / users,
            "coverage": len(self.recommended) / max(catalogue_size, 1),
            "diversity": self.diversity / max(self.diversity_lists, 1),
            "novelty": self.novelty / max(self.novelty_items, 1),
        }


def ndcg(hits: np.ndarray, relevant: int, k: int) -> float:
    """Return NDCG@k of a 0/1 hit vector (best first)."""
    if relevant == 0:
        return 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    ideal = discounts[: min(k, relevant)].sum()
    return float((hits[:k] * discounts[: len(hits[:k])]).sum() / ideal)


def average_precision(hits: np.ndarray, relevant: int, k: int) -> float:
    """Return AP@k of a 0/1 hit vector (best first)."""
    hits = hits[:k]
    if relevant == 0 or not hits.any():
        return 0.0
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / min(k, relevant))


def intra_list_diversity(categories: Sequence[tuple[str, ...]]) -> float:
    """Return 1 - the mean pairwise Jaccard index of the items' category sets (two empty sets share nothing)."""
    sets = [frozenset(c) for c in categories]
    pairs = list(combinations(sets, 2))
    if not pairs:
        return 0.0
    similarity = [len(a & b) / len(a | b) if a | b else 0.0 for a, b in pairs]
    return 1.0 - float(np.mean(similarity))


def self_information(counts: Mapping[str, int], users: int) -> dict[str, float]:
    """Return -log2 of each item's smoothed share of training users."""
    return {item: float(-np.log2((c + 1) / (users + 1))) for item, c in counts.items()}
