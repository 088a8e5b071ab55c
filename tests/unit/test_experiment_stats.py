"""Experiment statistics from sufficient statistics agree with statsmodels on raw data, and never answer NaN."""

from __future__ import annotations

import math
from dataclasses import astuple, fields

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import stats as sps
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import tt_ind_solve_power
from statsmodels.stats import proportion as smp
from statsmodels.stats.weightstats import CompareMeans, DescrStatsW, ttest_ind, ttost_ind

from domain.errors import BadInput
from domain.experiments.bandit import posteriors, thompson_weights
from domain.experiments.metrics import METRICS, PAIRS
from domain.experiments.moments import Effect, Moments
from domain.experiments.plan import plan
from domain.experiments.stats import (
    analyse,
    holm,
    non_inferiority,
    sample_ratio,
    sequential_halfwidth,
    sequential_p_value,
)

WATCH, CONV, CTR = METRICS["WATCH_SECONDS"], METRICS["USER_CONVERSION"], METRICS["CTR"]


def moments(**columns: np.ndarray) -> Moments:
    return Moments.from_arrays({k: np.asarray(v, dtype=float) for k, v in columns.items()}, PAIRS)


def skewed(rng: np.random.Generator, n: int, scale: float = 1.0) -> np.ndarray:
    """Zero-inflated lognormal watch seconds."""
    return np.where(rng.random(n) < 0.4, 0.0, scale * rng.lognormal(3.0, 1.0, n))


def assert_no_nan(effect: Effect) -> None:
    for value in astuple(effect):
        if isinstance(value, float):
            assert math.isfinite(value)


# --- Welch t, proportions, delta method ---------------------------------------------------------------------------

def test_welch_from_sums_equals_statsmodels_on_raw_data():
    rng = np.random.default_rng(1)
    yt, yc = skewed(rng, 1200, 1.1), skewed(rng, 1500)
    e = analyse(WATCH, moments(watch_seconds=yc), moments(watch_seconds=yt), alpha=0.05, sequential=False,
                cuped=False)
    _, p, _ = ttest_ind(yt, yc, usevar="unequal")
    low, upp = CompareMeans(DescrStatsW(yt), DescrStatsW(yc)).tconfint_diff(alpha=0.05, usevar="unequal")
    assert e.method == "welch-t" and not e.cuped
    assert e.p_value == pytest.approx(p, rel=1e-9)
    assert (e.difference_lower, e.difference_upper) == (pytest.approx(low, rel=1e-9), pytest.approx(upp, rel=1e-9))
    assert e.difference == pytest.approx(yt.mean() - yc.mean())
    assert e.relative_difference == pytest.approx(yt.mean() / yc.mean() - 1)
    assert e.relative_lower < e.relative_difference < e.relative_upper


def test_binary_uses_the_score_test_and_newcombe_interval():
    rng = np.random.default_rng(2)
    xt, xc = (rng.random(4000) < 0.11).astype(float), (rng.random(5000) < 0.10).astype(float)
    e = analyse(CONV, moments(converted=xc), moments(converted=xt), alpha=0.1, sequential=False, cuped=False)
    counts = (xt.sum(), xt.size, xc.sum(), xc.size)
    assert e.method == "newcombe"
    assert e.p_value == pytest.approx(smp.test_proportions_2indep(*counts, compare="diff", method="score").pvalue)
    low, upp = smp.confint_proportions_2indep(*counts, compare="diff", method="newcomb", alpha=0.1)
    assert (e.difference_lower, e.difference_upper) == (pytest.approx(low), pytest.approx(upp))
    assert e.value == pytest.approx(xt.mean()) and e.control_value == pytest.approx(xc.mean())


def test_ratio_variance_is_the_linearised_mean_variance():
    rng = np.random.default_rng(3)
    imp_t, imp_c = rng.poisson(12, 3000) + 1, rng.poisson(12, 3000) + 1
    clk_t, clk_c = rng.binomial(imp_t, rng.beta(1, 19, 3000)), rng.binomial(imp_c, rng.beta(1, 19, 3000))
    e = analyse(CTR, moments(clicks=clk_c, impressions=imp_c), moments(clicks=clk_t, impressions=imp_t),
                alpha=0.05, sequential=False, cuped=False)

    def var(y, n):  # the delta method as a mean of the linearised variable (y - R n) / mean(n)
        r = y.sum() / n.sum()
        return np.var((y - r * n) / n.mean(), ddof=1) / len(y)

    se = math.sqrt(var(clk_t, imp_t) + var(clk_c, imp_c))
    diff = clk_t.sum() / imp_t.sum() - clk_c.sum() / imp_c.sum()
    z = sps.norm.ppf(0.975)
    assert e.method == "delta-z"
    assert e.difference == pytest.approx(diff)
    assert e.difference_upper - e.difference == pytest.approx(z * se, rel=1e-9)
    assert e.p_value == pytest.approx(2 * sps.norm.sf(abs(diff) / se), rel=1e-9)


# --- CUPED ------------------------------------------------------------------------------------------------------

def cuped_arm(rng: np.random.Generator, n: int, lift: float) -> tuple[np.ndarray, np.ndarray]:
    z = rng.gamma(2.0, 10.0, n)
    return lift * (z + rng.gamma(2.0, 6.0, n)), z + rng.gamma(2.0, 5.0, n)


@pytest.mark.parametrize("cov_type", ["HC1", "HC2"])
def test_cuped_equals_ols_with_robust_errors(cov_type):
    # The issue asks for "CUPED ... (OLS with robust errors)": the regression-adjusted difference is the treatment
    # coefficient of y ~ 1 + T + x and its standard error matches the heteroskedasticity-robust one.
    rng = np.random.default_rng(4)
    (yt, xt), (yc, xc) = cuped_arm(rng, 3000, 1.05), cuped_arm(rng, 3200, 1.0)
    e = analyse(WATCH, moments(watch_seconds=yc, pre_watch_seconds=xc),
                moments(watch_seconds=yt, pre_watch_seconds=xt), alpha=0.05, sequential=False, cuped=True)
    design = np.column_stack([np.ones(6200), np.r_[np.ones(3000), np.zeros(3200)], np.r_[xt, xc]])
    fit = sm.OLS(np.r_[yt, yc], design).fit(cov_type=cov_type)
    se = (e.difference_upper - e.difference) / sps.norm.ppf(0.975)
    assert e.cuped and e.method == "cuped-z"
    assert e.difference == pytest.approx(fit.params[1], rel=2e-3)
    assert se == pytest.approx(fit.bse[1], rel=0.02)
    plain = analyse(WATCH, moments(watch_seconds=yc), moments(watch_seconds=yt), alpha=0.05, sequential=False,
                    cuped=False)
    plain_se = (plain.difference_upper - plain.difference_lower) / 2 / sps.t.ppf(0.975, 6000)
    assert e.variance_reduction == pytest.approx(1 - (se / plain_se) ** 2, rel=0.01)
    assert e.variance_reduction > 0.4


def test_cuped_on_a_ratio_metric_and_its_fallbacks():
    rng = np.random.default_rng(5)

    def arm(n):
        taste = rng.beta(2, 30, n)
        pre_imp, imp = rng.poisson(20, n) + 1, rng.poisson(20, n) + 1
        return dict(clicks=rng.binomial(imp, taste), impressions=imp, pre_clicks=rng.binomial(pre_imp, taste),
                    pre_impressions=pre_imp)

    t, c = moments(**arm(4000)), moments(**arm(4000))
    e = analyse(CTR, c, t, alpha=0.05, sequential=False, cuped=True)
    assert e.cuped and 0.05 < e.variance_reduction < 1
    no_pre = moments(clicks=[1, 2, 0], impressions=[5, 5, 5], pre_clicks=[0, 0, 0], pre_impressions=[0, 0, 0])
    fallback = analyse(CTR, no_pre, no_pre, alpha=0.05, sequential=False, cuped=True)
    assert not fallback.cuped and fallback.method == "delta-z" and fallback.variance_reduction is None
    latency = analyse(METRICS["LATENCY_MS"], moments(latency_ms=[5, 7, 9], lists=[1, 1, 2]),
                      moments(latency_ms=[4, 8, 9], lists=[1, 2, 2]), alpha=0.05, sequential=False, cuped=True)
    assert not latency.cuped  # no covariate defined for latency


# --- sequential ---------------------------------------------------------------------------------------------------

def test_sequential_p_value_inverts_the_confidence_sequence():
    rng = np.random.default_rng(6)
    for lift in (1.0, 1.05, 1.1, 1.2, 1.3):
        yt, yc = skewed(rng, 2500, lift), skewed(rng, 2500)
        e = analyse(WATCH, moments(watch_seconds=yc), moments(watch_seconds=yt), alpha=0.05, sequential=True,
                    cuped=False)
        fixed = analyse(WATCH, moments(watch_seconds=yc), moments(watch_seconds=yt), alpha=0.05,
                        sequential=False, cuped=False)
        assert e.method == "sequential-cs"
        assert (e.p_value < 0.05) == (e.difference_lower > 0 or e.difference_upper < 0)
        assert e.difference_upper - e.difference_lower > fixed.difference_upper - fixed.difference_lower
        assert e.p_value >= fixed.p_value
    # At |d| = halfwidth(alpha) the always-valid p-value is alpha itself.
    var, n = 0.37, 8000
    half = float(sequential_halfwidth(var, n, 0.05, 5000.0))
    assert float(sequential_p_value(half, var, n, 0.05, 5000.0)) == pytest.approx(0.05, rel=1e-9)
    # GrowthBook's formula by hand: rho^2 = (-2 ln a + ln(-2 ln a + 1)) / N*.
    r2 = (-2 * math.log(0.05) + math.log(-2 * math.log(0.05) + 1)) / 5000
    by_hand = math.sqrt(var * n) * math.sqrt(2 * (n * r2 + 1) / (n**2 * r2) * math.log(math.sqrt(n * r2 + 1) / 0.05))
    assert half == pytest.approx(by_hand, rel=1e-12)


# --- None, never NaN ------------------------------------------------------------------------------------------------

DEGENERATE = {
    "no users": (Moments(n=0), Moments(n=0)),
    "one user": (moments(watch_seconds=[3.0]), moments(watch_seconds=[5.0])),
    "one user a side": (moments(watch_seconds=[3.0, 4.0]), moments(watch_seconds=[5.0])),
    "zero variance": (moments(watch_seconds=[2.0, 2.0, 2.0]), moments(watch_seconds=[2.0, 2.0])),
}


@pytest.mark.parametrize("case", DEGENERATE)
@pytest.mark.parametrize("sequential,cuped", [(False, False), (True, True)])
def test_degenerate_arms_give_none_not_nan(case, sequential, cuped):
    control, treatment = DEGENERATE[case]
    e = analyse(WATCH, control, treatment, alpha=0.05, sequential=sequential, cuped=cuped)
    assert_no_nan(e)
    stat_fields = [f.name for f in fields(Effect) if f.name.startswith(("difference", "relative", "p_value"))]
    assert all(getattr(e, name) is None for name in stat_fields)
    assert e.value == (None if treatment.n == 0 else pytest.approx(treatment.mean("watch_seconds")))


def test_zero_impressions_and_zero_conversions_give_none():
    empty = moments(clicks=[0, 0, 0], impressions=[0, 0, 0])
    e = analyse(CTR, empty, empty, alpha=0.05, sequential=False, cuped=True)
    assert e.value is None and e.control_value is None and e.p_value is None
    assert_no_nan(e)
    half = analyse(CTR, empty, moments(clicks=[1, 0], impressions=[4, 3]), alpha=0.05, sequential=False, cuped=False)
    assert half.value == pytest.approx(1 / 7) and half.control_value is None and half.difference is None
    none_converted = moments(converted=np.zeros(50))
    e = analyse(CONV, none_converted, none_converted, alpha=0.05, sequential=False, cuped=False)
    assert e.value == 0.0 and e.difference is None and e.p_value is None
    # the control converts nobody, the treatment some: a difference, but no relative one
    e = analyse(CONV, none_converted, moments(converted=np.r_[np.ones(5), np.zeros(45)]), alpha=0.05,
                sequential=False, cuped=False)
    assert e.difference == pytest.approx(0.1) and e.p_value is not None and e.relative_difference is None
    assert_no_nan(e)


# --- SRM and multiple testing ---------------------------------------------------------------------------------------

def test_srm_flags_a_48_52_split_and_not_a_50_50_one():
    bad = sample_ratio([24_000, 26_000], [1, 1])
    assert bad.mismatch and bad.p_value < 1e-10 and bad.expected == (0.5, 0.5)
    fine = sample_ratio([25_000, 25_000], [50, 50])
    assert not fine.mismatch and fine.p_value == pytest.approx(1.0)
    near = sample_ratio([24_900, 25_100], [1, 1])  # chi2 = 0.8, p = 0.37
    assert not near.mismatch and near.p_value == pytest.approx(sps.chi2.sf(0.8, 1))
    three = sample_ratio([5000, 2500, 2500], [2, 1, 1])
    assert not three.mismatch and three.expected == (0.5, 0.25, 0.25)
    assert sample_ratio([0, 0], [1, 1]).p_value is None
    assert sample_ratio([10, 3], [1, 0]).mismatch  # users in a variant planned to get none


def test_holm_skips_nones():
    assert holm([0.01, None, 0.04, 0.03]) == [pytest.approx(0.03), None, pytest.approx(0.06), pytest.approx(0.06)]
    ps = [0.2, 0.001, None, 0.02, None, 0.5]
    expected = multipletests([0.2, 0.001, 0.02, 0.5], method="holm")[1]
    assert [p for p in holm(ps) if p is not None] == pytest.approx(list(expected))
    assert holm([None, None]) == [None, None] and holm([]) == []


def test_holm_equals_statsmodels_on_random_p_values_with_ties():
    rng = np.random.default_rng(3)
    for size in (1, 2, 5, 17):
        ps = np.round(rng.uniform(0, 0.2, size), 3)  # rounded: ties happen
        assert holm(list(ps)) == pytest.approx(list(multipletests(ps, method="holm")[1]))


# --- guardrails ----------------------------------------------------------------------------------------------------

def test_non_inferiority_of_a_mean_equals_ttost_ind():
    rng = np.random.default_rng(7)
    yt, yc = skewed(rng, 3000, 0.99), skewed(rng, 2800)
    p, passed, method = non_inferiority(WATCH, moments(watch_seconds=yc), moments(watch_seconds=yt), margin=0.1,
                                        alpha=0.05)
    margin = 0.1 * yc.mean()
    _, lower, _ = ttost_ind(yt, yc, -margin, margin, usevar="unequal")
    assert method == "welch-t-noninferiority" and p == pytest.approx(lower[1], rel=1e-9)
    assert passed == (lower[1] < 0.05)


def test_non_inferiority_of_proportions_and_lower_is_better():
    counts = (560, 5000, 600, 5000)
    t = moments(converted=np.r_[np.ones(560), np.zeros(4440)])
    c = moments(converted=np.r_[np.ones(600), np.zeros(4400)])
    p, _, method = non_inferiority(CONV, c, t, margin=0.2, alpha=0.05)
    ref = smp.tost_proportions_2indep(*counts, 0.8, 1.2, compare="ratio", method="score").results_larger.pvalue
    assert p == pytest.approx(ref) and method.startswith("tost-proportions")
    latency = METRICS["LATENCY_MS"]
    rng = np.random.default_rng(8)
    base = moments(latency_ms=rng.gamma(4, 25, 4000), lists=np.ones(4000))
    faster = moments(latency_ms=rng.gamma(4, 23, 4000), lists=np.ones(4000))
    slower = moments(latency_ms=rng.gamma(4, 32, 4000), lists=np.ones(4000))
    assert non_inferiority(latency, base, faster, margin=0.05, alpha=0.05)[1] is True
    assert non_inferiority(latency, base, slower, margin=0.05, alpha=0.05)[1] is False
    assert non_inferiority(latency, Moments(n=0), slower, margin=0.05, alpha=0.05)[:2] == (None, None)


# --- planning ------------------------------------------------------------------------------------------------------

def test_plan_matches_statsmodels_and_textbook_cases():
    # Cohen (1988), table 2.4.1: d = 0.5, two-sided alpha 0.05, power 0.8 -> 64 per group.
    assert plan(WATCH, baseline=10.0, baseline_sd=10.0, mde=0.5, alpha=0.05, power=0.8, variants=2) == (64, 128)
    n = tt_ind_solve_power(effect_size=0.1 * 40 / 90, alpha=0.05, power=0.9)
    assert plan(WATCH, baseline=40, baseline_sd=90, mde=0.1, alpha=0.05, power=0.9, variants=2)[0] == math.ceil(n)
    # Fleiss' formula by hand: n = (z_a/2 sqrt(2 pbar qbar) + z_b sqrt(p1 q1 + p2 q2))^2 / (p1 - p2)^2.
    p2, p1 = 0.10, 0.11
    za, zb, pbar = sps.norm.ppf(0.975), sps.norm.ppf(0.8), (p1 + p2) / 2
    fleiss = (za * math.sqrt(2 * pbar * (1 - pbar)) + zb * math.sqrt(p1 * (1 - p1) + p2 * (1 - p2))) ** 2 / 0.01**2
    per, total = plan(CONV, baseline=0.10, baseline_sd=None, mde=0.1, alpha=0.05, power=0.8, variants=2)
    assert per == math.ceil(fleiss) == math.ceil(smp.samplesize_proportions_2indep_onetail(0.01, 0.10, 0.8))
    assert total == 2 * per
    # three variants: each comparison at alpha / 2 (Bonferroni)
    per3, total3 = plan(CTR, baseline=0.05, baseline_sd=None, mde=0.1, alpha=0.05, power=0.8, variants=3)
    assert per3 == math.ceil(smp.samplesize_proportions_2indep_onetail(0.005, 0.05, 0.8, alpha=0.025))
    assert total3 == 3 * per3


@pytest.mark.parametrize("metric,kwargs,field", [
    ("WATCH_SECONDS", {"baseline": 30.0}, "baselineStdDev"),
    ("INTERACTIONS_PER_USER", {"baseline": 4.0}, "baselineStdDev"),
    ("LATENCY_MS", {"baseline": 80.0}, "baselineStdDev"),
    ("WATCH_SECONDS", {"baseline": 30.0, "baseline_sd": -1.0}, "baselineStdDev"),
    ("CTR", {"alpha": 0.0}, "alpha"),
    ("CTR", {"alpha": 1.0}, "alpha"),
    ("CTR", {"power": 1.5}, "power"),
    ("CTR", {"mde": 0.0}, "minimumDetectableEffect"),
    ("CTR", {"mde": 20.0}, "minimumDetectableEffect"),  # a 105% click-through rate
    ("CTR", {"baseline": 1.2}, "baseline"),
    ("USER_CONVERSION", {"baseline": 0.0}, "baseline"),
    ("CTR", {"variants": 1}, "variants"),
])
def test_plan_rejects_bad_input_with_its_field(metric, kwargs, field):
    args = dict(baseline=0.05, baseline_sd=None, mde=0.1, alpha=0.05, power=0.8, variants=2) | kwargs
    with pytest.raises(BadInput) as err:
        plan(METRICS[metric], **args)
    assert err.value.field == field


# --- bandit --------------------------------------------------------------------------------------------------------

def test_thompson_weights_keep_the_floor_and_sum_to_one():
    w = thompson_weights([0.98, 0.02, 0.0])
    assert sum(w) == pytest.approx(1) and min(w) >= 0.05 - 1e-12 and w[0] > 0.8
    assert thompson_weights([None, None, None]) == pytest.approx([1 / 3] * 3)
    assert thompson_weights([0.5, 0.5]) == pytest.approx([0.5, 0.5])
    assert thompson_weights([1.0, None]) == pytest.approx([0.95, 0.05])
    assert thompson_weights([0.2] * 25, floor=0.05) == pytest.approx([0.04] * 25)  # floor impossible: equal


def test_posteriors_rank_arms_and_respect_direction():
    arms = [moments(clicks=np.r_[np.ones(50), np.zeros(950)], impressions=np.ones(1000)),
            moments(clicks=np.r_[np.ones(80), np.zeros(920)], impressions=np.ones(1000))]
    (m0, lo0, hi0, p0), (m1, lo1, hi1, p1) = posteriors(CTR, arms)
    assert m0 == pytest.approx(51 / 1002) and lo0 < m0 < hi0 and p0 + p1 == pytest.approx(1)
    assert p1 > 0.99
    assert sps.beta(81, 921).ppf(0.025) == pytest.approx(lo1)
    empty = [moments(empty_lists=np.r_[np.ones(30), np.zeros(970)], lists=np.ones(1000)),
             moments(empty_lists=np.r_[np.ones(60), np.zeros(940)], lists=np.ones(1000))]
    assert posteriors(METRICS["EMPTY_RATE"], empty)[0][3] > 0.99  # fewer empty lists is better
    rng = np.random.default_rng(9)
    watch = [moments(watch_seconds=rng.gamma(2, 10, 2000)), moments(watch_seconds=rng.gamma(2, 11, 2000)),
             moments(watch_seconds=[7.0]), Moments(n=0)]
    out = posteriors(WATCH, watch, seed=3)
    assert out == posteriors(WATCH, watch, seed=3)  # fixed seed: same sums, same answer
    assert out[1][3] > out[0][3] and sum(p[3] for p in out) == pytest.approx(1)
    assert out[3][2] - out[3][1] > out[0][2] - out[0][1]  # the empty arm only has the weak prior
    assert posteriors(WATCH, [Moments(n=0), Moments(n=0)]) == [(None, None, None, None)] * 2
    assert thompson_weights([None, None]) == [0.5, 0.5]


# --- the relative interval (Fieller) agrees with the test ---------------------------------------------------------

@pytest.mark.parametrize("sequential", [False, True])
def test_the_relative_interval_excludes_zero_exactly_when_the_difference_is_significant(sequential):
    """Small, noisy arms (where a symmetric delta-method interval on d / f_c crossed 0 at p = 0.02): Fieller's
    interval is 0-free exactly when p < alpha, for the ratio, mean and sequential analyses."""
    rng = np.random.default_rng(5)
    checked = disagreements = 0
    for trial in range(400):
        n_c, n_t = rng.integers(20, 200, 2)
        lift = rng.choice([1.0, 1.5, 2.0])
        imp_c, imp_t = 1.0 + rng.poisson(8, n_c), 1.0 + rng.poisson(8, n_t)
        clicks_c = rng.binomial(imp_c.astype(int), rng.beta(1, 6, n_c)).astype(float)
        clicks_t = rng.binomial(imp_t.astype(int), np.minimum(lift * rng.beta(1, 6, n_t), 1)).astype(float)
        cases = [(CTR, moments(clicks=clicks_c, impressions=imp_c), moments(clicks=clicks_t, impressions=imp_t)),
                 (WATCH, moments(watch_seconds=skewed(rng, n_c)), moments(watch_seconds=skewed(rng, n_t, lift)))]
        for spec, c, t in cases:
            e = analyse(spec, c, t, alpha=0.05, sequential=sequential, cuped=False)
            if e.p_value is None or e.relative_lower is None or abs(e.p_value - 0.05) < 1e-9:
                continue
            checked += 1
            zero_free = e.relative_lower > 0 or e.relative_upper < 0
            disagreements += zero_free != (e.p_value < 0.05)
            assert e.relative_lower <= e.relative_difference <= e.relative_upper
            assert (e.difference_lower > 0) == (e.relative_lower > 0) and (e.difference_upper < 0) == (
                e.relative_upper < 0)
    assert checked > 500 and disagreements == 0


def test_the_relative_interval_is_null_when_the_control_value_is_indistinguishable_from_zero():
    # two users of the control, one of whom clicked once in 50 impressions: f_c is not distinguishable from 0
    c = moments(clicks=np.array([0.0, 1.0, 0.0]), impressions=np.array([50.0, 50.0, 1.0]))
    t = moments(clicks=np.array([5.0, 9.0, 7.0]), impressions=np.array([50.0, 50.0, 40.0]))
    e = analyse(CTR, c, t, alpha=0.05, sequential=False, cuped=False)
    assert e.relative_difference is not None and e.difference is not None
    assert e.relative_lower is None and e.relative_upper is None
