"""The windows of event time an interaction export reads: every event once, newest first, and no window much larger
than its target, however the events are spread (bursts, gaps, one millisecond crowded, a history decades old)."""

from __future__ import annotations

import random
from bisect import bisect_left
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

from domain.export import EARLIEST, GROW, MIN_SPAN, SHRINK, next_span, windows

END = datetime(2025, 6, 1, tzinfo=UTC)


class Store:
    """Events sorted by time; `fetch` reads one window as the index range would, and records its size."""

    def __init__(self, times: list[datetime]) -> None:
        self.times = sorted(times)
        self.sizes: list[int] = []

    async def fetch(self, lo: datetime, hi: datetime) -> AsyncIterator[list[dict]]:
        found = self.times[bisect_left(self.times, lo):bisect_left(self.times, hi)]
        self.sizes.append(len(found))
        rows = [{"ts": t, "n": i} for i, t in enumerate(reversed(found))]
        for start in range(0, len(rows), 3):
            yield rows[start:start + 3]


async def read(store: Store, **kwargs) -> list[datetime]:
    return [row["ts"] async for batch in windows(store.fetch, **kwargs) for row in batch]


def spread(rng: random.Random, n: int, start: datetime, days: float) -> list[datetime]:
    return [start + timedelta(seconds=rng.uniform(0, days * 86400)) for _ in range(n)]


async def test_every_event_once_newest_first_through_bursts_gaps_and_a_crowded_millisecond():
    rng = random.Random(7)
    crowded = datetime(2025, 5, 20, 12, tzinfo=UTC)
    times = [
        *spread(rng, 3000, datetime(2025, 3, 1, tzinfo=UTC), 90),  # steady recent traffic
        *spread(rng, 1500, datetime(2025, 5, 10, tzinfo=UTC), 0.02),  # a burst of half an hour
        *[crowded] * 120,  # one millisecond
        *spread(rng, 200, datetime(1998, 1, 1, tzinfo=UTC), 365),  # an import decades old, after a long gap
        datetime(1, 1, 1, tzinfo=UTC), datetime(1, 1, 1, 0, 0, 1, tzinfo=UTC),  # the earliest times there are
    ]
    store = Store(times)
    got = await read(store, start=None, end=END, target=100, first_span=timedelta(hours=1))
    assert got == sorted(times, reverse=True)
    assert sum(store.sizes) == len(times)
    # Most windows stay near the target; the crowded millisecond and the first one after the gap are the exceptions.
    assert sorted(store.sizes)[-3] <= 100 * GROW * 2
    assert len(store.sizes) < 400


async def test_the_range_is_half_open_and_bounded_by_start():
    t = datetime(2025, 1, 1, tzinfo=UTC)
    store = Store([t - timedelta(milliseconds=1), t, t + timedelta(hours=1), t + timedelta(days=2)])
    got = await read(store, start=t, end=t + timedelta(days=2), target=1, first_span=timedelta(minutes=5))
    assert got == [t + timedelta(hours=1), t]


async def test_an_empty_history_costs_a_few_dozen_empty_reads():
    store = Store([])
    assert await read(store, start=None, end=END) == []
    assert len(store.sizes) < 64 and not any(store.sizes)


async def test_a_start_later_than_the_end_reads_nothing():
    store = Store([END - timedelta(seconds=1)])
    assert await read(store, start=END, end=END) == []
    assert store.sizes == []


def test_span_follows_the_density_within_bounds():
    hour = timedelta(hours=1)
    assert next_span(hour, 0, target=100) == hour * GROW  # nothing there: look further back faster
    assert next_span(hour, 100, target=100) == hour
    assert next_span(hour, 50, target=100) == hour * 2
    assert next_span(hour, 10_000, target=100) == hour / SHRINK  # crowded: shrink, at most 8x at once
    assert next_span(MIN_SPAN, 10_000, target=100) == MIN_SPAN
    assert EARLIEST.year == 1
