"""A variant's sufficient statistics, and what each statistical function returns from them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, slots=True)
class Moments:
    """One variant's sufficient statistics over its exposed users: their number, each component's sum, and the
    sums of products of component pairs (keys ordered as in `domain.experiments.metrics.PAIRS`; a square is
    `(a, a)`). A missing sum or product is 0."""

    n: int
    sums: Mapping[str, float] = field(default_factory=dict)
    products: Mapping[tuple[str, str], float] = field(default_factory=dict)

    def sum(self, a: str) -> float:
        """Return the sum of component a over the users."""
        return float(self.sums.get(a, 0.0))

    def product(self, a: str, b: str) -> float:
        """Return the sum over users of a * b (either order)."""
        value = self.products.get((a, b))
        if value is None:
            value = self.products.get((b, a), 0.0)
        return float(value)

    def mean(self, a: str) -> float:
        """Return the mean of component a per user (nan without users)."""
        return self.sum(a) / self.n if self.n else float("nan")

    def covariance(self, names: tuple[str, ...]) -> np.ndarray:
        """Return the sample covariance matrix (ddof 1) of the named components (nan below 2 users)."""
        k = len(names)
        if self.n < 2:
            return np.full((k, k), np.nan)
        out = np.empty((k, k))
        for i, a in enumerate(names):
            for j in range(i, k):
                b = names[j]
                c = (self.product(a, b) - self.sum(a) * self.sum(b) / self.n) / (self.n - 1)
                out[i, j] = out[j, i] = c
        return out

    @classmethod
    def from_arrays(cls, columns: Mapping[str, np.ndarray], pairs: tuple[tuple[str, str], ...]) -> Moments:
        """Return the moments of per-user columns (tests and simulations build them this way)."""
        n = len(next(iter(columns.values()))) if columns else 0
        sums = {a: float(np.sum(v)) for a, v in columns.items()}
        products = {(a, b): float(np.dot(columns[a], columns[b])) for a, b in pairs if a in columns and b in columns}
        return cls(n=n, sums=sums, products=products)


@dataclass(frozen=True, slots=True)
class Effect:
    """One metric's comparison of a treatment variant with the control. Every statistic is None when it cannot be
    computed (no users, no variance): never NaN."""

    users: int
    control_users: int
    value: float | None
    control_value: float | None
    difference: float | None = None
    difference_lower: float | None = None
    difference_upper: float | None = None
    relative_difference: float | None = None
    relative_lower: float | None = None
    relative_upper: float | None = None
    p_value: float | None = None
    method: str = ""
    cuped: bool = False
    variance_reduction: float | None = None  # 1 - adjusted variance / unadjusted variance, with CUPED
