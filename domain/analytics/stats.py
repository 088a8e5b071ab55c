"""The analytics' statistics, as small pure functions over rolled-up counts (the README's "Analytics" states them).

- ctr = clicks / impressions (None without impressions), as the live `metrics` define it;
- coverage = |active items shown at least once| / |active items| (catalogue coverage, Shani & Gunawardana,
  "Evaluating Recommendation Systems", Recommender Systems Handbook, 2011, section 8.3.3 "Coverage");
- Gini of impressions over the active items (zeros included), the same section's sales-diversity index:
  G = 1 / (n - 1) * sum_{j=1..n} (2j - n - 1) * p_j, where p_j is item j's share of the impressions and the items
  are sorted by impressions ascending: 0 when every item is shown equally, 1 when one item takes every impression;
- events per user: how many users fall in each of `EVENT_BUCKETS`, with the mean and the median;
- weekly retention: a cohort is the users whose first event in the scenario falls in a week (Monday 00:00 UTC);
  retained[k] is the share of the cohort with at least one event k weeks later (k = 0 is that week itself).
"""

from __future__ import annotations

import heapq
import statistics
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

# (lower, upper) events per user, both inclusive; None: no upper bound.
EVENT_BUCKETS: tuple[tuple[int, int | None], ...] = (
    (1, 1), (2, 2), (3, 5), (6, 10), (11, 20), (21, 50), (51, 100), (101, None),
)
WEEK = timedelta(days=7)


def ctr(clicks: float, impressions: float) -> float | None:
    """Return clicks per impression, or None without impressions."""
    return clicks / impressions if impressions else None


def gini(values: Iterable[float]) -> float | None:
    """Return the Gini index of non-negative values (module docstring); None for fewer than two values or a
    zero sum."""
    ordered = sorted(values)
    n, total = len(ordered), sum(ordered)
    if n < 2 or total <= 0:
        return None
    weighted = sum((2 * j - n - 1) * x for j, x in enumerate(ordered, start=1))
    return weighted / ((n - 1) * total)


def coverage(shown: Collection[str], active: Collection[str]) -> float:
    """Return the share of active items that were shown (0 without active items)."""
    if not active:
        return 0.0
    return sum(1 for item in active if item in shown) / len(active)


@dataclass(frozen=True, slots=True)
class CountBucket:
    """Users with lower <= events <= upper (upper None: no bound)."""

    lower: int
    upper: int | None
    users: int


def event_buckets(counts: Iterable[int], bounds: Sequence[tuple[int, int | None]] = EVENT_BUCKETS) -> list[CountBucket]:
    """Return how many users' event counts fall in each bucket (every bucket, empty ones included)."""
    tally = [0] * len(bounds)
    for n in counts:
        for k, (lower, upper) in enumerate(bounds):
            if n >= lower and (upper is None or n <= upper):
                tally[k] += 1
                break
    return [CountBucket(lower, upper, users) for (lower, upper), users in zip(bounds, tally, strict=True)]


def mean_median(counts: Sequence[int]) -> tuple[float | None, float | None]:
    """Return the mean and median of the counts (None, None when there are none)."""
    if not counts:
        return None, None
    return sum(counts) / len(counts), float(statistics.median(counts))


def week_start(at: datetime) -> datetime:
    """Return the start (Monday 00:00, same timezone) of the week holding `at`."""
    day = at.replace(hour=0, minute=0, second=0, microsecond=0)
    return day - timedelta(days=day.weekday())


@dataclass(frozen=True, slots=True)
class Cohort:
    """The users whose first event fell in `week`, and the share of them active k weeks later."""

    week: datetime
    users: int
    retained: tuple[float, ...]


def retention(
    first_weeks: Mapping[str, datetime], active: Mapping[datetime, Collection[str]], weeks: Sequence[datetime]
) -> list[Cohort]:
    """Return a cohort for each of `weeks` (consecutive week starts) that gained users, oldest first.

    first_weeks: user -> the week of their first event; active: week -> the users with an event in it. A cohort's
    retained[k] covers the weeks from its own to the last of `weeks`.
    """
    cohorts: dict[datetime, set[str]] = {}
    for user, week in first_weeks.items():
        cohorts.setdefault(week, set()).add(user)
    out = []
    for i, week in enumerate(weeks):
        users = cohorts.get(week)
        if not users:
            continue
        shares = tuple(len(users.intersection(active.get(later, ()))) / len(users) for later in weeks[i:])
        out.append(Cohort(week, len(users), shares))
    return out


def top(rows: Iterable[tuple[str, int, int]], first: int, *, by_ctr: bool, min_impressions: int = 1
        ) -> list[tuple[str, int, int]]:
    """Return the first `first` of (name, impressions, clicks): by impressions (then clicks), or by CTR among rows
    with at least `min_impressions` impressions (then by impressions); ties by name."""
    if by_ctr:
        floor = max(1, min_impressions)
        return heapq.nsmallest(first, (r for r in rows if r[1] >= floor), key=lambda r: (-r[2] / r[1], -r[1], r[0]))
    return heapq.nsmallest(first, (r for r in rows if r[1] > 0), key=lambda r: (-r[1], -r[2], r[0]))
