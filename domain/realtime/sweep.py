"""The periodic catch-up: no event stored in MongoDB stays out of real time because its stream append was lost.

Ingest stores an event, then appends it to the tenant's stream. When the API dies between the two, or the append
times out while Redis stays up, the consumer never hears of the event and no recovery runs (Redis never went
away). Every `period` one consumer (whichever takes the `rt:sweep` lock) reads, per tenant, the events MongoDB
received since the tenant's sweep cursor (minus `lookback_s`, for inserts that landed after a later event) up to
`grace_s` ago, keeps those whose marker says they were never applied, and applies them through the batch script,
whose markers make this idempotent against the consumer applying the same events at the same time.

The first sweep of a tenant starts where the consumer's start-up catch-up started (its watermark minus the
catch-up margin); no sweep reaches further back than the markers (older events would count twice). A tenant without
a watermark has nothing in Redis (a new tenant whose first appends were lost, or a Redis that lost its data): it is
handed to the catch-up, which rebuilds it from MongoDB under the tenant's rebuild lock; applying its events through
the markers would set a watermark and hide the loss from the recovery.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime

import structlog
from redis import asyncio as aioredis

from domain.realtime.apply import MARKER_TTL_S, REPLAY_ASPECTS
from domain.realtime.deadletters import Burial, DeadLetters, is_poison
from domain.realtime.keys import done_key, swept_key, watermark_key
from domain.realtime.processor import Processor
from domain.realtime.replay import CATCH_UP_MARGIN_S, stored_events
from domain.realtime.stream import StreamEvent
from models.documents import Tenant

log = structlog.get_logger()
SWEEP_EVERY_S = 30.0
GRACE_S = 10.0  # events younger than this are the stream's to deliver
LOOKBACK_S = 10.0  # each sweep re-reads this much before its cursor
LOCK = "rt:sweep"


class Sweeper:
    """Find and apply stored events the stream never delivered."""

    def __init__(
        self, client: aioredis.Redis, processor: Processor, *, dead_letters: DeadLetters | None = None,
        catch_up: Callable[[str], Awaitable[int]] | None = None, grace_s: float = GRACE_S,
        lookback_s: float = LOOKBACK_S,
    ) -> None:
        self._r = client
        self._processor = processor
        self._dead = dead_letters or DeadLetters(client)
        self._catch_up = catch_up
        self._grace_s, self._lookback_s = grace_s, lookback_s

    async def sweep_all(self, *, period_s: float = SWEEP_EVERY_S) -> int:
        """Sweep every tenant unless another consumer swept within the period; return the events applied."""
        if not await self._r.set(LOCK, uuid.uuid4().hex, nx=True, px=max(int(period_s * 900), 1)):
            return 0
        total = 0
        async for doc in Tenant.get_pymongo_collection().find({}, {"_id": 1}):
            try:
                total += await self.sweep(tenant_id=doc["_id"])
            except Exception as exc:
                if not is_poison(exc):
                    raise
                log.error("realtime.sweep_failed", tenant_id=doc["_id"], error=str(exc))  # the others still sweep
        return total

    async def sweep(self, *, tenant_id: str, now_ms: int | None = None) -> int:
        """Apply the tenant's stored events not applied yet, received up to grace_s ago; return how many."""
        upper = (now_ms if now_ms is not None else int(time.time() * 1000)) - int(self._grace_s * 1000)
        lower = await self._start(tenant_id)
        if lower is None:  # nothing in Redis reflects the tenant: the catch-up rebuilds it from MongoDB
            return await self._catch_up(tenant_id) if self._catch_up is not None else 0
        if lower >= upper:
            return 0
        applied = 0
        query = {"tenant_id": tenant_id, "received_at": {"$gte": _when(lower), "$lte": _when(upper)}}
        async for events in stored_events(query):
            missing = await self._unapplied(tenant_id, events)
            if not missing:
                continue
            n = await self._apply(tenant_id, missing)
            if n < 0:
                return applied  # a rebuild holds the tenant: the cursor stays, the next sweep tries again
            applied += n
        await self._r.set(swept_key(tenant_id), upper, px=MARKER_TTL_S * 1000)
        if applied:
            log.warning("realtime.swept", tenant_id=tenant_id, events=applied)
        return applied

    async def _apply(self, tenant_id: str, events: list[StreamEvent]) -> int:
        """Apply events; when they fail on their data, apply them one by one and bury each that still fails (the
        tenant's sweep must not stop at them). Return how many were new, -1 while a rebuild holds the tenant."""
        try:
            return await self._apply_some(tenant_id, events)
        except Exception as exc:
            if not is_poison(exc):
                raise
        applied = 0
        for e in events:
            try:
                n = await self._apply_some(tenant_id, [e])
            except Exception as exc:
                if not is_poison(exc):
                    raise
                await self._dead.bury([Burial(e.encode(), f"{type(exc).__name__}: {exc}")], tenant_id=tenant_id)
                log.error("realtime.sweep_dead_lettered", tenant_id=tenant_id, event_id=e.event_id, error=str(exc))
                continue
            if n < 0:
                return -1
            applied += n
        return applied

    async def _apply_some(self, tenant_id: str, events: list[StreamEvent]) -> int:
        aspects = dict.fromkeys(range(len(events)), REPLAY_ASPECTS)
        return await self._processor.apply(events, tenant_id=tenant_id, aspects=aspects)

    async def _start(self, tenant_id: str) -> int | None:
        """Return where this sweep starts (ms), never before the markers reach; None for a tenant without a
        watermark."""
        async with self._r.pipeline(transaction=False) as pipe:
            pipe.get(swept_key(tenant_id))
            pipe.get(watermark_key(tenant_id))
            cursor, wm = await pipe.execute()
        if wm is None:
            return None
        if cursor is not None:
            start = int(cursor) - int(self._lookback_s * 1000)
        else:
            start = int(wm) - int(CATCH_UP_MARGIN_S * 1000)
        horizon = int((time.time() - MARKER_TTL_S + 3600) * 1000)
        return max(start, horizon)

    async def _unapplied(self, tenant_id: str, events: Sequence[StreamEvent]) -> list[StreamEvent]:
        """Return the events whose marker is missing (one SMISMEMBER per receive day)."""
        days: dict[int, list[StreamEvent]] = {}
        for e in events:
            days.setdefault(e.received_ms // 86_400_000, []).append(e)
        async with self._r.pipeline(transaction=False) as pipe:
            for day, group in days.items():
                pipe.smismember(done_key(tenant_id, day), [e.marker for e in group])
            replies = await pipe.execute()
        return [e for group, found in zip(days.values(), replies, strict=True)
                for e, marked in zip(group, found, strict=True) if not marked]


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)
