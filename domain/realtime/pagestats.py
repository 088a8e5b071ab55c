"""What the served pages say about each scenario's lists: cache hit rate, diversity and coverage, over sliding windows.

Each serving process notes every `recommendations` page it answers (`PageStats.note`: a few counters and the page's
item ids in memory, no I/O) and adds what it noted to Redis every FLUSH_S in one pipelined round trip, in minute
buckets of the page's serve time:

    t:{T}:pq:{scenario}:{minute}   hash: pages, first, hits, div_pages, div_sum, active
    t:{T}:pc:{scenario}:{minute}   HyperLogLog of the item ids served

both kept KEEP_S. A window (`plan_window`, MINUTE to HOUR) sums the hashes and counts the union of the HyperLogLogs
(one PFCOUNT over the window's keys; standard error 0.81%), so it is never a scan of what was served:
- cache hit rate = first pages answered from a cached answer / first pages (a page asked `after` another reads the
  served list, never the answer cache, and does not count);
- diversity = mean, over pages with at least two items that have categories, of the mean pairwise Jaccard distance
  of those items' category sets (1 - |A & B| / |A | B|), from the item view's category codes at flush time. It is
  sampled: each scenario and minute keeps its first DIVERSITY_SAMPLE pages of a flush interval, and a flush
  measures at most MEASURED_PER_FLUSH of them, shared evenly among the scenarios (about 0.1 ms a page: a flush
  costs at most some 20 ms of CPU however busy the process);
- coverage = distinct items served / the scenario's active items (the newest count a process noted), at most 1.
Nothing names a user: the keys hold counts and item ids only.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from domain.errors import Unavailable
from domain.realtime.snapshots import MetricsWindow, SnapshotRequest, plan_window
from domain.recommend.base import CatalogueView
from domain.recommend.rerank import jaccard
from models.cache import tenant_key

log = structlog.get_logger()

FLUSH_S = 5.0
KEEP_S = 2 * 3600  # an HOUR window reads the last 61 minutes
DIVERSITY_SAMPLE = 20  # pages per scenario and minute kept between flushes for measuring diversity
MEASURED_PER_FLUSH = 200  # pages whose diversity one flush measures at most, shared among its buckets
MAX_IDS = 50_000  # distinct item ids kept per scenario and minute between flushes (the rest still count as pages)
WINDOWS = (MetricsWindow.MINUTE, MetricsWindow.FIVE_MINUTES, MetricsWindow.HOUR)  # those the minute buckets cover

PAGES, FIRST, HITS, DIV_PAGES, DIV_SUM, ACTIVE = "pages", "first", "hits", "div_pages", "div_sum", "active"


def stats_key(tenant_id: str, scenario_id: str, minute: int) -> str:
    """Return the hash of one scenario's page counters for one minute (epoch seconds // 60)."""
    return tenant_key(tenant_id, "pq", scenario_id, str(minute))


def items_key(tenant_id: str, scenario_id: str, minute: int) -> str:
    """Return the HyperLogLog of the item ids one scenario served in one minute."""
    return tenant_key(tenant_id, "pc", scenario_id, str(minute))


class Catalogues(Protocol):
    def catalogue(self, tenant_id: str, scenario_id: str) -> CatalogueView | None:
        """Return the item view the scenario serves from in this process (None: not held here)."""
        ...


def page_diversity(catalogue: CatalogueView, item_ids: Sequence[str]) -> float | None:
    """Return the mean pairwise Jaccard distance of the category sets of a page's items that have categories, or
    None when fewer than two have."""
    codes = catalogue.category_codes
    idx = catalogue.indexes(item_ids)
    idx = idx[codes.indptr[idx + 1] > codes.indptr[idx]]  # items without categories say nothing of diversity
    n = len(idx)
    if n < 2:
        return None
    similarity = jaccard(*codes.rows(idx), n)
    shared = float(similarity.sum() - np.trace(similarity))  # every item is identical to itself: not a pair
    return 1.0 - shared / (n * (n - 1))


@dataclass
class _Bucket:
    """What one process noted for one scenario and minute since its last flush."""

    pages: int = 0
    first: int = 0
    hits: int = 0
    items: set[str] = field(default_factory=set)
    sample: list[tuple[str, ...]] = field(default_factory=list)  # pages whose diversity the flush measures


@dataclass(frozen=True, slots=True)
class PageQuality:
    """A scenario's served pages over a window."""

    pages: int = 0
    first_pages: int = 0
    cache_hits: int = 0
    diversity: float = 0.0  # 0 when no page had two categorised items
    distinct_items: int = 0
    active_items: int = 0

    @property
    def cache_hit_rate(self) -> float:
        """Return the share of first pages answered from a cached answer (0 without first pages)."""
        return self.cache_hits / self.first_pages if self.first_pages else 0.0

    @property
    def coverage(self) -> float:
        """Return the share of the scenario's active items served in the window, at most 1 (0 without items)."""
        return min(self.distinct_items / self.active_items, 1.0) if self.active_items else 0.0


class PageStats:
    """Note served pages in memory and add them to Redis every FLUSH_S (`run`); read windows of them (`read_many`)."""

    def __init__(self, client: aioredis.Redis, catalogues: Catalogues | None = None) -> None:
        self._r = client
        self._catalogues = catalogues
        self._buckets: dict[tuple[str, str, int], _Bucket] = {}

    def note(self, *, tenant_id: str, scenario_id: str, item_ids: Sequence[str], first: bool, cached: bool,
             at: float | None = None) -> None:
        """Count one page answered at `at` (now): a first page (not `after`) or not, from a cached answer or not."""
        minute = int(time.time() if at is None else at) // 60
        bucket = self._buckets.get((tenant_id, scenario_id, minute))
        if bucket is None:
            bucket = self._buckets[(tenant_id, scenario_id, minute)] = _Bucket()
        bucket.pages += 1
        if first:
            bucket.first += 1
            bucket.hits += cached
        if len(bucket.items) < MAX_IDS:
            bucket.items.update(item_ids)
        if len(bucket.sample) < DIVERSITY_SAMPLE and len(item_ids) > 1:
            bucket.sample.append(tuple(item_ids))

    async def flush(self) -> int:
        """Add what was noted since the last flush to Redis (one round trip); return the buckets written. What a
        failing write held is dropped (a Redis outage loses those minutes' page counts, nothing else)."""
        buckets, self._buckets = self._buckets, {}
        if not buckets:
            return 0
        try:
            quota = max(MEASURED_PER_FLUSH // len(buckets), 1)
            async with self._r.pipeline(transaction=False) as pipe:
                for (tenant_id, scenario_id, minute), bucket in buckets.items():
                    self._write(pipe, tenant_id, scenario_id, minute, bucket, quota)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning("page_stats.flush_failed", error=str(exc), buckets=len(buckets))
            return 0
        return len(buckets)

    def _write(self, pipe: Any, tenant_id: str, scenario_id: str, minute: int, bucket: _Bucket, quota: int) -> None:
        key = stats_key(tenant_id, scenario_id, minute)
        pipe.hincrby(key, PAGES, bucket.pages)
        if bucket.first:
            pipe.hincrby(key, FIRST, bucket.first)
            pipe.hincrby(key, HITS, bucket.hits)
        catalogue = self._catalogues.catalogue(tenant_id, scenario_id) if self._catalogues is not None else None
        if catalogue is not None:
            pipe.hset(key, ACTIVE, int(np.count_nonzero(catalogue.active)))
            measured = [d for page in bucket.sample[:quota] if (d := page_diversity(catalogue, page)) is not None]
            if measured:
                pipe.hincrby(key, DIV_PAGES, len(measured))
                pipe.hincrbyfloat(key, DIV_SUM, sum(measured))
        pipe.expire(key, KEEP_S)
        if bucket.items:
            seen = items_key(tenant_id, scenario_id, minute)
            pipe.pfadd(seen, *bucket.items)
            pipe.expire(seen, KEEP_S)

    async def run(self, every_s: float = FLUSH_S) -> None:
        """Flush every `every_s` until cancelled, and once more then."""
        try:
            while True:
                await asyncio.sleep(every_s)
                await self._flush_logged()
        finally:
            await self._flush_logged()

    async def _flush_logged(self) -> None:
        try:
            await self.flush()
        except Exception:  # noqa: BLE001 - a bad page (or view) loses one flush, never the loop
            log.exception("page_stats.flush_failed")

    async def read_many(self, requests: Sequence[SnapshotRequest], *, now: float | None = None) -> list[PageQuality]:
        """Return each request's page quality over its window (MINUTE to HOUR), in order, from one round trip;
        raise Unavailable when Redis fails."""
        now = time.time() if now is None else now
        plans = []
        for request in requests:
            if request.window not in WINDOWS:
                raise ValueError(f"page statistics are kept for windows up to an hour, not {request.window}")
            plans.append(plan_window(request.window, now).minutes)
        hashed = list(dict.fromkeys(stats_key(r.tenant_id, r.scenario_id, m)
                                    for r, minutes in zip(requests, plans, strict=True) for m in minutes))
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for key in hashed:
                    pipe.hgetall(key)
                for request, minutes in zip(requests, plans, strict=True):
                    pipe.pfcount(*(items_key(request.tenant_id, request.scenario_id, m) for m in minutes))
                replies = await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"page statistics cannot be read: Redis failed ({exc})") from exc
        hashes = dict(zip(hashed, replies[: len(hashed)], strict=True))
        return [
            _quality([hashes[stats_key(r.tenant_id, r.scenario_id, m)] for m in minutes], int(distinct))
            for r, minutes, distinct in zip(requests, plans, replies[len(hashed):], strict=True)
        ]


def _quality(hashes: Sequence[dict], distinct: int) -> PageQuality:
    """Sum a window's minute hashes (oldest first); the active-item count is the newest one noted."""
    sums: dict[str, float] = {}
    active = 0
    for raw in hashes:
        for name, value in raw.items():
            name = name.decode() if isinstance(name, bytes) else name
            if name == ACTIVE:
                active = int(value)
            else:
                sums[name] = sums.get(name, 0.0) + float(value)
    div_pages = sums.get(DIV_PAGES, 0.0)
    return PageQuality(
        pages=round(sums.get(PAGES, 0.0)), first_pages=round(sums.get(FIRST, 0.0)),
        cache_hits=round(sums.get(HITS, 0.0)), diversity=sums.get(DIV_SUM, 0.0) / div_pages if div_pages else 0.0,
        distinct_items=distinct, active_items=active,
    )
