"""Train/test splits of interaction columns: per-user temporal (the latest share held out), random, or leave-one-out
(the newest interaction held out, as in the ML-1M SASRec papers)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEST_SHARE = 0.2
MIN_INTERACTIONS = 5  # users with fewer interactions stay in training only: too little to hold out
DESCRIPTIONS = {
    "temporal": f"each user's latest {TEST_SHARE:.0%} held out",
    "random": f"a random {TEST_SHARE:.0%} of each user's interactions held out",
    "loo": "leave-one-out: each user's newest interaction held out",
}


@dataclass(frozen=True)
class Split:
    """Which interactions train, and each evaluated user's held-out items."""

    train: np.ndarray  # bool mask over the interactions
    test: dict[str, frozenset[str]]  # user -> held-out item ids (users with a held-out part only)

    @property
    def users(self) -> list[str]:
        return sorted(self.test)


def depends_on_seed(how: str) -> bool:
    """Return whether the seed changes the split (only the random one draws)."""
    return how == "random"


def split_interactions(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray, *, how: str = "temporal",
                       test_share: float = TEST_SHARE, min_interactions: int = MIN_INTERACTIONS,
                       seed: int = 7) -> Split:
    """Hold out, of each user with at least min_interactions, the latest (temporal) or randomly drawn (random)
    share of interactions, or the single newest one (loo)."""
    if how not in DESCRIPTIONS:
        raise ValueError(f"unknown split {how!r}; expected one of: {', '.join(DESCRIPTIONS)}")
    n = len(user_ids)
    # Ties in time keep their order in the file (the later line counts as newer), so a split is reproducible.
    key = np.random.default_rng(seed).random(n) if how == "random" else timestamps
    order = np.lexsort((np.arange(n), key, user_ids))
    users = user_ids[order]
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]])
    ends = np.r_[starts[1:], n]
    train = np.ones(n, dtype=bool)
    for start, end in zip(starts, ends, strict=True):
        size = end - start
        if size >= min_interactions:
            held = 1 if how == "loo" else max(1, int(round(size * test_share)))
            train[order[end - held : end]] = False
    return Split(train=train, test=_held_out(user_ids, item_ids, ~train))


def _held_out(user_ids: np.ndarray, item_ids: np.ndarray, mask: np.ndarray) -> dict[str, frozenset[str]]:
    test: dict[str, set[str]] = {}
    for user, item in zip(user_ids[mask].tolist(), item_ids[mask].tolist(), strict=True):
        test.setdefault(str(user), set()).add(str(item))
    return {user: frozenset(items) for user, items in test.items()}
