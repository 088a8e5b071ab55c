"""Frequentist comparison of a treatment with the control on one metric, from each arm's sufficient statistics.

Every function here is pure over `Moments` (counts, sums, sums of products), so its cost does not grow with the
number of users. statsmodels computes what it has a function for (two-proportion tests and intervals, TOST,
chi-square); scipy the Welch t from summary statistics (statsmodels' `ttest_ind` wants raw data, and the unit tests
show the two agree); the delta method, CUPED, the confidence sequence and Holm's adjustment (see `holm`) are written
out with their formulas and references.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from domain.experiments.metrics import MetricSpec
from domain.experiments.moments import Effect, Moments
from domain.experiments.report import SampleRatio

RATES = frozenset({"CTR", "COMPLETION_RATE", "EMPTY_RATE"})  # ratio metrics whose value is a share in [0, 1]


def is_rate(spec: MetricSpec) -> bool:
    """Return whether the metric's value is a proportion (binary per user, or a rate of sums)."""
    return spec.binary or spec.name in RATES


def _finite(x: float | None) -> float | None:
    """Return x as a float, or None when it is missing, NaN or infinite."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def metric_value(spec: MetricSpec, m: Moments) -> float | None:
    """Return the arm's metric: the mean of the numerator per user, or sum(numerator) / sum(denominator)."""
    if m.n == 0:
        return None
    if spec.denominator is None:
        return m.mean(spec.numerator)
    den = m.sum(spec.denominator)
    return m.sum(spec.numerator) / den if den else None


@dataclass(frozen=True, slots=True)
class Linearised:
    """One arm's estimate `f` of the metric and, with a covariate, `h` (the same function of the pre-period
    components), with `cov`, the covariance matrix of (f, h) as estimators (already divided by n)."""

    n: int
    f: float
    h: float | None
    cov: np.ndarray


def _gradient(m: Moments, num: str, den: str | None) -> tuple[float, list[float], list[str]] | None:
    """Return the function's value and its gradient in the means of its components (None: zero denominator)."""
    mu_y = m.mean(num)
    if den is None:
        return mu_y, [1.0], [num]
    mu_n = m.mean(den)
    if mu_n == 0:
        return None
    return mu_y / mu_n, [1.0 / mu_n, -mu_y / mu_n**2], [num, den]


def linearise(spec: MetricSpec, m: Moments, *, pre: bool) -> Linearised | None:
    """Return the arm's estimate with its delta-method covariance (None below 2 users or with a zero denominator).

    For a ratio R = mean(Y) / mean(N): var(R) ~ (1/n) (s_YY/mu_N^2 - 2 mu_Y s_YN/mu_N^3 + mu_Y^2 s_NN/mu_N^4), i.e.
    g' S g / n with g the gradient and S the sample covariance of the components (Deng, Knoblich, Lu 2018,
    "Applying the Delta Method in Metric Analytics"). A mean is the case g = (1).
    """
    if m.n < 2:
        return None
    parts = [(spec.numerator, spec.denominator)]
    if pre:
        parts.append((spec.pre_numerator, spec.pre_denominator))
    grads = [_gradient(m, num, den) for num, den in parts]
    if any(g is None for g in grads):
        return None
    names = [name for g in grads for name in g[2]]
    jac = np.zeros((len(grads), len(names)))
    col = 0
    for row, (_, g, _) in enumerate(grads):
        jac[row, col:col + len(g)] = g
        col += len(g)
    cov = jac @ m.covariance(tuple(names)) @ jac.T / m.n
    return Linearised(m.n, grads[0][0], grads[1][0] if pre else None, cov)


@dataclass(frozen=True, slots=True)
class Difference:
    """The treatment-minus-control estimate with its variance, and what the relative difference needs."""

    estimate: float
    variance: float
    unadjusted_variance: float
    control: float  # f_c, the relative difference's denominator
    control_variance: float
    control_covariance: float  # cov(estimate, f_c)
    cuped: bool = False


def difference(t: Linearised, c: Linearised) -> Difference:
    """Return f_t - f_c, CUPED-adjusted when both arms carry a covariate with variance.

    CUPED (Deng, Xu, Kohavi, Walker 2013), in the form GrowthBook uses and generalised to ratios by the delta method:
    theta = (cov_t(f,h) + cov_c(f,h)) / (var_t(h) + var_c(h)); adjusted = (f_t - f_c) - theta (h_t - h_c);
    var = var_t(f) + var_c(f) - 2 theta (cov_t + cov_c) + theta^2 (var_t(h) + var_c(h)). For a mean metric this is
    the treatment coefficient of OLS y ~ T + x (the unit tests compare it with statsmodels OLS, HC1 errors).
    """
    raw = t.f - c.f
    v_f = t.cov[0, 0] + c.cov[0, 0]
    plain = Difference(raw, v_f, v_f, c.f, c.cov[0, 0], -c.cov[0, 0])
    if t.h is None or c.h is None:
        return plain
    v_h = t.cov[1, 1] + c.cov[1, 1]
    if not v_h > 0:
        return plain
    cross = t.cov[0, 1] + c.cov[0, 1]
    theta = cross / v_h
    adjusted = raw - theta * (t.h - c.h)
    variance = max(v_f - 2 * theta * cross + theta**2 * v_h, 0.0)
    return Difference(adjusted, variance, v_f, c.f, c.cov[0, 0], -c.cov[0, 0] + theta * c.cov[0, 1], cuped=True)


def relative(d: Difference) -> float | None:
    """Return the relative difference d / f_c (None when the control's value is 0)."""
    return d.estimate / d.control if d.control != 0 else None


def relative_interval(d: Difference, critical: float) -> tuple[float, float] | None:
    """Return the interval of rho = d / f_c by Fieller's theorem (Fieller 1954) at the test's critical value q:
    every rho with (d - rho f_c)^2 <= q^2 var(d - rho f_c) = q^2 (V_d - 2 rho C + rho^2 V_c), C = cov(d, f_c).

    At rho = 0 the condition is d^2 <= q^2 V_d, the difference's own test: the interval excludes 0 exactly when the
    difference's normal interval does, unlike the symmetric delta-method interval (d / f_c +- q sd), which can
    cross 0 while the difference is significant when the control's value is noisy. None when the control's value
    is not itself distinguishable from 0 at that level (f_c^2 <= q^2 V_c): the set is then unbounded.
    """
    fc, q2 = d.control, critical**2
    a = fc**2 - q2 * d.control_variance
    if not a > 0:
        return None
    b = d.estimate * fc - q2 * d.control_covariance  # half of -b in a rho^2 - 2 b rho + c <= 0
    c = d.estimate**2 - q2 * d.variance
    root = np.sqrt(max(b * b - a * c, 0.0))
    return (b - root) / a, (b + root) / a


def sequential_rho(alpha: float, tuning_n: float) -> float:
    """Return the mixture parameter that makes the confidence sequence tightest near `tuning_n` total users."""
    log_a = -2.0 * np.log(alpha)
    return float(np.sqrt((log_a + np.log(log_a + 1.0)) / tuning_n))


def sequential_halfwidth(variance, n_total, alpha: float, tuning_n: float = 5000.0):
    """Return the always-valid asymptotic confidence sequence's halfwidth (arrays allowed).

    Waudby-Smith, Arbour, Sinha, Kennedy, Ramdas (2021/2024), "Time-uniform central limit theory and asymptotic
    confidence sequences" (arXiv:2103.06476), as GrowthBook implements it: with N total users, s2 = var(diff) N,
    halfwidth = sqrt(s2) sqrt(2 (N rho^2 + 1) / (N^2 rho^2) ln(sqrt(N rho^2 + 1) / alpha)).
    """
    r2 = sequential_rho(alpha, tuning_n) ** 2
    n = np.asarray(n_total, dtype=float)
    s2 = np.asarray(variance, dtype=float) * n
    return np.sqrt(s2) * np.sqrt(2 * (n * r2 + 1) / (n**2 * r2) * np.log(np.sqrt(n * r2 + 1) / alpha))


def sequential_p_value(estimate, variance, n_total, alpha: float, tuning_n: float = 5000.0):
    """Return the always-valid p-value: the smallest alpha' whose sequence (rho fixed at alpha) excludes 0.

    Solving |d| = halfwidth(alpha') gives p = min(1, sqrt(N rho^2 + 1) exp(-rho^2 N z^2 / (2 (N rho^2 + 1)))) with
    z^2 = d^2 / var(d) (Waudby-Smith et al., eq. 155; GrowthBook's `SequentialTwoSidedTTest.pValue`).
    """
    r2 = sequential_rho(alpha, tuning_n) ** 2
    n = np.asarray(n_total, dtype=float)
    z2 = np.asarray(estimate, dtype=float) ** 2 / np.asarray(variance, dtype=float)
    tr = n * r2 + 1
    return np.minimum(1.0, np.sqrt(tr) * np.exp(-r2 * n * z2 / (2 * tr)))


@dataclass(frozen=True, slots=True)
class _Test:
    lower: float | None
    upper: float | None
    p_value: float | None
    critical: float  # halfwidth / standard error, reused for the relative interval (Fieller)
    method: str


def _normal(d: Difference, alpha: float, method: str) -> _Test:
    """Return the z test and interval of an asymptotically normal difference."""
    from scipy import stats  # 0.5-1 s to import: loaded when first used
    se = np.sqrt(d.variance)
    z = stats.norm.ppf(1 - alpha / 2)
    p = 2 * stats.norm.sf(abs(d.estimate) / se)
    return _Test(d.estimate - z * se, d.estimate + z * se, p, z, method)


def _welch_df(t: Linearised, c: Linearised) -> float:
    """Return the Welch-Satterthwaite degrees of freedom (v_t + v_c)^2 / (v_t^2/(n_t - 1) + v_c^2/(n_c - 1))."""
    v_t, v_c = t.cov[0, 0], c.cov[0, 0]
    return (v_t + v_c) ** 2 / (v_t**2 / (t.n - 1) + v_c**2 / (c.n - 1))


def _welch(d: Difference, t: Linearised, c: Linearised, alpha: float) -> _Test:
    """Return Welch's t test (Welch 1947) from summary statistics (scipy `ttest_ind_from_stats`), with the t
    interval on the Welch-Satterthwaite degrees of freedom."""
    from scipy import stats  # 0.5-1 s to import: loaded when first used
    v_t, v_c = t.cov[0, 0], c.cov[0, 0]
    res = stats.ttest_ind_from_stats(t.f, np.sqrt(v_t * t.n), t.n, c.f, np.sqrt(v_c * c.n), c.n, equal_var=False)
    df = _welch_df(t, c)
    crit = stats.t.ppf(1 - alpha / 2, df)
    half = crit * np.sqrt(d.variance)
    return _Test(d.estimate - half, d.estimate + half, res.pvalue, crit, "welch-t")


def _proportions(t: Moments, c: Moments, num: str, alpha: float) -> _Test:
    """Return the score test (Miettinen-Nurminen) and Newcombe's hybrid score interval (Newcombe 1998, method 10)."""
    from scipy import stats  # 0.5-1 s to import: loaded when first used
    # statsmodels takes 1-2 s to import: loaded when first used, so serving processes and the CLI start without it
    from statsmodels.stats.proportion import confint_proportions_2indep, test_proportions_2indep
    args = (t.sum(num), t.n, c.sum(num), c.n)
    with np.errstate(divide="ignore", invalid="ignore"):  # statsmodels also reports the ratio, inf at p_c = 0
        p = test_proportions_2indep(*args, compare="diff", method="score").pvalue
        low, upp = confint_proportions_2indep(*args, compare="diff", method="newcomb", alpha=alpha)
    return _Test(low, upp, p, stats.norm.ppf(1 - alpha / 2), "newcombe")


def _sequential(d: Difference, n_total: int, alpha: float, tuning_n: float) -> _Test:
    """Return the confidence sequence at this look and its always-valid p-value."""
    half = float(sequential_halfwidth(d.variance, n_total, alpha, tuning_n))
    p = float(sequential_p_value(d.estimate, d.variance, n_total, alpha, tuning_n))
    method = "sequential-cs+cuped" if d.cuped else "sequential-cs"
    return _Test(d.estimate - half, d.estimate + half, p, half / np.sqrt(d.variance), method)


def _choose(spec: MetricSpec, d: Difference, lt: Linearised, lc: Linearised, control: Moments, treatment: Moments,
            alpha: float, sequential: bool, tuning_n: float) -> _Test:
    """Return the test the metric and the options call for."""
    if sequential:
        return _sequential(d, lt.n + lc.n, alpha, tuning_n)
    if d.cuped:
        return _normal(d, alpha, "cuped-z")
    if spec.ratio:
        return _normal(d, alpha, "delta-z")
    if spec.binary:
        return _proportions(treatment, control, spec.numerator, alpha)
    return _welch(d, lt, lc, alpha)


def analyse(spec: MetricSpec, control: Moments, treatment: Moments, *, alpha: float, sequential: bool,
            cuped: bool, tuning_n: float = 5000.0) -> Effect:
    """Compare the treatment with the control on one metric: difference, relative difference, intervals, p-value."""
    base = dict(users=treatment.n, control_users=control.n, value=_finite(metric_value(spec, treatment)),
                control_value=_finite(metric_value(spec, control)))
    pre = cuped and spec.pre_numerator is not None
    lt, lc = linearise(spec, treatment, pre=pre), linearise(spec, control, pre=pre)
    if pre and (lt is None or lc is None):  # a zero pre-period denominator: analyse without the covariate
        lt, lc = linearise(spec, treatment, pre=False), linearise(spec, control, pre=False)
    if lt is None or lc is None:
        return Effect(**base)
    d = difference(lt, lc)
    if not (np.isfinite(d.estimate) and d.variance > 0 and np.isfinite(d.variance)):
        return Effect(**base)
    test = _choose(spec, d, lt, lc, control, treatment, alpha, sequential, tuning_n)
    rel = relative(d)
    rel_ci = relative_interval(d, test.critical) if rel is not None else None
    return Effect(
        **base, difference=_finite(d.estimate), difference_lower=_finite(test.lower),
        difference_upper=_finite(test.upper), relative_difference=_finite(rel),
        relative_lower=_finite(rel_ci[0]) if rel_ci else None,
        relative_upper=_finite(rel_ci[1]) if rel_ci else None, p_value=_finite(test.p_value),
        method=test.method, cuped=d.cuped,
        variance_reduction=_finite(1 - d.variance / d.unadjusted_variance) if d.cuped else None,
    )


def sample_ratio(exposures: Sequence[int], weights: Sequence[float], *, threshold: float = 0.001) -> SampleRatio:
    """Return the chi-square goodness-of-fit test of exposures against the planned weights (mismatch: p < threshold).

    statsmodels `gof.chisquare` (Pearson's statistic, k - 1 df).
    """
    from statsmodels.stats.gof import chisquare  # 1-2 s to import: loaded when first used
    w = np.asarray(weights, dtype=float)
    if len(w) == 0 or w.sum() <= 0 or np.any(w < 0):
        return SampleRatio(p_value=None, mismatch=False, expected=())
    shares = w / w.sum()
    observed = np.asarray(exposures, dtype=float)
    total = observed.sum()
    if total <= 0:
        return SampleRatio(p_value=None, mismatch=False, expected=tuple(shares.tolist()))
    expected = shares * total
    keep = expected > 0
    if np.any(observed[~keep] > 0):  # users in a variant planned to get none
        p = 0.0
    elif keep.sum() < 2:
        p = 1.0
    else:
        p = float(chisquare(observed[keep], expected[keep])[1])
    return SampleRatio(p_value=p, mismatch=p < threshold, expected=tuple(shares.tolist()))


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Return Holm's step-down adjusted p-values (Holm 1979) over the present ones; None stays None.

    With the m present p-values sorted ascending, p_(i) adjusted = min(1, max_{j <= i} (m - j + 1) p_(j)): the
    formula statsmodels' `multipletests(method="holm")` computes, and the unit tests check equality with it. It is
    written out because that function ends its Holm branch with `gc.collect()`, a full collection that took 0.15 s
    here in a small process and over a second in a serving one, on every results read.
    """
    present = [i for i, p in enumerate(p_values) if p is not None]
    out: list[float | None] = [None] * len(p_values)
    if present:
        values = np.asarray([p_values[i] for i in present], dtype=float)
        order = np.argsort(values, kind="stable")
        steps = np.maximum.accumulate(values[order] * np.arange(len(values), 0, -1))
        adjusted = np.empty_like(values)
        adjusted[order] = np.minimum(steps, 1.0)
        for i, p in zip(present, adjusted, strict=True):
            out[i] = float(p)
    return out


def _one_sided(d: Difference, shift: float, higher: bool, df: float | None) -> float:
    """Return the one-sided p-value of H0: d <= shift (higher is better) or H0: d >= shift, by t (df) or z."""
    from scipy import stats  # 0.5-1 s to import: loaded when first used
    stat = (d.estimate - shift) / np.sqrt(d.variance)
    dist = stats.t(df) if df is not None else stats.norm
    return float(dist.sf(stat) if higher else dist.cdf(stat))


def non_inferiority(spec: MetricSpec, control: Moments, treatment: Moments, *, margin: float,
                    alpha: float) -> tuple[float | None, bool | None, str]:
    """Return (p, passed, method) of the one-sided test that the treatment is no worse than the control by margin.

    Higher is better: H0 value_t <= value_c (1 - margin); lower is better: H0 value_t >= value_c (1 + margin).
    Binary metrics: statsmodels `tost_proportions_2indep` on the risk ratio (score test), the side that matters.
    Others: the one-sided Welch t (mean) or delta-method z (ratio) at the shifted margin -+ margin * value_c, with
    value_c taken as known; this is what statsmodels `ttost_ind(..., usevar="unequal")` does on raw data with
    low = -margin * mean_c (it has no summary-statistics form; the unit tests check the two agree).
    """
    higher = spec.higher_is_better
    if spec.binary:
        return _non_inferior_proportions(control, treatment, spec.numerator, margin, alpha, higher)
    method = "delta-z-noninferiority" if spec.ratio else "welch-t-noninferiority"
    lt, lc = linearise(spec, treatment, pre=False), linearise(spec, control, pre=False)
    d = difference(lt, lc) if lt is not None and lc is not None else None
    if d is None or not d.variance > 0:
        return None, None, method
    shift = -margin * d.control if higher else margin * d.control
    df = None if spec.ratio else _welch_df(lt, lc)
    p = _finite(_one_sided(d, shift, higher, df))
    return p, (p < alpha) if p is not None else None, method


def _non_inferior_proportions(control: Moments, treatment: Moments, num: str, margin: float, alpha: float,
                              higher: bool) -> tuple[float | None, bool | None, str]:
    """Return the one-sided score test on the ratio p_t / p_c against 1 - margin (or 1 + margin)."""
    from statsmodels.stats.proportion import tost_proportions_2indep  # 1-2 s to import: loaded when first used
    method = "tost-proportions-ratio-score"
    if treatment.n < 2 or control.n < 2 or control.sum(num) <= 0:
        return None, None, method
    low, upp = max(1.0 - margin, 1e-9), 1.0 + margin
    res = tost_proportions_2indep(treatment.sum(num), treatment.n, control.sum(num), control.n, low, upp,
                                  compare="ratio", method="score")
    p = _finite((res.results_larger if higher else res.results_smaller).pvalue)
    return p, (p < alpha) if p is not None else None, method
