"""The tenant's event stream: what an entry holds, how ingest and serving append, how the consumer decodes.

An entry has one field holding compact JSON, either an accepted interaction
`["e", eventId, scenario, user, item, type, value, tsMs, receivedMs, requestId]` or a served page
`["i", requestId, scenario, user, variant, servedMs, [[item, [sources...]], ...]]` (under an experiment
followed by experiment, latency ms, [team per item]). Streams are capped
(`MAXLEN ~`): MongoDB keeps the record of truth and a consumer far behind replays from it. The consumer also trims
them once their entries are applied and persisted (domain.realtime.trim), so a drained stream holds about nothing.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from domain.realtime.keys import FIELD, STREAMS, profile_key, stream_key
from models.cache import USER_STATE_TTL_S, CacheUnavailable

MAX_LEN = 1_000_000  # entries kept per tenant stream (approximate trim)
# One encoder for every entry (compact UTF-8 JSON; several times faster than json's).
_ENCODER = msgspec.json.Encoder()


def _encode(value: Any) -> str:
    return _ENCODER.encode(value).decode()


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """An accepted interaction as the consumer needs it."""

    event_id: str
    scenario_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None
    ts_ms: int
    received_ms: int
    request_id: str | None = None

    @property
    def marker(self) -> str:
        """Return the id the consumer marks once applied."""
        return "e:" + self.event_id

    def encode(self) -> str:
        """Serialise as one stream field."""
        return _encode(["e", self.event_id, self.scenario_id, self.user_id, self.item_id, self.type, self.value,
                        self.ts_ms, self.received_ms, self.request_id])


@dataclass(frozen=True, slots=True)
class StreamImpression:
    """One page served to a user: each item with the recall sources that proposed it."""

    request_id: str
    scenario_id: str
    user_id: str
    variant: str | None
    served_ms: int
    items: tuple[tuple[str, tuple[str, ...]], ...]
    experiment: str | None = None  # the experiment the page was served under (its variant is `variant`)
    latency_ms: float = 0.0  # how long the answer took (an experiment's LATENCY_MS)
    teams: tuple[str, ...] = ()  # INTERLEAVE: per item, the team ("A" control, "B") that placed it

    @property
    def marker(self) -> str:
        """Return the id the consumer marks once applied."""
        return "i:" + self.request_id

    @property
    def received_ms(self) -> int:
        """Return when the page was served (metrics count by it)."""
        return self.served_ms

    def encode(self) -> str:
        """Serialise as one stream field."""
        # Tuples encode as JSON arrays, exactly like the lists they used to be copied into.
        row = ["i", self.request_id, self.scenario_id, self.user_id, self.variant, self.served_ms, self.items]
        if self.experiment:  # pages outside experiments keep the shorter row
            row += [self.experiment, round(self.latency_ms, 3), self.teams]
        return _encode(row)


Entry = StreamEvent | StreamImpression


def decode(raw: str | bytes) -> Entry | None:
    """Return the entry a stream field holds, or None for one this version cannot read."""
    try:
        row = json.loads(raw)
        if row[0] == "e":
            return StreamEvent(*row[1:10])
        if row[0] == "i":
            items = tuple((item, tuple(sources)) for item, sources in row[6])
            if len(row) > 7:
                return StreamImpression(row[1], row[2], row[3], row[4], int(row[5]), items, row[7] or None,
                                        float(row[8]), tuple(row[9]))
            return StreamImpression(row[1], row[2], row[3], row[4], int(row[5]), items)
    except (ValueError, TypeError, IndexError, KeyError):
        return None
    return None


def millis(ts: datetime) -> int:
    """Return epoch milliseconds of an aware datetime (naive ones are UTC)."""
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1000)


class EventStream:
    """Append to tenants' streams (one pipeline per call); raise CacheUnavailable when Redis is down."""

    def __init__(self, client: aioredis.Redis, *, max_len: int = MAX_LEN, user_ttl_s: int = USER_STATE_TTL_S) -> None:
        self._r = client
        self._max_len = max_len
        self._user_ttl_s = user_ttl_s  # an event renews its user's profile key (models.cache.USER_STATE_TTL_S)

    async def append(self, entries: Sequence[Entry], *, tenant_id: str) -> None:
        """Append entries to the tenant's stream; for events, count them as accepted on each user's profile."""
        if not entries:
            return
        key = stream_key(tenant_id)
        per_user: dict[str, int] = {}  # a plain dict: Counter's constructor costs more than a served page's append
        for entry in entries:
            if isinstance(entry, StreamEvent):
                per_user[entry.user_id] = per_user.get(entry.user_id, 0) + 1
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for user_id, n in per_user.items():
                    # What the profile's reader compares with what the consumer applied (read-your-writes);
                    # counted before the entries exist, so the consumer never applies one not yet counted.
                    pipe.hincrby(profile_key(tenant_id, user_id), "acc", n)
                    pipe.expire(profile_key(tenant_id, user_id), self._user_ttl_s)
                for entry in entries:
                    pipe.xadd(key, {FIELD: entry.encode()}, maxlen=self._max_len, approximate=True)
                pipe.sadd(STREAMS, tenant_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise CacheUnavailable(str(exc)) from exc
