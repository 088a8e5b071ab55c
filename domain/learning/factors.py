"""Implicit-feedback matrix factorisation (ALS, via the `implicit` library) and folding a history into a user
vector at request time, so new and live users get factors without retraining."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

SEED = 7


@dataclass(frozen=True)
class Factors:
    """Item factors and what folding in a user needs: the items' Gram matrix and the fit's settings."""

    item_factors: np.ndarray  # float32, items x d
    gram: np.ndarray  # float64, d x d: item_factors' Gram matrix
    regularization: float
    confidence: float  # the confidence of a typical positive (the median training weight)

    def fold_in(self, items: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Return the user vector that ALS would fit for these items, each confidence scaled by its weight."""
        y = self.item_factors[items].astype(np.float64)
        c = self.confidence * weights.astype(np.float64)
        a = self.gram + (y.T * (c - 1.0)) @ y + self.regularization * np.eye(self.gram.shape[0])
        return np.linalg.solve(a, y.T @ c).astype(np.float32)


def train_als(strength: sp.csr_matrix, *, factors: int, iterations: int, regularization: float,
              alpha: float = 1.0) -> Factors:
    """Fit ALS on users x items confidences (the summed interaction weights)."""
    from implicit.cpu.als import AlternatingLeastSquares  # imported here: it loads OpenMP and BLAS checks

    # implicit runs its own threads; a multi-threaded BLAS underneath would oversubscribe the cores.
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=factors, regularization=regularization, iterations=iterations,
                                        alpha=alpha, random_state=SEED, calculate_training_loss=False)
        model.fit(strength.astype(np.float32).tocsr(), show_progress=False)
    items = np.ascontiguousarray(model.item_factors, dtype=np.float32)
    median = float(np.median(strength.data)) if strength.nnz else 1.0
    return Factors(item_factors=items, gram=items.T.astype(np.float64) @ items,
                   regularization=regularization, confidence=alpha * median)
