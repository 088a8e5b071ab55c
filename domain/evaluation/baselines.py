"""Baselines scored in the same run: popularity (training counts) and `implicit` ALS tuned on a validation slice."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from domain.evaluation.metrics import ndcg
from domain.evaluation.split import split_interactions

SEED = 7
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class AlsGrid:
    """The ALS settings tried; the best by validation NDCG@k is refit on all training data."""

    factors: tuple[int, ...] = (16, 32, 64, 128)
    regularization: tuple[float, ...] = (0.01, 0.1, 1.0)
    iterations: tuple[int, ...] = (15,)
    alpha: tuple[float, ...] = (1.0,)

    def settings(self) -> list[dict[str, float]]:
        """Return every combination as keyword arguments."""
        keys = ("factors", "regularization", "iterations", "alpha")
        return [dict(zip(keys, values, strict=True)) for values in
                itertools.product(self.factors, self.regularization, self.iterations, self.alpha)]


@dataclass(frozen=True)
class Matrix:
    """Training pairs as a users x items 0/1 matrix, with the ids of its rows and columns."""

    users: list[str]
    items: list[str]
    values: sp.csr_matrix

    @classmethod
    def build(cls, user_ids: np.ndarray, item_ids: np.ndarray, items: Sequence[str]) -> Matrix:
        """Build from interaction columns over the catalogue's items (unknown items dropped)."""
        column = {item: i for i, item in enumerate(items)}
        cols = np.array([column.get(i, -1) for i in item_ids.tolist()], dtype=np.int64)
        users, rows = np.unique(user_ids[cols >= 0], return_inverse=True)
        values = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols[cols >= 0])),
                               shape=(len(users), len(items)))
        values.data[:] = 1.0  # repeated pairs count once
        return cls([str(u) for u in users], list(items), values)


def popularity_top_k(matrix: Matrix, users: Sequence[str], k: int) -> dict[str, list[str]]:
    """Return each user's k most popular items (users per item) among those they have not interacted with."""
    counts = np.asarray(matrix.values.sum(axis=0)).ravel()
    order = np.argsort(-counts, kind="stable")
    row = {u: i for i, u in enumerate(matrix.users)}
    out = {}
    for user in users:
        seen = set(matrix.values[row[user]].indices.tolist()) if user in row else set()
        out[user] = [matrix.items[i] for i in _first_unseen(order, seen, k)]
    return out


def _first_unseen(order: np.ndarray, seen: set[int], k: int) -> list[int]:
    picked = []
    for i in order.tolist():
        if i not in seen:
            picked.append(i)
            if len(picked) == k:
                break
    return picked


def fit_als(values: sp.csr_matrix, settings: dict[str, float]):  # noqa: ANN201 (implicit's model class)
    """Fit implicit's ALS on a 0/1 users x items matrix."""
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=int(settings["factors"]), regularization=settings["regularization"],
                                        iterations=int(settings["iterations"]), alpha=settings["alpha"],
                                        random_state=SEED, calculate_training_loss=False)
        model.fit(values, show_progress=False)
    return model


def als_top_k(model, matrix: Matrix, users: Sequence[str], k: int) -> dict[str, list[str]]:  # noqa: ANN001
    """Return each user's k best items by the model, their training items excluded."""
    row = {u: i for i, u in enumerate(matrix.users)}
    known = [u for u in users if u in row]
    rows = np.array([row[u] for u in known], dtype=np.int64)
    with threadpool_limits(1, "blas"):
        ids, _ = model.recommend(rows, matrix.values[rows], N=k, filter_already_liked_items=True)
    return {u: [matrix.items[i] for i in r.tolist() if i >= 0] for u, r in zip(known, ids, strict=True)}


def tune_als(user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray, items: Sequence[str],
             grid: AlsGrid, k: int, how: str, progress: Progress | None = None) -> tuple[dict[str, float], float]:
    """Return the grid's best settings by NDCG@k on a validation split of the training data, and that NDCG."""
    inner = split_interactions(user_ids, item_ids, timestamps, how=how)
    matrix = Matrix.build(user_ids[inner.train], item_ids[inner.train], items)
    users = [u for u in inner.users if u in set(matrix.users)]
    best, best_score = grid.settings()[0], -1.0
    for done, settings in enumerate(grid.settings(), start=1):
        lists = als_top_k(fit_als(matrix.values, settings), matrix, users, k)
        score = float(np.mean([_ndcg(lists[u], inner.test[u], k) for u in users])) if users else 0.0
        if score > best_score:
            best, best_score = settings, score
        if progress is not None:
            progress(done, len(grid.settings()))
    return best, best_score


def _ndcg(ranked: Sequence[str], relevant: frozenset[str], k: int) -> float:
    return ndcg(np.array([i in relevant for i in ranked[:k]], dtype=np.float64), len(relevant), k)
