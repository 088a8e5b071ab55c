"""Team-draft interleaving, the preference test, and how much less traffic it needs than an A/B split."""

from __future__ import annotations

import random

import numpy as np
import pytest
from scipy import stats as sps

from domain.experiments.interleave import preference, team_draft
from domain.experiments.metrics import METRICS
from domain.experiments.moments import Moments
from domain.experiments.stats import analyse

# --- team draft ----------------------------------------------------------------------------------------------------


def test_team_draft_is_a_fair_draft_of_both_lists():
    rng, r = np.random.default_rng(0), random.Random(0)
    for _ in range(300):
        a = [f"i{x}" for x in rng.permutation(30)[:10]]
        b = [f"i{x}" for x in rng.permutation(30)[:10]]
        out = team_draft(a, b, 10, rng=r)
        items = [item for item, _ in out]
        assert len(items) == len(set(items)) <= 10
        for prefix in range(1, len(out) + 1):  # the team with fewer picks always picks next
            teams = [team for _, team in out[:prefix]]
            assert abs(teams.count("A") - teams.count("B")) <= 1
        shown: set[str] = set()
        for item, team in out:  # each pick is the picking team's best item not shown yet
            source = a if team == "A" else b
            assert item == next(x for x in source if x not in shown)
            shown.add(item)
        assert len(out) == 10  # two 10-item lists of one candidate pool always fill the page


def test_team_draft_edge_cases():
    r = random.Random(1)
    same = ["x", "y", "z"]
    assert [item for item, _ in team_draft(same, same, 10, rng=r)] == same
    assert team_draft(["x"], ["y"], 0, rng=r) == []
    assert team_draft([], ["y"], 5, rng=r) == []
    # the draft ends when either list has nothing new: no free picks for the longer list
    for _ in range(20):
        out = team_draft(["x"], ["y", "z", "w"], 10, rng=r)
        assert out in ([("x", "A")], [("y", "B"), ("x", "A")])
    firsts = [team_draft(["a", "b"], ["c", "d"], 4, rng=r)[0][1] for _ in range(2000)]
    assert 0.45 < firsts.count("A") / 2000 < 0.55  # the coin toss decides who picks first
    assert team_draft(same, ["q"], 3, rng=random.Random(7)) == team_draft(same, ["q"], 3, rng=random.Random(7))


def test_preference_is_a_sign_test_with_a_wilson_interval():
    m = Moments(n=1000, sums={"prefers_a": 40.0, "prefers_b": 60.0})
    p = preference(m, alpha=0.05)
    low, upp = sps.binomtest(60, 100).proportion_ci(method="wilson")
    assert (p.control_wins, p.treatment_wins, p.ties) == (40, 60, 900)
    assert p.share == pytest.approx(0.6) and (p.lower, p.upper) == (pytest.approx(low), pytest.approx(upp))
    assert p.p_value == pytest.approx(sps.binomtest(60, 100).pvalue)
    empty = preference(Moments(n=10), alpha=0.05)
    assert empty.ties == 10 and empty.share is None and empty.p_value is None


# --- simulation: interleaving against an A/B split -------------------------------------------------------------------
#
# Each user has SESSIONS sessions; each session has CANDIDATES items of attractiveness ~ Beta(1, 6). Ranker A sorts
# them by attractiveness plus N(0, 0.20) noise, ranker B (better) with N(0, 0.15) noise; a page shows the top PAGE.
# A click at position k happens with probability min(1, u gamma_k a): gamma_k = k^-0.8 is the position bias and
# u ~ Gamma(0.5, 2) (mean 1) the user's propensity to click, very unequal between users as in real traffic. The A/B
# split shows each user one ranker and compares CTR per user (delta-method z test, `analyse`); interleaving shows
# each session a team draft of both lists and tests the per-user preference (sign test, `preference`).

CANDIDATES, PAGE, SESSIONS = 40, 10, 3
POSITION_BIAS = 1.0 / np.arange(1, PAGE + 1) ** 0.8


def sessions(rng: np.random.Generator, users: int):
    """Return each session's attractiveness, both rankers' pages and its user's click propensity."""
    n = users * SESSIONS
    attract = rng.beta(1.0, 6.0, (n, CANDIDATES))
    page_a = np.argsort(-(attract + rng.normal(0, 0.20, attract.shape)), axis=1)[:, :PAGE]
    page_b = np.argsort(-(attract + rng.normal(0, 0.15, attract.shape)), axis=1)[:, :PAGE]
    propensity = np.repeat(rng.gamma(0.5, 2.0, users), SESSIONS)
    return attract, page_a, page_b, propensity


def clicked(rng, attract, page, propensity) -> np.ndarray:
    """Return which shown items each session clicks."""
    a = np.take_along_axis(attract, page, axis=1)
    return rng.random(a.shape) < np.minimum(1.0, propensity[:, None] * POSITION_BIAS * a)


def ab_clicks(rng, users: int, ranker: int) -> np.ndarray:
    """Return each user's clicks over their sessions under one ranker."""
    attract, page_a, page_b, propensity = sessions(rng, users)
    hits = clicked(rng, attract, (page_a, page_b)[ranker], propensity)
    return hits.sum(axis=1).reshape(users, SESSIONS).sum(axis=1)


def interleaved_preferences(rng, users: int) -> np.ndarray:
    """Return each user's preference over their interleaved sessions: -1 (A), 0 (tie), 1 (B)."""
    attract, page_a, page_b, propensity = sessions(rng, users)
    coin = random.Random(int(rng.integers(2**31)))
    shown = np.empty_like(page_a)
    team_b = np.zeros(page_a.shape, dtype=bool)
    for i, (a, b) in enumerate(zip(page_a.tolist(), page_b.tolist())):
        draft = team_draft(a, b, PAGE, rng=coin)  # distinct items from one candidate set: always a full page
        shown[i] = [item for item, _ in draft]
        team_b[i] = [team == "B" for _, team in draft]
    hits = clicked(rng, attract, shown, propensity)
    wins_b = (hits & team_b).sum(axis=1).reshape(users, SESSIONS).sum(axis=1)
    wins_a = (hits & ~team_b).sum(axis=1).reshape(users, SESSIONS).sum(axis=1)
    return np.sign(wins_b - wins_a)


def ab_power(rng, freq_a, freq_b, users: int, runs: int) -> float:
    """Return the share of A/B experiments with `users` in total whose CTR difference is significant at 5%."""
    per_arm = users // 2
    values = np.arange(len(freq_a), dtype=float)
    spec, hits = METRICS["CTR"], 0
    counts = [rng.multinomial(per_arm, f, size=runs) for f in (freq_a, freq_b)]  # users drawn from the pools
    for ca, cb in zip(*counts):
        arms = [Moments(per_arm, {"clicks": c @ values, "impressions": PAGE * SESSIONS * per_arm},
                        {("clicks", "clicks"): c @ values**2, ("impressions", "impressions"):
                         (PAGE * SESSIONS) ** 2 * per_arm, ("clicks", "impressions"): PAGE * SESSIONS * (c @ values)})
                for c in (ca, cb)]
        hits += analyse(spec, arms[0], arms[1], alpha=0.05, sequential=False, cuped=False).p_value < 0.05
    return hits / runs


def interleaving_power(rng, shares, users: int, runs: int) -> float:
    """Return the share of interleaving experiments with `users` whose sign test is significant at 5%."""
    counts = rng.multinomial(users, shares, size=runs)
    return float(np.mean([preference(Moments(users, {"prefers_a": a, "prefers_b": b}), alpha=0.05).p_value < 0.05
                          for a, _, b in counts.tolist()]))


def users_for_power(power_at, target: float = 0.8, start: int = 50, step: float = 1.25) -> float:
    """Return the users at which power first reaches target, interpolated on log(users) between grid points."""
    users, previous = start, (start, 0.0)
    while users < 10**6:
        p = power_at(users)
        if p >= target:
            (u0, p0), u1 = previous, users
            return float(np.exp(np.log(u0) + (target - p0) / (p - p0) * (np.log(u1) - np.log(u0))))
        previous, users = (users, p), int(users * step)
    raise AssertionError("power never reached")


def test_interleaving_needs_far_less_traffic_than_an_ab_split():
    rng = np.random.default_rng(2024)
    pool_a, pool_b = ab_clicks(rng, 60_000, 0), ab_clicks(rng, 60_000, 1)
    top = max(pool_a.max(), pool_b.max()) + 1
    freq_a, freq_b = (np.bincount(p, minlength=top) / len(p) for p in (pool_a, pool_b))
    prefs = interleaved_preferences(rng, 40_000)
    shares = [np.mean(prefs < 0), np.mean(prefs == 0), np.mean(prefs > 0)]
    ab_users = users_for_power(lambda n: ab_power(rng, freq_a, freq_b, n, 400))
    il_users = users_for_power(lambda n: interleaving_power(rng, shares, n, 400))
    ratio = ab_users / il_users
    lift = pool_b.mean() / pool_a.mean() - 1
    print(f"\nINTERLEAVING CTR {pool_a.mean() / PAGE / SESSIONS:.4f} -> {pool_b.mean() / PAGE / SESSIONS:.4f} "
          f"({lift:+.1%}); preferences A {shares[0]:.3f} B {shares[2]:.3f} ties {shares[1]:.3f}; users for 80% "
          f"power: A/B {ab_users:.0f}, interleaving {il_users:.0f}: {ratio:.1f}x fewer")
    assert ratio >= 5


def test_interleaving_of_equal_rankers_prefers_neither():
    # Team draft is unbiased: two rankers of equal quality (the same noise) split the preferences evenly.
    rng = np.random.default_rng(7)
    attract, page_a, _, propensity = sessions(rng, 6000)
    page_b = np.argsort(-(attract + rng.normal(0, 0.20, attract.shape)), axis=1)[:, :PAGE]
    coin, wins = random.Random(3), np.zeros(2)
    for i, (a, b) in enumerate(zip(page_a.tolist(), page_b.tolist())):
        draft = team_draft(a, b, PAGE, rng=coin)
        hits = clicked(rng, attract[i:i + 1], np.array([[x for x, _ in draft]]), propensity[i:i + 1])[0]
        for hit, (_, team) in zip(hits, draft):
            wins[team == "B"] += hit
    share = wins[1] / wins.sum()
    assert abs(share - 0.5) < 3 * 0.5 / np.sqrt(wins.sum())
