"""Trim tenant streams once what they hold is applied and persisted, so a drained stream holds (about) nothing.

A stream entry may go when the consumer group acknowledged it and its served page (the one thing the consumer keeps
in memory after acknowledging: `persist.MongoWriter` buffers pages for MongoDB) was written. The bound of each
tenant's stream, read before a consumer's flush and applied with XTRIM MINID after the flush succeeded, is the
lowest of:
- the oldest entry still pending for the group (XPENDING summary): delivered, not acknowledged;
- the entry after the group's last-delivered id (XINFO GROUPS): nothing newer was read yet;
- every other consumer's unflushed floor: the lowest id it acknowledged whose served page it has not written yet,
  kept in `t:{T}:unflushed` (consumer name -> "<entry id> <wall ms>"), set in the pipeline that acknowledges (before
  the XACK) and cleared after its flush. A floor older than FLOOR_STALE_MS belongs to a consumer that died (its
  buffer died with it) and is dropped.
The trimming consumer's own floor is left out: its flush, which ran between the read and the trim, wrote every page
acknowledged before the read.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from redis import asyncio as aioredis
from redis.asyncio.client import Pipeline

from domain.realtime.keys import GROUP, stream_key
from models.cache import tenant_key

FLOOR_STALE_MS = 10 * 60 * 1000
FLOORS_TTL_S = 86400  # the hash of floors goes with the tenant's last consumer
TRIM_EVERY_S = 5.0  # how often a consumer trims (after a flush): every tenant costs one round trip and one XTRIM


def floors_key(tenant_id: str) -> str:
    """Return the hash of consumers' unflushed floors of the tenant's stream."""
    return tenant_key(tenant_id, "unflushed")


def parse_id(entry_id: bytes | str) -> tuple[int, int]:
    """Return (ms, seq) of a stream id."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def format_id(parts: tuple[int, int]) -> str:
    """Return the stream id of (ms, seq)."""
    return f"{parts[0]}-{parts[1]}"


class StreamTrimmer:
    """One consumer's floors and trims (see the module docstring)."""

    def __init__(self, client: aioredis.Redis, consumer: str) -> None:
        self._r = client
        self._name = consumer
        self._floors: dict[str, tuple[int, int]] = {}  # tenant -> lowest acknowledged id with an unwritten page
        self._covering: dict[str, tuple[int, int]] = {}  # the floors of the flush running now

    def note(self, pipe: Pipeline, tenant_id: str, entry_ids: Iterable[bytes | str]) -> None:
        """Queue on `pipe`, before the XACK of `entry_ids`, this consumer's floor for their served pages."""
        lowest = min(parse_id(i) for i in entry_ids)
        known = self._floors.get(tenant_id)
        if known is not None and known <= lowest:
            return
        self._floors[tenant_id] = lowest
        # While a flush runs, the pages it is writing keep their lower floor in Redis until it is done.
        self._publish(pipe, tenant_id, min(lowest, self._covering.get(tenant_id, lowest)))

    def _publish(self, pipe: Pipeline, tenant_id: str, floor: tuple[int, int]) -> None:
        pipe.hset(floors_key(tenant_id), self._name, f"{format_id(floor)} {int(time.time() * 1000)}")
        pipe.expire(floors_key(tenant_id), FLOORS_TTL_S)

    def flushing(self) -> None:
        """Note that a flush starts: it writes every page buffered so far (pages acknowledged from now on set new
        floors)."""
        self._covering, self._floors = self._floors, {}

    async def flushed(self) -> None:
        """Clear the floors the successful flush covered (or lift them to pages acknowledged during it)."""
        covered, self._covering = self._covering, {}
        if not covered:
            return
        async with self._r.pipeline(transaction=False) as pipe:
            for tenant_id in covered:
                if tenant_id in self._floors:
                    self._publish(pipe, tenant_id, self._floors[tenant_id])
                else:
                    pipe.hdel(floors_key(tenant_id), self._name)
            await pipe.execute()

    def failed(self) -> None:
        """Keep the floors of a failed flush (its pages stay buffered for the next one)."""
        covered, self._covering = self._covering, {}
        for tenant_id, floor in covered.items():
            self._floors[tenant_id] = min(floor, self._floors.get(tenant_id, floor))

    async def bounds(self, tenants: Iterable[str]) -> dict[str, str]:
        """Return each tenant's trim bound: entries with a lower id may go (tenants without one are left out)."""
        tenants = list(tenants)
        if not tenants:
            return {}
        async with self._r.pipeline(transaction=False) as pipe:
            for tenant_id in tenants:
                pipe.xinfo_groups(stream_key(tenant_id))
                pipe.xpending(stream_key(tenant_id), GROUP)
                pipe.hgetall(floors_key(tenant_id))
            replies = await pipe.execute(raise_on_error=False)
        now_ms = int(time.time() * 1000)
        out: dict[str, str] = {}
        for n, tenant_id in enumerate(tenants):
            groups, pending, floors = replies[3 * n : 3 * n + 3]
            if isinstance(groups, Exception) or isinstance(pending, Exception) or isinstance(floors, Exception):
                continue  # no stream or no group yet
            bound = _bound(groups, pending, self._others(floors, now_ms))
            if bound is not None:
                out[tenant_id] = format_id(bound)
        return out

    def _others(self, floors: Mapping, now_ms: int) -> list[tuple[int, int]]:
        found = []
        for name, value in floors.items():
            name = name.decode() if isinstance(name, bytes) else name
            text = value.decode() if isinstance(value, bytes) else value
            entry_id, _, at = text.partition(" ")
            if name != self._name and now_ms - int(at or 0) < FLOOR_STALE_MS:
                found.append(parse_id(entry_id))
        return found

    async def trim(self, bounds: Mapping[str, str]) -> int:
        """Remove every entry below each tenant's bound; return how many went."""
        if not bounds:
            return 0
        async with self._r.pipeline(transaction=False) as pipe:
            for tenant_id, bound in bounds.items():
                # Exact: an approximate trim only drops whole macro nodes (~100 entries), so a quiet stream would
                # never shrink; the cost is the same order as the entries removed.
                pipe.xtrim(stream_key(tenant_id), minid=bound, approximate=False)
            return sum(int(n) for n in await pipe.execute())


def _bound(groups: list, pending: Mapping, floors: list[tuple[int, int]]) -> tuple[int, int] | None:
    group = next((g for g in groups if _text(g.get("name")) == GROUP), None)
    if group is None:
        return None
    last = parse_id(group.get("last-delivered-id") or "0-0")
    candidates = [(last[0], last[1] + 1), *floors]
    if pending.get("pending") and pending.get("min") is not None:
        candidates.append(parse_id(pending["min"]))
    return min(candidates)


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")
