"""Live popularity from the consumer's 15-minute buckets: a decayed 1-hour sliding window, and trending (the
current hour against the hour before).

Buckets are keyed by event time and the window ends at the scenario's newest counted event (not the wall clock),
so a historical import reads like live traffic. Each read is one pipelined round trip; `LivePopularity` keeps each
scenario's lists for `ttl_s` in process, so a serving process reads Redis at most once a second per scenario.

Serving reads through `current` (or a `ScenarioPopularity` bound to one tenant and scenario): it answers from the
kept snapshot at once and refreshes it in a background task once it is `ttl_s` old, so a request never waits on
Redis, except the first one of a scenario, which waits at most `wait_s`. A failed read is retried at most once per
`ttl_s`; a snapshot older than `max_age_s` is no longer served (the sources fall back to the trained counts).
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass

import structlog
from redis import asyncio as aioredis

from domain.realtime.apply import BUCKET_S
from domain.realtime.keys import bucket_key, newest_key

log = structlog.get_logger()

WINDOW_BUCKETS = 4  # 4 x 15 minutes = the 1-hour window
BUCKET_HALF_LIFE = 2.0  # in buckets: a bucket 30 minutes older than the newest counts half
TOP = 500
MAX_AGE_S = 30.0  # a snapshot this old (Redis down since) is no longer served
MAX_KEPT = 10_000  # scenarios kept in process; the least recently read go first
Key = tuple[str, str]


@dataclass(frozen=True, slots=True)
class LiveLists:
    """A scenario's live lists, best first: (item id, score); `total` is the window's whole decayed weight (of
    every item, not only the listed ones) and `newest_ms` the event time the window ends at."""

    popular: list[tuple[str, float]]
    trending: list[tuple[str, float]]
    total: float = 0.0
    newest_ms: int = 0


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_window(client: aioredis.Redis, *, tenant_id: str, scenario_id: str) -> dict[int, dict[str, float]]:
    """Return the raw counts of the current and the previous window's buckets (bucket offset 0..7 back from the
    newest -> item -> weight); empty when the scenario has no live traffic."""
    buckets, _ = await _read(client, tenant_id=tenant_id, scenario_id=scenario_id)
    return buckets


async def _read(client: aioredis.Redis, *, tenant_id: str, scenario_id: str) -> tuple[dict[int, dict[str, float]], int]:
    newest = await client.get(newest_key(tenant_id, scenario_id))
    if newest is None:
        return {}, 0
    end = int(newest) // 1000 // BUCKET_S
    async with client.pipeline(transaction=False) as pipe:
        for back in range(2 * WINDOW_BUCKETS):
            pipe.zrange(bucket_key(tenant_id, scenario_id, end - back), 0, -1, withscores=True)
        rows = await pipe.execute()
    return {back: {_text(i): float(s) for i, s in row} for back, row in enumerate(rows) if row}, int(newest)


def window_scores(buckets: dict[int, dict[str, float]], top: int = TOP) -> list[tuple[str, float]]:
    """Return the decayed 1-hour popularity, best first."""
    return _best(_window(buckets), top)


def _window(buckets: dict[int, dict[str, float]]) -> dict[str, float]:
    scores: dict[str, float] = {}
    for back in range(WINDOW_BUCKETS):
        decay = 2.0 ** (-back / BUCKET_HALF_LIFE)
        for item, weight in buckets.get(back, {}).items():
            scores[item] = scores.get(item, 0.0) + weight * decay
    return scores


def trending_scores(buckets: dict[int, dict[str, float]], top: int = TOP) -> list[tuple[str, float]]:
    """Return items rising in the current hour over the hour before: (now - before) / sqrt(before + 1), rising
    items only, best first."""
    now = _sum(buckets, range(WINDOW_BUCKETS))
    before = _sum(buckets, range(WINDOW_BUCKETS, 2 * WINDOW_BUCKETS))
    rise = {i: (w - before.get(i, 0.0)) / math.sqrt(before.get(i, 0.0) + 1.0) for i, w in now.items()}
    return _best({i: r for i, r in rise.items() if r > 0}, top)


def live_lists(buckets: dict[int, dict[str, float]], newest_ms: int = 0, top: int = TOP) -> LiveLists:
    """Return the lists of a window read from Redis."""
    window = _window(buckets)
    return LiveLists(popular=_best(window, top), trending=trending_scores(buckets, top),
                     total=float(sum(window.values())), newest_ms=newest_ms)


def _sum(buckets: dict[int, dict[str, float]], backs: range) -> dict[str, float]:
    total: dict[str, float] = {}
    for back in backs:
        for item, weight in buckets.get(back, {}).items():
            total[item] = total.get(item, 0.0) + weight
    return total


def _best(scores: dict[str, float], top: int) -> list[tuple[str, float]]:
    return sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:top]


class LivePopularity:
    """Each scenario's live lists, read at most once per `ttl_s` per process."""

    def __init__(self, client: aioredis.Redis, *, ttl_s: float = 1.0, max_age_s: float = MAX_AGE_S) -> None:
        self._r = client
        self._ttl_s = ttl_s
        self._max_age_s = max_age_s
        self._cache: dict[Key, tuple[float, LiveLists]] = {}  # key -> (monotonic time read, lists)
        self._tried: dict[Key, float] = {}  # key -> monotonic time of the last read started
        self._tasks: dict[Key, asyncio.Task[None]] = {}

    async def lists(self, *, tenant_id: str, scenario_id: str) -> LiveLists:
        """Return the scenario's live popular and trending lists, reading Redis when the kept ones are stale."""
        key = (tenant_id, scenario_id)
        hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self._ttl_s:
            return hit[1]
        found = await self._fetch(key)
        self._keep(key, found)
        return found

    async def current(self, *, tenant_id: str, scenario_id: str, wait_s: float = 0.0) -> LiveLists | None:
        """Return the scenario's kept lists without waiting on Redis (a scenario's first read waits up to wait_s),
        refreshing them in the background once ttl_s old; None when there are none fresh enough."""
        key = (tenant_id, scenario_id)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or now - hit[0] >= self._ttl_s:
            first = key not in self._tried
            task = self._refresh(key, now)
            if hit is None and first and task is not None and wait_s > 0:
                await asyncio.wait([task], timeout=wait_s)
                hit = self._cache.get(key)
        if hit is None or time.monotonic() - hit[0] > self._max_age_s:
            return None
        return hit[1]

    def scenario(self, tenant_id: str, scenario_id: str) -> ScenarioPopularity:
        """Return a reader bound to one tenant's scenario (what an Engine holds)."""
        return ScenarioPopularity(self, tenant_id, scenario_id)

    async def close(self) -> None:
        """Cancel the reads in flight."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    def _refresh(self, key: Key, now: float) -> asyncio.Task[None] | None:
        """Start a background read unless one is in flight or one started less than ttl_s ago."""
        task = self._tasks.get(key)
        if task is not None or now - self._tried.get(key, -math.inf) < self._ttl_s:
            return task
        self._tried[key] = now
        task = self._tasks[key] = asyncio.create_task(self._load(key), name="recograph-live-popularity")
        task.add_done_callback(lambda _: self._tasks.pop(key, None))
        return task

    async def _load(self, key: Key) -> None:
        try:
            self._keep(key, await self._fetch(key))
        except Exception as exc:  # noqa: BLE001 - Redis down: serve the trained counts, retry after ttl_s
            log.warning("live_popularity.read_failed", tenant_id=key[0], scenario_id=key[1], error=repr(exc))

    async def _fetch(self, key: Key) -> LiveLists:
        buckets, newest = await _read(self._r, tenant_id=key[0], scenario_id=key[1])
        return live_lists(buckets, newest)

    def _keep(self, key: Key, found: LiveLists) -> None:
        self._cache.pop(key, None)
        self._cache[key] = (time.monotonic(), found)
        while len(self._cache) > MAX_KEPT:
            old = next(iter(self._cache))
            del self._cache[old]
            self._tried.pop(old, None)


@dataclass(frozen=True, slots=True)
class ScenarioPopularity:
    """The live lists of one tenant's scenario."""

    source: LivePopularity
    tenant_id: str
    scenario_id: str

    async def current(self, *, wait_s: float = 0.0) -> LiveLists | None:
        """Return the scenario's kept lists (see `LivePopularity.current`)."""
        return await self.source.current(tenant_id=self.tenant_id, scenario_id=self.scenario_id, wait_s=wait_s)
