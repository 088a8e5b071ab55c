"""Erase one user from the real-time state that is not keyed by the user: the tenant's event stream (accepted
events and served pages still held there) and the idempotency markers of the user's events (client event ids may
embed the user id)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from redis import asyncio as aioredis

from domain.realtime.keys import FIELD, done_key, stream_key
from domain.realtime.stream import decode, millis

SCAN_CHUNK = 5000  # stream entries read per XRANGE


async def erase_from_stream(client: aioredis.Redis, user_id: str, *, tenant_id: str) -> int:
    """Delete the tenant stream's entries about the user; return how many."""
    key, start, doomed = stream_key(tenant_id), "-", []
    while rows := await client.xrange(key, start, "+", count=SCAN_CHUNK):
        for mid, fields in rows:
            raw = fields.get(FIELD.encode()) or fields.get(FIELD)
            entry = decode(raw) if raw is not None else None
            if entry is not None and entry.user_id == user_id:
                doomed.append(mid)
        if len(rows) < SCAN_CHUNK:
            break
        last = rows[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else last)
    for first in range(0, len(doomed), SCAN_CHUNK):
        await client.xdel(key, *doomed[first : first + SCAN_CHUNK])
    return len(doomed)


async def erase_markers(client: aioredis.Redis, events: Iterable[tuple[str, datetime]], *, tenant_id: str) -> int:
    """Remove the applied-markers of the user's events, given as (event id, received at); return how many."""
    by_day: dict[int, list[str]] = {}
    for event_id, received_at in events:
        by_day.setdefault(millis(received_at) // 86_400_000, []).append("e:" + event_id)
    if not by_day:
        return 0
    async with client.pipeline(transaction=False) as pipe:
        for day, markers in by_day.items():
            for first in range(0, len(markers), SCAN_CHUNK):
                pipe.srem(done_key(tenant_id, day), *markers[first : first + SCAN_CHUNK])
        return sum(int(n) for n in await pipe.execute())
