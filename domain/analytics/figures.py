"""What the analytics queries answer, computed from stored rollup parts (pure: the service reads, these add up).

The catalogue and audience figures add up per-day maps (tens of thousands of entries over a quarter), so the
service runs them off the event loop.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import compress, repeat
from typing import Any

from domain.analytics import stats
from domain.analytics.rollup import DAY, HOUR, unpack


class Granularity(enum.StrEnum):
    HOUR = "HOUR"
    DAY = "DAY"

    @property
    def step(self) -> timedelta:
        """Return the length of one bucket."""
        return HOUR if self is Granularity.HOUR else DAY


@dataclass(frozen=True, slots=True)
class Point:
    """One bucket of a series."""

    start: datetime
    impressions: int
    clicks: int
    conversions: int
    watch_seconds: float
    watches: int
    interactions: int
    attributed: int
    active_users: int
    new_users: int

    @property
    def ctr(self) -> float | None:
        """Return clicks per impression (None without impressions)."""
        return stats.ctr(self.clicks, self.impressions)


@dataclass(frozen=True, slots=True)
class Series:
    scenario_id: str
    start: datetime
    end: datetime
    granularity: Granularity
    points: tuple[Point, ...]
    rolled_up_to: datetime | None


@dataclass(frozen=True, slots=True)
class Stat:
    """Impressions and clicks of an item, category, list position or recall source."""

    name: str
    impressions: int
    clicks: int

    @property
    def ctr(self) -> float | None:
        """Return clicks per impression (None without impressions)."""
        return stats.ctr(self.clicks, self.impressions)


@dataclass(frozen=True, slots=True)
class CatalogueStats:
    scenario_id: str
    start: datetime
    end: datetime
    active_items: int
    recommended_items: int
    coverage: float
    gini: float | None
    long_tail_items: int
    long_tail_share: float
    top_items_by_impressions: tuple[Stat, ...]
    top_items_by_ctr: tuple[Stat, ...]
    top_categories_by_impressions: tuple[Stat, ...]
    top_categories_by_ctr: tuple[Stat, ...]
    rolled_up_to: datetime | None


@dataclass(frozen=True, slots=True)
class AudienceStats:
    scenario_id: str
    start: datetime
    end: datetime
    users: int
    mean_events_per_user: float | None
    median_events_per_user: float | None
    events_per_user: tuple[stats.CountBucket, ...]
    retention: tuple[stats.Cohort, ...]
    ctr_by_position: tuple[Stat, ...]  # name: the 1-based position
    ctr_by_source: tuple[Stat, ...]
    rolled_up_to: datetime | None


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def point(start: datetime, counters: Mapping[str, float]) -> Point:
    """Return a series point from a bucket's stored counters (all 0 for a bucket never stored)."""
    get = counters.get
    return Point(start, int(get("impressions", 0)), int(get("clicks", 0)), int(get("conversions", 0)),
                 float(get("watch_seconds", 0.0)), int(get("watches", 0)), int(get("interactions", 0)),
                 int(get("attributed", 0)), int(get("active_users", 0)), int(get("new_users", 0)))


def points(starts: Sequence[datetime], heads: Iterable[Mapping[str, Any]]) -> tuple[Point, ...]:
    """Return a point for each bucket start, from the stored parts 0 found (the others empty)."""
    found = {_utc(doc["start"]): doc.get("c") or {} for doc in heads}
    return tuple(point(at, found.get(at, {})) for at in starts)


def hour_points(starts: Sequence[datetime], heads: Iterable[Mapping[str, Any]]) -> tuple[Point, ...]:
    """Return a point for each hour start, from the hourly figures (`hc`) of the day heads found."""
    found: dict[datetime, dict[str, float]] = {}
    for doc in heads:
        day, hourly = _utc(doc["start"]), doc.get("hc") or {}
        for k in range(24):
            found[day + k * HOUR] = {name: values[k] for name, values in hourly.items()}
    return tuple(point(at, found.get(at, {})) for at in starts)


def _add(into: dict[str, list[int]], name: str, shown: int, clicked: int) -> None:
    row = into.get(name)
    if row is None:
        into[name] = [shown, clicked]
    else:
        row[0] += shown
        row[1] += clicked


def add_counts(into: dict[str, int], keys: list[str], counts: list[int]) -> None:
    """Add counts to `into` by key (keys distinct), in C loops: a quarter's maps hold hundreds of thousands of
    entries, and a Python loop over them costs more than reading them."""
    into.update(zip(keys, map(operator.add, counts, map(into.get, keys, repeat(0)))))


def item_totals(docs: Iterable[Mapping[str, Any]]) -> tuple[dict[str, int], dict[str, int]]:
    """Return each item's impressions and clicks summed over stored item-map parts."""
    shown: dict[str, int] = {}
    clicked: dict[str, int] = {}
    for doc in docs:
        ids, impressions, clicks = unpack(doc)
        add_counts(shown, ids, impressions)
        add_counts(clicked, ids, clicks)
    return shown, clicked


def catalogue(
    docs: Iterable[Mapping[str, Any]], items: Mapping[str, tuple[bool, tuple[str, ...]]], *, first: int,
    min_impressions: int, scenario_id: str, start: datetime, end: datetime, rolled_up_to: datetime | None,
) -> CatalogueStats:
    """Return the catalogue figures of the day parts read; `items`: item -> (ACTIVE now, categories)."""
    shown, clicked = item_totals(docs)
    active = [i for i, (is_active, _) in items.items() if is_active]
    impressions = list(map(shown.get, active, repeat(0)))
    recommended = sum(1 for n in impressions if n > 0)
    categories: dict[str, list[int]] = {}
    for item, n in shown.items():
        for category in items.get(item, (False, ()))[1]:
            _add(categories, category, n, clicked[item])
    item_rows = [(i, n, clicked[i]) for i, n in shown.items()]
    category_rows = [(k, n, c) for k, (n, c) in categories.items()]

    def tops(rows: list[tuple[str, int, int]], by_ctr: bool) -> tuple[Stat, ...]:
        return tuple(Stat(*r) for r in stats.top(rows, first, by_ctr=by_ctr, min_impressions=min_impressions))

    return CatalogueStats(
        scenario_id, start, end, active_items=len(active), recommended_items=recommended,
        coverage=stats.coverage({i for i, n in shown.items() if n > 0}, active),
        gini=stats.gini(impressions), long_tail_items=len(active) - recommended,
        long_tail_share=(len(active) - recommended) / len(active) if active else 0.0,
        top_items_by_impressions=tops(item_rows, False), top_items_by_ctr=tops(item_rows, True),
        top_categories_by_impressions=tops(category_rows, False), top_categories_by_ctr=tops(category_rows, True),
        rolled_up_to=rolled_up_to,
    )


def audience(
    heads: Iterable[Mapping[str, Any]], user_maps: Iterable[Mapping[str, Any]], weeks: Sequence[datetime], *,
    first_day: datetime, scenario_id: str, start: datetime, end: datetime, rolled_up_to: datetime | None,
) -> AudienceStats:
    """Return the audience figures of the days read: heads from `first_day`, user maps (who was active, how much,
    and who was new) from the first of `weeks`."""
    events: dict[str, int] = {}
    active_weeks: dict[datetime, set[str]] = {}
    first_weeks: dict[str, datetime] = {}
    for doc in user_maps:  # days and whole weeks
        day = _utc(doc["start"])
        week = stats.week_start(day)
        users, counts, new = unpack(doc)
        active_weeks.setdefault(week, set()).update(users)
        first_weeks.update(zip(compress(users, new), repeat(week)))
        if day >= first_day:
            add_counts(events, users, counts)
    positions: list[list[int]] = []
    sources: dict[str, list[int]] = {}
    for doc in heads:
        for k, (n, c) in enumerate(zip(doc.get("pn", ()), doc.get("pc", ()), strict=True)):
            if k == len(positions):
                positions.append([0, 0])
            positions[k][0] += n
            positions[k][1] += c
        for row in doc.get("src", ()):
            _add(sources, row["s"], row["n"], row["c"])
    cohorts = stats.retention(first_weeks, active_weeks, weeks)
    counts = sorted(events.values())
    mean, median = stats.mean_median(counts)
    return AudienceStats(
        scenario_id, start, end, users=len(events), mean_events_per_user=mean, median_events_per_user=median,
        events_per_user=tuple(stats.event_buckets(counts)), retention=tuple(cohorts),
        ctr_by_position=tuple(Stat(str(p), n, c) for p, (n, c) in enumerate(positions, start=1) if n or c),
        ctr_by_source=tuple(Stat(s, n, c) for s, (n, c) in sorted(sources.items(), key=lambda kv: (-kv[1][0], kv[0]))),
        rolled_up_to=rolled_up_to,
    )
