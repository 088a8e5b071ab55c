"""INTERLEAVE: one list drafted from both variants' lists, and the per-user preference test over credited clicks.

Team-draft interleaving (Radlinski, Kurup, Joachims 2008, "How does clickthrough data reflect retrieval quality?",
CIKM): the two rankers pick in turns like captains choosing teams, the one with fewer picks first and a coin toss
on ties, each taking its highest-ranked item not yet shown; a click credits the team that placed the item. Each
user then prefers the variant whose items got more of their clicks (or neither: a tie), and the test is a sign test
of treatment wins against control wins, which cancels whatever makes one user click more than another.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from domain.experiments.moments import Moments
from domain.experiments.report import Preference

TEAM_A = "A"  # the first list: the control
TEAM_B = "B"


def _next(items: Sequence[str], start: int, shown: set[str]) -> int:
    """Return the index of the first item at or after start that is not shown yet (len(items) if none)."""
    while start < len(items) and items[start] in shown:
        start += 1
    return start


def team_draft(a: Sequence[str], b: Sequence[str], limit: int, *, rng: random.Random) -> list[tuple[str, str]]:
    """Return up to `limit` (item, team) pairs drafted from lists a (team "A") and b (team "B"), no duplicates.

    As in the paper's algorithm the draft stops when either list has nothing new left, so neither team gets picks
    the other could not answer (which would credit it clicks for free).
    """
    out: list[tuple[str, str]] = []
    shown: set[str] = set()
    ia = ib = picks_a = picks_b = 0
    while len(out) < limit:
        ia, ib = _next(a, ia, shown), _next(b, ib, shown)
        if ia >= len(a) or ib >= len(b):
            break
        if picks_a < picks_b or (picks_a == picks_b and rng.random() < 0.5):
            item, team, picks_a = a[ia], TEAM_A, picks_a + 1
        else:
            item, team, picks_b = b[ib], TEAM_B, picks_b + 1
        shown.add(item)
        out.append((item, team))
    return out


def preference(moments: Moments, *, alpha: float) -> Preference:
    """Return the users preferring each variant, the treatment's share of preferences with its Wilson interval
    (Wilson 1927; statsmodels `proportion_confint(method="wilson")`), and the two-sided sign test of share = 1/2
    (exact binomial; statsmodels `binom_test`). Ties (users with no or balanced credited clicks) do not count."""
    from statsmodels.stats.proportion import binom_test, proportion_confint  # 1-2 s to import: loaded when first used
    wins_a = int(round(moments.sum("prefers_a")))
    wins_b = int(round(moments.sum("prefers_b")))
    ties = max(moments.n - wins_a - wins_b, 0)
    decided = wins_a + wins_b
    if decided == 0:
        return Preference(wins_a, wins_b, ties, None, None, None, None, "sign-test")
    low, upp = proportion_confint(wins_b, decided, alpha=alpha, method="wilson")
    p = min(float(binom_test(wins_b, decided, prop=0.5, alternative="two-sided")), 1.0)
    return Preference(wins_a, wins_b, ties, wins_b / decided, float(low), float(upp), p, "sign-test")
