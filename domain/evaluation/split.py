"""Train/test splits of interaction columns: per-user temporal (the latest share held out) or random."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEST_SHARE = 0.2
MIN_INTERACTIONS = 5  # users with fewer interactions stay in training only: too little to hold out


@dataclass(frozen=True)
class Split:
    """Which interactions train, and each evaluated user's held-out items."""

    train: np.ndarray  # bool mask over the interactions
    test: dict[str, frozenset[str]]  # user -> held-out item ids (users with a held-out part only)

    @property
    def users(self) -> list[str]:
        return sorted(self.test)


def split_interactions(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray, *, how: str = "temporal",
                       test_share: float = TEST_SHARE, min_interactions: int = MIN_INTERACTIONS,
                       seed: int = 7) -> Split:
    """Hold out each user's latest (temporal) or randomly drawn (random) share of interactions."""
    if how not in ("temporal", "random"):
        raise ValueError(f"unknown split {how!r}; expected temporal or random")
    n = len(user_ids)
    # Ties in time keep their order in the file, so a split is reproducible.
    key = timestamps if how == "temporal" else np.random.default_rng(seed).random(n)
    order = np.lexsort((np.arange(n), key, user_ids))
    users = user_ids[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], n]
    train = np.ones(n, dtype=bool)
    for start, end in zip(starts, ends, strict=True):
        size = end - start
        if size >= min_interactions:
            held = max(1, int(round(size * test_share)))
            train[order[end - held : end]] = False
    return Split(train=train, test=_held_out(user_ids, item_ids, ~train))


def _held_out(user_ids: np.ndarray, item_ids: np.ndarray, mask: np.ndarray) -> dict[str, frozenset[str]]:
    test: dict[str, set[str]] = {}
    for user, item in zip(user_ids[mask].tolist(), item_ids[mask].tolist(), strict=True):
        test.setdefault(str(user), set()).add(str(item))
    return {user: frozenset(items) for user, items in test.items()}
