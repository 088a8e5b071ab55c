"""THOMPSON allocation: each arm's posterior on the primary metric, and the share of new users each arm gets.

Thompson sampling (Thompson 1933; Chapelle & Li 2011, "An Empirical Evaluation of Thompson Sampling") gives each arm
new users in proportion to the posterior probability that it is the best. Rates get Beta(1 + successes,
1 + failures) posteriors (a uniform prior; CTR counts impressions as trials, COMPLETION_RATE completed fractions of
watches, EMPTY_RATE empty lists of lists, USER_CONVERSION converted users of exposed users); means get the normal
approximation N(estimate, var/n) (delta method for ratios of sums such as LATENCY_MS). Probability best is a
Monte Carlo estimate over joint posterior draws with a fixed seed, so the same sums always give the same weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from domain.experiments.metrics import MetricSpec
from domain.experiments.moments import Moments
from domain.experiments.stats import is_rate, linearise, metric_value

if TYPE_CHECKING:
    from scipy import stats

Posterior = tuple[float | None, float | None, float | None, float | None]  # mean, lower, upper, probability best
_LEVEL = 0.95


def _trials(spec: MetricSpec, m: Moments) -> tuple[float, float]:
    """Return (successes, trials) of a rate metric."""
    successes = m.sum(spec.numerator)
    trials = m.sum(spec.denominator) if spec.denominator else float(m.n)
    return min(successes, trials), trials


def _beta(spec: MetricSpec, arms: Sequence[Moments]) -> list[stats.rv_continuous | None]:
    """Return each arm's Beta(1 + successes, 1 + failures) posterior."""
    from scipy import stats  # 0.5-1 s to import: loaded when first used
    out = []
    for m in arms:
        s, t = _trials(spec, m)
        out.append(stats.beta(1.0 + s, 1.0 + max(t - s, 0.0)))
    return out


def _pooled(arms: Sequence[Moments]) -> Moments:
    """Return the moments of all arms' users together (sums add)."""
    sums: dict = {}
    products: dict = {}
    for m in arms:
        for k, v in m.sums.items():
            sums[k] = sums.get(k, 0.0) + v
        for k, v in m.products.items():
            products[k] = products.get(k, 0.0) + v
    return Moments(n=sum(m.n for m in arms), sums=sums, products=products)


def _normal(spec: MetricSpec, arms: Sequence[Moments]) -> list[stats.rv_continuous | None]:
    """Return each arm's normal posterior: N(estimate, var/n), or, below 2 users or without variance, a weak prior
    (the pooled mean and per-user variance, worth one user) updated with the arm's users."""
    from scipy import stats  # 0.5-1 s to import: loaded when first used
    pooled = linearise(spec, _pooled(arms), pre=False)
    out = []
    for m in arms:
        own = linearise(spec, m, pre=False)
        if own is not None and own.cov[0, 0] > 0:
            out.append(stats.norm(own.f, np.sqrt(own.cov[0, 0])))
        elif pooled is not None and pooled.cov[0, 0] > 0:
            prior_var = pooled.cov[0, 0] * pooled.n  # per-user variance
            value = metric_value(spec, m)
            mean = pooled.f if value is None else (pooled.f + m.n * value) / (1 + m.n)
            out.append(stats.norm(mean, np.sqrt(prior_var / (1 + m.n))))
        else:
            out.append(None)
    return out


def _probability_best(dists: list, lower_is_better: bool, draws: int, seed: int) -> list[float | None]:
    """Return the share of joint posterior draws in which each arm is the best (None: no posterior)."""
    live = [i for i, d in enumerate(dists) if d is not None]
    out: list[float | None] = [None] * len(dists)
    if not live:
        return out
    rng = np.random.default_rng(seed)
    samples = np.column_stack([dists[i].rvs(size=draws, random_state=rng) for i in live])
    best = samples.argmin(axis=1) if lower_is_better else samples.argmax(axis=1)
    counts = np.bincount(best, minlength=len(live))
    for j, i in enumerate(live):
        out[i] = float(counts[j] / draws)
    return out


def posteriors(spec: MetricSpec, arms: Sequence[Moments], *, draws: int = 20000, seed: int = 0) -> list[Posterior]:
    """Return each arm's posterior (mean, 95% lower, upper, probability of being the best)."""
    dists = _beta(spec, arms) if is_rate(spec) else _normal(spec, arms)
    best = _probability_best(dists, not spec.higher_is_better, draws, seed)
    out: list[Posterior] = []
    for d, p in zip(dists, best):
        if d is None:
            out.append((None, None, None, None))
            continue
        lo, hi = d.ppf([(1 - _LEVEL) / 2, (1 + _LEVEL) / 2])
        out.append((float(d.mean()), float(lo), float(hi), p))
    return out


def thompson_weights(probability_best: Sequence[float | None], *, floor: float = 0.05) -> list[float]:
    """Return each arm's share of new users: proportional to its probability of being best, each at least floor.

    w_i = floor + (1 - k floor) p_i / sum(p): every arm keeps exploring, and the shares sum to 1. With no
    probabilities (no data yet) or a floor too high for k arms, the arms share equally.
    """
    k = len(probability_best)
    if k == 0:
        return []
    p = np.array([0.0 if x is None else max(float(x), 0.0) for x in probability_best])
    if p.sum() <= 0 or k * floor >= 1:
        return [1.0 / k] * k
    w = floor + (1 - k * floor) * p / p.sum()
    return (w / w.sum()).tolist()

