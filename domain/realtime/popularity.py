"""Live popularity from the consumer's 15-minute buckets: a decayed 1-hour sliding window, and trending (the
current hour against the hour before).

Buckets are keyed by event time and the window ends at the scenario's newest counted event (not the wall clock),
so a historical import reads like live traffic. Each read is one pipelined round trip; `LivePopularity` keeps each
scenario's lists for `ttl_s` in process, so a serving process reads Redis at most once a second per scenario.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis import asyncio as aioredis

from domain.realtime.apply import BUCKET_S
from domain.realtime.keys import bucket_key, newest_key

WINDOW_BUCKETS = 4  # 4 x 15 minutes = the 1-hour window
BUCKET_HALF_LIFE = 2.0  # in buckets: a bucket 30 minutes older than the newest counts half
TOP = 500


@dataclass(frozen=True, slots=True)
class LiveLists:
    """A scenario's live lists, best first: (item id, score)."""

    popular: list[tuple[str, float]]
    trending: list[tuple[str, float]]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_window(client: aioredis.Redis, *, tenant_id: str, scenario_id: str) -> dict[int, dict[str, float]]:
    """Return the raw counts of the current and the previous window's buckets (bucket offset 0..7 back from the
    newest -> item -> weight); empty when the scenario has no live traffic."""
    newest = await client.get(newest_key(tenant_id, scenario_id))
    if newest is None:
        return {}
    end = int(newest) // 1000 // BUCKET_S
    async with client.pipeline(transaction=False) as pipe:
        for back in range(2 * WINDOW_BUCKETS):
            pipe.zrange(bucket_key(tenant_id, scenario_id, end - back), 0, -1, withscores=True)
        rows = await pipe.execute()
    return {back: {_text(i): float(s) for i, s in row} for back, row in enumerate(rows) if row}


def window_scores(buckets: dict[int, dict[str, float]], top: int = TOP) -> list[tuple[str, float]]:
    """Return the decayed 1-hour popularity, best first."""
    scores: dict[str, float] = {}
    for back in range(WINDOW_BUCKETS):
        decay = 2.0 ** (-back / BUCKET_HALF_LIFE)
        for item, weight in buckets.get(back, {}).items():
            scores[item] = scores.get(item, 0.0) + weight * decay
    return _best(scores, top)


def trending_scores(buckets: dict[int, dict[str, float]], top: int = TOP) -> list[tuple[str, float]]:
    """Return items rising in the current hour over the hour before: (now - before) / sqrt(before + 1), rising
    items only, best first."""
    now = _sum(buckets, range(WINDOW_BUCKETS))
    before = _sum(buckets, range(WINDOW_BUCKETS, 2 * WINDOW_BUCKETS))
    rise = {i: (w - before.get(i, 0.0)) / math.sqrt(before.get(i, 0.0) + 1.0) for i, w in now.items()}
    return _best({i: r for i, r in rise.items() if r > 0}, top)


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

    def __init__(self, client: aioredis.Redis, *, ttl_s: float = 1.0) -> None:
        self._r = client
        self._ttl_s = ttl_s
        self._cache: dict[tuple[str, str], tuple[float, LiveLists]] = {}

    async def lists(self, *, tenant_id: str, scenario_id: str) -> LiveLists:
        """Return the scenario's live popular and trending lists."""
        key = (tenant_id, scenario_id)
        hit = self._cache.get(key)
        if hit is not None and hit[0] > time.monotonic():
            return hit[1]
        buckets = await read_window(self._r, tenant_id=tenant_id, scenario_id=scenario_id)
        found = LiveLists(popular=window_scores(buckets), trending=trending_scores(buckets))
        self._cache[key] = (time.monotonic() + self._ttl_s, found)
        return found
