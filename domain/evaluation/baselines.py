"""Baselines scored in the same run: popularity (training counts), recent popularity, EASE and `implicit` ALS.

Recent popularity, EASE and ALS are tuned on the test split itself: each setting of a small grid is scored by
NDCG@k on the held-out interactions and the best is reported. No deployed recommender can choose its settings that
way, so these rows are upper bounds of what each method reaches here, not fair competitors.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from domain.evaluation.metrics import ndcg

Progress = Callable[[int, int], None]
Lists = dict[str, list[str]]  # user -> ranked item ids
Candidate = TypeVar("Candidate")
Fitted = TypeVar("Fitted")
DAY_SECONDS = 86_400.0
RECENT_DAYS = (7.0, 30.0, 90.0, 365.0)  # windows before the newest training interaction
EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0)
EASE_MAX_ITEMS = 20_000  # EASE's item x item matrix beyond this needs GBs and hours
USER_BLOCK = 1024  # users scored at once by EASE (a block x items dense matrix)


@dataclass(frozen=True)
class AlsGrid:
    """The ALS settings tried; the best by NDCG@k on the test split is reported."""

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

    def rows(self, users: Sequence[str]) -> tuple[list[str], np.ndarray]:
        """Return the users that have a row (in the given order) and their row numbers."""
        row = {u: i for i, u in enumerate(self.users)}
        known = [u for u in users if u in row]
        return known, np.array([row[u] for u in known], dtype=np.int64)

    def user_counts(self) -> np.ndarray:
        """Return how many users interacted with each item."""
        return np.asarray(self.values.sum(axis=0)).ravel()


@dataclass(frozen=True)
class Tuned(Generic[Candidate]):
    """The grid's best setting by NDCG@k on the test split, its lists, and what the search cost."""

    best: Candidate
    ndcg: float
    lists: Lists
    grid_seconds: float  # every setting fitted and scored: what this row costs to obtain
    score_seconds: float  # the best setting's lists alone


def tune(candidates: Sequence[Candidate], fit: Callable[[Candidate], Fitted], rank: Callable[[Fitted], Lists],
         test: Mapping[str, frozenset[str]], k: int, progress: Progress | None = None) -> Tuned[Candidate]:
    """Fit and rank every candidate; keep the one whose lists score the highest mean NDCG@k on the test split
    (the first of equals)."""
    started = time.perf_counter()
    best: Tuned[Candidate] | None = None
    for done, candidate in enumerate(candidates, start=1):
        fitted = fit(candidate)
        ranked_at = time.perf_counter()
        lists = rank(fitted)
        score_seconds = time.perf_counter() - ranked_at
        score = float(np.mean([_ndcg(lists.get(u, []), test[u], k) for u in test])) if test else 0.0
        if best is None or score > best.ndcg:
            best = Tuned(candidate, score, lists, 0.0, score_seconds)
        if progress is not None:
            progress(done, len(candidates))
    if best is None:
        raise ValueError("nothing to tune: the grid is empty")
    return Tuned(best.best, best.ndcg, best.lists, time.perf_counter() - started, best.score_seconds)


def popularity_top_k(matrix: Matrix, users: Sequence[str], k: int) -> Lists:
    """Return each user's k most popular items (users per item) among those they have not interacted with."""
    return ranked_top_k(matrix, np.argsort(-matrix.user_counts(), kind="stable"), users, k)


def recent_counts(matrix: Matrix, user_ids: np.ndarray, item_ids: np.ndarray, timestamps: np.ndarray,
                  days: float) -> np.ndarray:
    """Return users per item over the training interactions of the last `days` before the newest one."""
    newest = float(timestamps.max()) if len(timestamps) else 0.0
    recent = timestamps >= newest - days * DAY_SECONDS
    return Matrix.build(user_ids[recent], item_ids[recent], matrix.items).user_counts()


def recent_popularity_order(matrix: Matrix, recent: np.ndarray) -> np.ndarray:
    """Return the items by users in the window; ties (common in a short window) by all-time users, then by the
    catalogue's order."""
    return np.lexsort((np.arange(len(recent)), -matrix.user_counts(), -recent))


def ranked_top_k(matrix: Matrix, order: np.ndarray, users: Sequence[str], k: int) -> Lists:
    """Return each user's first k items of one global order, their training items skipped."""
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


@dataclass(frozen=True)
class EaseBasis:
    """The eigenvectors and eigenvalues of X^T X over EASE's items, from which every lambda's model follows.

    EASE (Steck 2019) is B = I - P / diag(P) with P = (X^T X + lambda I)^-1. With X^T X = V diag(w) V^T (V the
    eigenvectors of nonzero eigenvalues), P = I / lambda + V diag(1/(w + lambda) - 1/lambda) V^T, so one
    eigendecomposition serves the whole lambda grid, each lambda costing a few matrix products instead of an
    inversion. The eigendecomposition is of the smaller of X^T X (items) and X X^T (users): with fewer users
    than items, V = X^T U diag(s)^-1/2 from X X^T = U diag(s) U^T.
    """

    vocabulary: np.ndarray  # int64 matrix columns of EASE's items, most popular first
    with_training: int  # items with any training interaction (vocabulary is these, capped)
    vectors: np.ndarray  # float64 (items, rank)
    values: np.ndarray  # float64 (rank,)

    @classmethod
    def fit(cls, matrix: Matrix, max_items: int = EASE_MAX_ITEMS) -> EaseBasis:
        """Decompose the Gram matrix of the most popular max_items items with training interactions."""
        counts = matrix.user_counts()
        with_training = int(np.count_nonzero(counts))
        vocabulary = np.argsort(-counts, kind="stable")[: min(max_items, with_training)]
        x = matrix.values[:, vocabulary].astype(np.float64).tocsr()
        if len(vocabulary) <= x.shape[0]:
            values, vectors = scipy.linalg.eigh((x.T @ x).toarray(), check_finite=False)
            values = np.clip(values, 0.0, None)
        else:
            values, left = scipy.linalg.eigh((x @ x.T).toarray(), check_finite=False)
            keep = values > values.max(initial=0.0) * 1e-10
            values, left = values[keep], left[:, keep]
            vectors = np.asarray(x.T @ left) / np.sqrt(values)[None, :]
        return cls(vocabulary, with_training, vectors, values)

    def weights(self, lam: float) -> tuple[np.ndarray, np.ndarray]:
        """Return lambda's correction c (P = I / lambda + V diag(c) V^T) and diag(P)."""
        correction = -self.values / (lam * (self.values + lam))  # 1/(w + lam) - 1/lam, without cancellation
        return correction, 1.0 / lam + (self.vectors**2) @ correction

    def top_k(self, matrix: Matrix, lam: float, users: Sequence[str], k: int) -> Lists:
        """Return each user's k highest-scoring items by lambda's EASE, their training items excluded."""
        correction, diagonal = self.weights(lam)
        known, rows = matrix.rows(users)
        out: Lists = {}
        for start in range(0, len(known), USER_BLOCK):
            x = matrix.values[rows[start : start + USER_BLOCK]][:, self.vocabulary].toarray().astype(np.float64)
            # X B = X - X P / diag(P); X P = X / lambda + (X V) diag(c) V^T.
            scores = x - (x / lam + ((x @ self.vectors) * correction) @ self.vectors.T) / diagonal[None, :]
            scores[x > 0] = -np.inf
            for user, best in zip(known[start : start + USER_BLOCK], _top_columns(scores, k), strict=True):
                out[user] = [matrix.items[self.vocabulary[i]] for i in best]
        return out


def _top_columns(scores: np.ndarray, k: int) -> list[list[int]]:
    """Return each row's columns by descending score, at most k, never an excluded (-inf) one."""
    k = min(k, scores.shape[1])
    if k == 0:
        return [[] for _ in range(scores.shape[0])]
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.take_along_axis(part, np.argsort(-top, axis=1, kind="stable"), axis=1)
    return [[int(i) for i in row if np.isfinite(s[i])] for row, s in zip(order, scores, strict=True)]


def fit_als(values: sp.csr_matrix, settings: Mapping[str, float], seed: int):  # noqa: ANN201 (implicit's model)
    """Fit implicit's ALS on a 0/1 users x items matrix."""
    from implicit.cpu.als import AlternatingLeastSquares

    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=int(settings["factors"]), regularization=settings["regularization"],
                                        iterations=int(settings["iterations"]), alpha=settings["alpha"],
                                        random_state=seed, calculate_training_loss=False)
        model.fit(values, show_progress=False)
    return model


def als_top_k(model, matrix: Matrix, users: Sequence[str], k: int) -> Lists:  # noqa: ANN001
    """Return each user's k best items by the model, their training items excluded."""
    known, rows = matrix.rows(users)
    if not known:
        return {}
    with threadpool_limits(1, "blas"):
        ids, _ = model.recommend(rows, matrix.values[rows], N=k, filter_already_liked_items=True)
    return {u: [matrix.items[i] for i in r.tolist() if i >= 0] for u, r in zip(known, ids, strict=True)}


def _ndcg(ranked: Sequence[str], relevant: frozenset[str], k: int) -> float:
    return ndcg(np.array([i in relevant for i in ranked[:k]], dtype=np.float64), len(relevant), k)
