"""The real-time service: run consumers, catch up after Redis outages, rebuild hot state from MongoDB.

Replays go through the consumer's own script, so they are exactly as idempotent:
- `catch_up` re-applies (through the markers) every event MongoDB received since the tenant's watermark minus a
  margin: what ingest stored while Redis could not take it. A tenant without a watermark (a Redis that lost its
  data, a first start) is rebuilt whole instead, metrics of the last day included.
- `rebuild` recomputes profiles and popularity of a tenant (or of one scenario: its popularity and the profiles of
  its users) from scratch while holding the tenant's rebuild lock, which makes the consumer wait for it. It
  re-applies only events the consumer had already applied (marked, or older than the markers reach); events still
  on their way through the stream are left to the consumer. Live metrics are not recounted.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from domain.catalogue import CatalogueService
from domain.errors import Unavailable
from domain.realtime import contracts as c
from domain.realtime.apply import MARKER_TTL_S, REPLAY_ASPECTS, REQUEST_TTL_S
from domain.realtime.consumer import StreamConsumer
from domain.realtime.erase import erase_from_stream, erase_markers
from domain.realtime.keys import (
    GROUP, done_key, prefix, profile_key, rebuild_key, recent_key, stream_key, watermark_key,
)
from domain.realtime.persist import MongoWriter
from domain.realtime.processor import Processor
from domain.realtime.replay import CATCH_UP_MARGIN_S, stored_events
from domain.realtime.stream import StreamEvent
from domain.realtime.deadletters import DEAD_MAX_LEN, DeadLetters, is_poison
from domain.realtime.sweep import GRACE_S, SWEEP_EVERY_S, Sweeper
from domain.scenarios.service import ScenarioService
from domain.userbatches import count_matching, distinct_users, user_queries
from models.cache import USER_STATE_TTL_S
from models.documents import Interaction, Tenant

log = structlog.get_logger()
Progress = Callable[[float], Awaitable[None]]
LOCK_TTL_MS = 60_000  # a rebuild renews its lock every batch; a crashed one frees the tenant after this
LOCK_WAIT_S = 600.0
LAG_COUNT_LIMIT = 1000
class RealtimeService:
    """Consumers, catch-up and rebuilds over one Redis client."""

    def __init__(
        self, client: aioredis.Redis, catalogue: CatalogueService, scenarios: ScenarioService, *,
        user_ttl_s: int = USER_STATE_TTL_S, attribution_s: int = REQUEST_TTL_S,
    ) -> None:
        self._r = client
        self._user_ttl_s = user_ttl_s
        self.processor = Processor(client, catalogue, scenarios, user_ttl_s=user_ttl_s, attribution_s=attribution_s)
        self.dead_letters = DeadLetters(client, user_ttl_s=user_ttl_s)

    async def erase_user(self, user_id: str, events: Iterable[tuple[str, datetime]], *, tenant_id: str) -> int:
        """Delete what real time keeps about a user outside their own keys: entries in the tenant's stream and its
        dead letters, and the applied-markers of their events, given as (event id, received at); return how many."""
        removed = await erase_from_stream(self._r, user_id, tenant_id=tenant_id)
        removed += await self.dead_letters.erase_user(user_id, tenant_id=tenant_id)
        return removed + await erase_markers(self._r, events, tenant_id=tenant_id)

    def consumer(
        self, *, sweep_every_s: float = SWEEP_EVERY_S, sweep_grace_s: float = GRACE_S,
        dead_letter_max_len: int = DEAD_MAX_LEN, **options: Any,
    ) -> StreamConsumer:
        """Return a consumer of every tenant's stream that catches up when it starts and when Redis returns, sweeps
        for stored events the stream missed every sweep_every_s, and buries entries that keep failing."""
        dead_letters = DeadLetters(self._r, max_len=dead_letter_max_len, user_ttl_s=self._user_ttl_s)
        sweeper = Sweeper(self._r, self.processor, dead_letters=dead_letters, grace_s=sweep_grace_s,
                          catch_up=lambda tenant_id: self.catch_up(tenant_id=tenant_id))

        async def sweep() -> None:
            await sweeper.sweep_all(period_s=sweep_every_s)

        return StreamConsumer(
            self._r, self.processor, MongoWriter(self._r), on_recover=self.catch_up_all, sweep=sweep,
            sweep_every_s=sweep_every_s, dead_letters=dead_letters, **options,
        )

    async def catch_up_all(self) -> int:
        """Catch up every tenant; return the events re-applied."""
        total = 0
        for tenant in await Tenant.find_all().to_list():
            try:
                total += await self.catch_up(tenant_id=tenant.id)
            except Exception as exc:
                if not is_poison(exc):
                    raise
                # One tenant's bad events must not keep the consumer from starting for every tenant: they stay in
                # MongoDB, and the periodic sweep tries them again.
                log.error("realtime.catch_up_failed", tenant_id=tenant.id, error=str(exc))
        return total

    async def catch_up(self, *, tenant_id: str) -> int:
        """Re-apply what MongoDB received since the watermark (minus a margin); rebuild a tenant without one."""
        raw = await self._r.get(watermark_key(tenant_id))
        if raw is None:
            if not await Interaction.get_pymongo_collection().find_one({"tenant_id": tenant_id}, {"_id": 1}):
                return 0
            return await self._rebuild(tenant_id, None, None, fresh=True)
        since = datetime.fromtimestamp(int(raw) / 1000, UTC) - timedelta(seconds=CATCH_UP_MARGIN_S)
        applied = 0
        async for events in stored_events({"tenant_id": tenant_id, "received_at": {"$gte": since}}):
            aspects = dict.fromkeys(range(len(events)), REPLAY_ASPECTS)
            while (n := await self.processor.apply(events, tenant_id=tenant_id, aspects=aspects)) < 0:
                await asyncio.sleep(0.2)  # a rebuild holds the tenant; these events are not its to replay
            applied += n
        if applied:
            log.info("realtime.caught_up", tenant_id=tenant_id, events=applied)
        return applied

    async def rebuild(self, *, tenant_id: str, scenario_id: str | None = None, progress: Progress | None = None) -> int:
        """Recompute profiles and popularity (of one scenario and its users, or of the whole tenant) from MongoDB;
        return the events re-applied."""
        return await self._rebuild(tenant_id, scenario_id, progress, fresh=False)

    async def _rebuild(self, tenant_id: str, scenario_id: str | None, progress: Progress | None, *, fresh: bool) -> int:
        scope: dict[str, Any] = {"tenant_id": tenant_id}
        if scenario_id is not None:
            scope["scenario_id"] = scenario_id
        async with self._lock(tenant_id):
            users = await distinct_users(scope)  # streamed: `distinct` answers in one 16 MB document
            # The scenario's own events are among its users' events: replay those, a bounded `$in` at a time.
            queries = [scope] if scenario_id is None else user_queries(tenant_id, users)
            total = await count_matching(queries)
            await self._reset(tenant_id, scenario_id, users, markers=fresh)
            applied, seen, wanted = 0, 0, set(users)
            for query in queries:
                async for events in stored_events(query):
                    applied += await self._replay(tenant_id, events, scenario_id, wanted, fresh=fresh)
                    seen += len(events)
                    await self._r.pexpire(rebuild_key(tenant_id), LOCK_TTL_MS)
                    if progress is not None and total:
                        await progress(min(seen / total, 1.0))
        log.info("realtime.rebuilt", tenant_id=tenant_id, scenario_id=scenario_id, events=applied, fresh=fresh)
        return applied

    async def _replay(
        self, tenant_id: str, events: list[StreamEvent], scenario_id: str | None, users: set[str], *, fresh: bool
    ) -> int:
        if fresh:  # nothing survived: apply everything once, marking it, metrics of the last day included
            recent = (time.time() - c.METRICS_MINUTE_TTL_S) * 1000
            aspects = {n: "opms" if e.received_ms >= recent else "ops" for n, e in enumerate(events)}
            return await self.processor.apply(events, tenant_id=tenant_id, aspects=aspects, live=False)
        done = await self._applied_before(tenant_id, events)
        chosen = [e for e, ok in zip(events, done, strict=True) if ok]
        aspects = {n: ("o" if scenario_id in (None, e.scenario_id) else "") + ("p" if e.user_id in users else "")
                   for n, e in enumerate(chosen)}
        return await self.processor.apply(chosen, tenant_id=tenant_id, aspects=aspects, check_markers=False,
                                          live=False)

    async def _applied_before(self, tenant_id: str, events: Sequence[StreamEvent]) -> list[bool]:
        """Return, per event, whether the consumer has applied it (marked, or older than the markers reach)."""
        horizon = (time.time() - MARKER_TTL_S + 3600) * 1000
        async with self._r.pipeline(transaction=False) as pipe:
            for e in events:
                pipe.sismember(done_key(tenant_id, e.received_ms // 1000 // 86400), e.marker)
            marked = await pipe.execute()
        return [bool(m) or e.received_ms < horizon for e, m in zip(events, marked, strict=True)]

    async def _reset(self, tenant_id: str, scenario_id: str | None, users: Sequence[str], *, markers: bool) -> None:
        """Delete the profiles of users and the popularity of the scenario (all scenarios when None)."""
        keys = [k for u in users for k in (profile_key(tenant_id, u), recent_key(tenant_id, u))]
        scenario = scenario_id or "*"
        patterns = [f"{prefix(tenant_id)}pop:{scenario}:*", f"{prefix(tenant_id)}popnew:{scenario}"]
        if markers:
            patterns.append(f"{prefix(tenant_id)}done:*")
        for pattern in patterns:
            keys.extend([k async for k in self._r.scan_iter(match=_escape(pattern), count=1000)])
        for start in range(0, len(keys), 1000):
            await self._r.delete(*keys[start : start + 1000])

    def _lock(self, tenant_id: str) -> _Lock:
        return _Lock(self._r, rebuild_key(tenant_id))

    async def wait_drained(self, *, tenant_id: str, timeout_s: float = 10.0) -> bool:
        """Wait until the consumer group has read and acknowledged everything in the tenant's stream."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if await self.lag(tenant_id=tenant_id) == (0, 0):
                return True
            await asyncio.sleep(0.01)
        return False

    async def lag(self, *, tenant_id: str) -> tuple[int, int]:
        """Return (entries not yet delivered to the group, at most LAG_COUNT_LIMIT on Redis 6.2; entries delivered
        but not acknowledged) of a tenant."""
        key = stream_key(tenant_id)
        try:
            info = await self._r.xinfo_stream(key)
            groups = await self._r.xinfo_groups(key)
        except RedisError:
            return (0, 0)  # no stream yet
        group = next((g for g in groups if _text(g["name"]) == GROUP), None)
        if group is None:
            return (int(info["length"]), 0)
        if group.get("lag") is not None:  # Redis 7 counts it
            return (int(group["lag"]), int(group["pending"]))
        delivered = _text(group["last-delivered-id"])
        if delivered == _text(info["last-generated-id"]):
            return (0, int(group["pending"]))
        # Redis 6.2 does not count entries past the group's cursor: count a bounded number of them.
        behind = await self._r.xrange(key, f"({delivered}", "+", count=LAG_COUNT_LIMIT)
        return (len(behind), int(group["pending"]))


class _Lock:
    """The tenant's rebuild lock: waits for another rebuild, expires if its holder dies."""

    def __init__(self, client: aioredis.Redis, key: str) -> None:
        self._r, self._key, self._token = client, key, uuid.uuid4().hex

    async def __aenter__(self) -> None:
        deadline = time.monotonic() + LOCK_WAIT_S
        while not await self._r.set(self._key, self._token, nx=True, px=LOCK_TTL_MS):
            if time.monotonic() > deadline:
                raise Unavailable("another rebuild of this tenant is still running")
            await asyncio.sleep(0.2)

    async def __aexit__(self, *exc: object) -> None:
        if _text(await self._r.get(self._key) or b"") == self._token:
            await self._r.delete(self._key)


def _escape(pattern: str) -> str:
    """Escape the glob characters of key parts (the tenant's hash-tag braces) but keep `*` as a wildcard."""
    return "".join("\\" + ch if ch in "[]?\\{}" else ch for ch in pattern)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
