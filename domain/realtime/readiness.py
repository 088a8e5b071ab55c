"""Whether the event consumer keeps up, read from Redis alone, so every serving process answers alike wherever the
consumers run (a task, a child process, separate workers).

An entry is *waiting* while it is pending (delivered, not acknowledged) or not yet delivered to the group. The
consumer is *stalled* when the oldest waiting entry of some tenant stream was received more than `stall_s` ago
(by Redis's clock): nothing applied it for that long, whether the consumer loops on a failing batch (its entries
stay pending and are delivered again) or cannot keep up. It is *absent* when entries wait and no consumer renews
its heartbeat (and they have waited longer than its lifetime). A tenant held by a rebuild is left out: its
entries wait on purpose.
Two pipelined round trips: TIME, the heartbeat, and XINFO GROUPS, XPENDING and the rebuild lock of each stream;
then the first undelivered entry of each stream that has one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis import asyncio as aioredis

from domain.realtime.keys import GROUP, HEARTBEAT, HEARTBEAT_TTL_MS, STREAMS, rebuild_key, stream_key

STALL_S = 30.0
MAX_STREAMS = 1000  # streams read per check; a readiness probe stays a few milliseconds


@dataclass(frozen=True, slots=True)
class ConsumerReadiness:
    """What readiness reports about the consumer; `status` is "ok", "stalled" or "absent"."""

    status: str
    alive: bool  # some consumer renewed its heartbeat
    waiting_streams: int  # tenant streams with entries waiting
    stalled_streams: int  # of those, streams whose oldest waiting entry is older than stall_s
    oldest_waiting_s: float  # age of the oldest waiting entry over all streams (0: none)

    def as_dict(self) -> dict[str, Any]:
        """Return the readiness body's `consumer` part (counts only: no tenant id leaves through a probe)."""
        return {"status": self.status, "alive": self.alive, "waitingStreams": self.waiting_streams,
                "stalledStreams": self.stalled_streams, "oldestWaitingSeconds": round(self.oldest_waiting_s, 1)}


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _ms(entry_id: bytes | str) -> int:
    return int(_text(entry_id).split("-")[0])


async def consumer_readiness(
    client: aioredis.Redis, *, stall_s: float = STALL_S, max_streams: int = MAX_STREAMS,
    tenant_ids: Sequence[str] | None = None,
) -> ConsumerReadiness:
    """Return whether the consumers keep up with every tenant stream (at most max_streams of them), or with only
    the streams of tenant_ids when given (an admin's view of their own tenant)."""
    if tenant_ids is not None:
        tenants = list(tenant_ids)[:max_streams]
    else:
        tenants = [_text(t) async for t in client.sscan_iter(STREAMS, count=max_streams)][:max_streams]
    async with client.pipeline(transaction=False) as pipe:
        pipe.time()
        pipe.exists(HEARTBEAT)
        for tenant_id in tenants:
            pipe.xinfo_groups(stream_key(tenant_id))
            pipe.xpending(stream_key(tenant_id), GROUP)
            pipe.exists(rebuild_key(tenant_id))
        replies = await pipe.execute(raise_on_error=False)
    (seconds, micros), alive = replies[0], bool(replies[1])
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    oldest: dict[str, int] = {}  # tenant -> receive time (ms) of its oldest pending entry
    cursors: dict[str, str] = {}  # tenant -> id after which entries are not delivered yet
    for n, tenant_id in enumerate(tenants):
        groups, pending, rebuilding = replies[2 + 3 * n: 5 + 3 * n]
        if isinstance(groups, Exception) or (not isinstance(rebuilding, Exception) and rebuilding):
            continue  # no stream yet, or a rebuild holds the tenant
        group = next((g for g in groups if _text(g["name"]) == GROUP), None)
        cursors[tenant_id] = _text(group["last-delivered-id"]) if group is not None else "0-0"
        if not isinstance(pending, Exception) and pending.get("pending") and pending.get("min") is not None:
            oldest[tenant_id] = _ms(pending["min"])
    for tenant_id, first in (await _first_undelivered(client, cursors)).items():
        oldest[tenant_id] = min(first, oldest.get(tenant_id, first))
    return _judge(oldest, alive, now_ms, stall_s)


async def _first_undelivered(client: aioredis.Redis, cursors: dict[str, str]) -> dict[str, int]:
    """Return the receive time (ms) of each stream's first entry past its group's cursor, where there is one."""
    if not cursors:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for tenant_id, cursor in cursors.items():
            pipe.xrange(stream_key(tenant_id), f"({cursor}", "+", count=1)
        replies = await pipe.execute(raise_on_error=False)
    return {t: _ms(entries[0][0]) for t, entries in zip(cursors, replies, strict=True)
            if not isinstance(entries, Exception) and entries}


def _judge(oldest: dict[str, int], alive: bool, now_ms: int, stall_s: float) -> ConsumerReadiness:
    ages = [max(now_ms - ms, 0) / 1000.0 for ms in oldest.values()]
    stalled = sum(age > stall_s for age in ages)
    # Without a heartbeat, entries older than its lifetime wait for a consumer that is not there (one starting up
    # renews it within a second).
    if not alive and max(ages, default=0.0) > HEARTBEAT_TTL_MS / 1000:
        status = "absent"
    else:
        status = "stalled" if stalled else "ok"
    return ConsumerReadiness(status=status, alive=alive, waiting_streams=len(ages), stalled_streams=stalled,
                             oldest_waiting_s=max(ages, default=0.0))
