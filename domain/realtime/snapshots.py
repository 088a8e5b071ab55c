"""Read live metrics: sum the consumer's minute and hour hashes (see `contracts`) over a sliding window.

A window is minute-grained and ends now: it starts at the beginning of the minute that was current `duration` ago,
so it spans between `duration` and `duration` + 1 minute, and `windowStart` says exactly where (the totals are "since
windowStart"). A DAY window reads hour hashes for the whole hours inside it and minute hashes for the partial hours
at both edges; shorter windows read minutes only. Every read of one call is one pipelined round trip.

Rates, all 0 when their denominator is 0:
- ctr = clicks / impressions
- interactionRate = attributed / impressions: events citing a served list, per item shown (engagement with what
  recograph recommended; `interactions` also counts events that did not come from a recommendation)
- avgWatchSeconds = watch seconds / WATCH events
- completionRate = mean of min(watched / duration, 1) over WATCH events whose item has a duration
- conversionRate = conversions (PURCHASE) / impressions
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from domain.errors import Unavailable
from domain.realtime import contracts as c

_SOURCE, _VARIANT = "src", "var"


class MetricsWindow(enum.StrEnum):
    """How far back a snapshot reaches; each ends now."""

    MINUTE = "MINUTE"
    FIVE_MINUTES = "FIVE_MINUTES"
    HOUR = "HOUR"
    DAY = "DAY"

    @property
    def seconds(self) -> int:
        """Return the window's length."""
        return _WINDOW_SECONDS[self]


_WINDOW_SECONDS = {
    MetricsWindow.MINUTE: 60, MetricsWindow.FIVE_MINUTES: 300, MetricsWindow.HOUR: 3600, MetricsWindow.DAY: 86400,
}


def _ratio(numerator: float, denominator: float) -> float:
    return numerator / denominator if denominator else 0.0


@dataclass(frozen=True, slots=True)
class Counters:
    """The contract's counters summed over a window, with the rates derived from them."""

    impressions: int = 0
    clicks: int = 0
    interactions: int = 0
    watch_seconds: float = 0.0
    watches: int = 0
    completion_sum: float = 0.0
    completions: int = 0
    conversions: int = 0
    attributed: int = 0

    @classmethod
    def from_fields(cls, values: Mapping[str, float]) -> Counters:
        """Build from contract field names (`contracts.FIELDS`) to summed values; missing fields count 0."""
        get = values.get
        return cls(
            impressions=round(get(c.IMPRESSIONS, 0)), clicks=round(get(c.CLICKS, 0)),
            interactions=round(get(c.INTERACTIONS, 0)), watch_seconds=float(get(c.WATCH_SECONDS, 0.0)),
            watches=round(get(c.WATCHES, 0)), completion_sum=float(get(c.COMPLETION_SUM, 0.0)),
            completions=round(get(c.COMPLETIONS, 0)), conversions=round(get(c.CONVERSIONS, 0)),
            attributed=round(get(c.ATTRIBUTED, 0)),
        )

    @property
    def ctr(self) -> float:
        """Return clicks per impression."""
        return _ratio(self.clicks, self.impressions)

    @property
    def interaction_rate(self) -> float:
        """Return attributed events (citing a served list) per impression."""
        return _ratio(self.attributed, self.impressions)

    @property
    def avg_watch_seconds(self) -> float:
        """Return the mean seconds watched per WATCH event."""
        return _ratio(self.watch_seconds, self.watches)

    @property
    def completion_rate(self) -> float:
        """Return the mean completed fraction of WATCH events whose item has a duration."""
        return _ratio(self.completion_sum, self.completions)

    @property
    def conversion_rate(self) -> float:
        """Return conversions (PURCHASE events) per impression."""
        return _ratio(self.conversions, self.impressions)


@dataclass(frozen=True, slots=True)
class Breakdown:
    """One recall source's or experiment variant's share of a window's counters."""

    name: str
    counters: Counters


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """A scenario's live metrics: totals from window_start to window_end (now), and their breakdowns."""

    scenario_id: str
    window: MetricsWindow
    window_start: datetime
    window_end: datetime
    totals: Counters
    by_source: tuple[Breakdown, ...] = ()
    by_variant: tuple[Breakdown, ...] = ()


@dataclass(frozen=True, slots=True)
class WindowPlan:
    """Which buckets a window sums: minute and hour numbers (epoch seconds // 60 and // 3600)."""

    start: int  # epoch seconds of the first bucket's start
    minutes: tuple[int, ...]
    hours: tuple[int, ...] = field(default=())


def plan_window(window: MetricsWindow, now: float) -> WindowPlan:
    """Return the buckets covering `window` ending at `now` (hours only for a DAY's whole hours)."""
    first_minute = int(now - window.seconds) // 60
    last_minute = int(now) // 60
    if window is not MetricsWindow.DAY:
        return WindowPlan(start=first_minute * 60, minutes=tuple(range(first_minute, last_minute + 1)))
    first_full_hour = -(-first_minute // 60)  # the first hour that starts inside the window
    current_hour = last_minute // 60  # partial: read by minutes
    minutes = (*range(first_minute, first_full_hour * 60), *range(current_hour * 60, last_minute + 1))
    return WindowPlan(start=first_minute * 60, minutes=minutes, hours=tuple(range(first_full_hour, current_hour)))


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _split(name: str) -> tuple[str, str | None, str | None]:
    """Split `clicks|src:als` into (clicks, src, als); a plain field has no breakdown."""
    base, sep, rest = name.partition("|")
    if not sep:
        return base, None, None
    kind, _, label = rest.partition(":")
    return base, kind, label


class _Sums:
    """Running sums of totals and breakdowns over many hashes."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self.groups: dict[str, dict[str, dict[str, float]]] = {_SOURCE: {}, _VARIANT: {}}

    def add(self, raw: Mapping[str | bytes, str | bytes]) -> None:
        """Add one hash; fields outside the contract are ignored (a newer consumer may write more)."""
        for name, value in raw.items():
            base, kind, label = _split(_text(name))
            if base not in c.FIELDS or (kind is not None and (kind not in self.groups or not label)):
                continue
            bucket = self.totals if kind is None else self.groups[kind].setdefault(label, {})
            bucket[base] = bucket.get(base, 0.0) + float(_text(value))

    def breakdowns(self, kind: str) -> tuple[Breakdown, ...]:
        """Return a group's breakdowns, most impressions first, then by name."""
        found = [Breakdown(name, Counters.from_fields(v)) for name, v in self.groups[kind].items()]
        return tuple(sorted(found, key=lambda b: (-b.counters.impressions, b.name)))


def summarise(
    hashes: Iterable[Mapping[str | bytes, str | bytes]],
) -> tuple[Counters, tuple[Breakdown, ...], tuple[Breakdown, ...]]:
    """Sum counter hashes into totals, per-source and per-variant breakdowns."""
    sums = _Sums()
    for raw in hashes:
        sums.add(raw)
    return Counters.from_fields(sums.totals), sums.breakdowns(_SOURCE), sums.breakdowns(_VARIANT)


@dataclass(frozen=True, slots=True)
class SnapshotRequest:
    """One snapshot to read: a tenant's scenario over a window."""

    tenant_id: str
    scenario_id: str
    window: MetricsWindow = MetricsWindow.HOUR


def _keys(request: SnapshotRequest, plan: WindowPlan) -> list[str]:
    minutes = [c.minute_key(request.tenant_id, request.scenario_id, m) for m in plan.minutes]
    return minutes + [c.hour_key(request.tenant_id, request.scenario_id, h) for h in plan.hours]


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, tz=UTC)


class SnapshotReader:
    """Read snapshots from Redis; many at once share one pipeline and each hash is fetched once."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client

    async def read(
        self, *, tenant_id: str, scenario_id: str, window: MetricsWindow = MetricsWindow.HOUR, now: float | None = None
    ) -> MetricsSnapshot:
        """Return one scenario's snapshot over `window` ending now."""
        [snapshot] = await self.read_many([SnapshotRequest(tenant_id, scenario_id, window)], now=now)
        return snapshot

    async def read_many(
        self, requests: Sequence[SnapshotRequest], *, now: float | None = None
    ) -> list[MetricsSnapshot]:
        """Return a snapshot per request, in order, from one round trip; raise Unavailable when Redis fails."""
        now = time.time() if now is None else now
        plans = [plan_window(r.window, now) for r in requests]
        keyed = [_keys(r, p) for r, p in zip(requests, plans, strict=True)]
        unique = list(dict.fromkeys(k for keys in keyed for k in keys))
        hashes = dict(zip(unique, await self._fetch(unique), strict=True))
        return [
            self._snapshot(r, p, (hashes[k] for k in keys), now)
            for r, p, keys in zip(requests, plans, keyed, strict=True)
        ]

    async def _fetch(self, keys: Sequence[str]) -> list[dict]:
        if not keys:
            return []
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hgetall(key)
                return await pipe.execute()
        except (RedisError, OSError) as exc:
            raise Unavailable(f"live metrics cannot be read: Redis failed ({exc})") from exc

    @staticmethod
    def _snapshot(request: SnapshotRequest, plan: WindowPlan, hashes: Iterable[dict], now: float) -> MetricsSnapshot:
        totals, by_source, by_variant = summarise(hashes)
        return MetricsSnapshot(
            scenario_id=request.scenario_id, window=request.window, window_start=_utc(plan.start),
            window_end=_utc(now), totals=totals, by_source=by_source, by_variant=by_variant,
        )
