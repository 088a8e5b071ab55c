"""The consumer group's backlog per tenant stream, read from Redis: authoritative wherever the consumers run (in
the API process, a child process or separate workers), and cheap enough to read on every metrics scrape.

One pipelined round trip reads XLEN, XINFO STREAM and XINFO GROUPS of each stream (at most `max_tenants` of them);
on Redis 6.2, which does not count the entries past the group's cursor, one more round trip counts them (at most
LAG_COUNT_LIMIT each, so a scrape reads little) for the streams that are behind. How far behind in time comes from
the entry ids (receive times in ms) on any version: the newest entry's against the last one delivered.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from redis import asyncio as aioredis

from domain.realtime.keys import GROUP, HEARTBEAT, STREAMS, stream_key

MAX_TENANTS = 200
LAG_COUNT_LIMIT = 100  # entries past the cursor counted on Redis 6.2; more reads as this many


@dataclass(frozen=True, slots=True)
class StreamBacklog:
    """One tenant stream as the consumer group sees it."""

    tenant_id: str
    length: int  # entries in the stream
    lag: int  # entries not yet delivered to the group (at most LAG_COUNT_LIMIT on Redis 6.2)
    pending: int  # entries delivered to a consumer and not acknowledged yet
    consumers: int  # members of the group
    lag_seconds: float = 0.0  # receive time of the newest entry minus that of the last one delivered


@dataclass(frozen=True, slots=True)
class Backlog:
    """Every tenant stream's backlog (of at most `max_tenants`), and whether some consumer runs."""

    streams: int  # tenant streams registered, read or not
    tenants: list[StreamBacklog]
    consumer_alive: bool


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def read_backlog(client: aioredis.Redis, *, max_tenants: int = MAX_TENANTS) -> Backlog:
    """Return the consumer group's backlog of up to max_tenants tenant streams (tenant ids in order)."""
    tenants: list[str] = []
    async for raw in client.sscan_iter(STREAMS, count=max_tenants):
        tenants.append(_text(raw))
        if len(tenants) >= max_tenants:
            break
    tenants.sort()
    async with client.pipeline(transaction=False) as pipe:
        pipe.scard(STREAMS)
        pipe.exists(HEARTBEAT)
        for tenant_id in tenants:
            key = stream_key(tenant_id)
            pipe.xlen(key)
            pipe.xinfo_stream(key)
            pipe.xinfo_groups(key)
        replies = await pipe.execute(raise_on_error=False)
    streams, alive = int(replies[0]), bool(replies[1])
    rows = [_row(t, *replies[2 + 3 * n : 5 + 3 * n]) for n, t in enumerate(tenants)]
    return Backlog(streams=streams, tenants=await _count_lag(client, rows), consumer_alive=alive)


async def read_tenant_backlog(
    client: aioredis.Redis, *, tenant_id: str, count_limit: int = LAG_COUNT_LIMIT
) -> StreamBacklog:
    """Return one tenant stream's backlog (on Redis 6.2 its lag counted up to count_limit entries)."""
    key = stream_key(tenant_id)
    async with client.pipeline(transaction=False) as pipe:
        pipe.xlen(key)
        pipe.xinfo_stream(key)
        pipe.xinfo_groups(key)
        replies = await pipe.execute(raise_on_error=False)
    return (await _count_lag(client, [_row(tenant_id, *replies)], limit=count_limit))[0]


def _row(tenant_id: str, length: Any, info: Any, groups: Any) -> tuple[StreamBacklog, str | None]:
    """Return the tenant's backlog and, where Redis did not count the lag, the cursor to count it from."""
    if isinstance(length, Exception) or isinstance(info, Exception):
        return StreamBacklog(tenant_id, 0, 0, 0, 0), None  # no stream yet
    group = None if isinstance(groups, Exception) else next((g for g in groups if _text(g["name"]) == GROUP), None)
    newest = _text(info["last-generated-id"])
    if group is None:
        first = info.get("first-entry")
        since = _text(first[0]) if first else newest
        return StreamBacklog(tenant_id, int(length), int(length), 0, 0, _seconds(newest, since)), None
    pending, consumers = int(group["pending"]), int(group["consumers"])
    delivered = _text(group["last-delivered-id"])
    behind = _seconds(newest, delivered)
    if group.get("lag") is not None:  # Redis 7 counts it
        return StreamBacklog(tenant_id, int(length), int(group["lag"]), pending, consumers, behind), None
    cursor = None if delivered == newest else delivered
    return StreamBacklog(tenant_id, int(length), 0, pending, consumers, behind), cursor


def _seconds(newer: str, older: str) -> float:
    """Return the receive-time distance of two stream ids."""
    return max(int(newer.split("-")[0]) - int(older.split("-")[0]), 0) / 1000.0


async def _count_lag(
    client: aioredis.Redis, rows: list[tuple[StreamBacklog, str | None]], *, limit: int = LAG_COUNT_LIMIT
) -> list[StreamBacklog]:
    behind = [(n, row, cursor) for n, (row, cursor) in enumerate(rows) if cursor is not None]
    out = [row for row, _ in rows]
    if not behind:
        return out
    async with client.pipeline(transaction=False) as pipe:
        for _, row, cursor in behind:
            pipe.xrange(stream_key(row.tenant_id), f"({cursor}", "+", count=limit)
        replies = await pipe.execute(raise_on_error=False)
    for (n, row, _), entries in zip(behind, replies, strict=True):
        lag = 0 if isinstance(entries, Exception) else len(entries)
        out[n] = StreamBacklog(row.tenant_id, row.length, lag, row.pending, row.consumers, row.lag_seconds)
    return out
