"""Read users' profile hot state from Redis (what the consumer maintains; see domain.realtime.apply): one hash of
counters and preference labels, one sorted set of recent items."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from redis import asyncio as aioredis

from domain.realtime.keys import HEARTBEAT, parse_recent, profile_key, recent_key

RECENT_SHOWN = 50


@dataclass(frozen=True, slots=True)
class HotProfile:
    """One user's live profile state: counters, first/last seen, active hours, recent items, preferences."""

    applied: int  # events the consumer applied
    accepted: int  # events ingest appended to the stream (ahead of `applied` while the consumer works)
    counts_by_type: dict[str, int] = field(default_factory=dict)
    counts_by_scenario: dict[str, int] = field(default_factory=dict)
    active_hours: dict[int, int] = field(default_factory=dict)  # UTC hour of day -> events
    recent: list[dict] = field(default_factory=list)  # newest first: {"i", "s", "y", "t"}
    labels: dict[str, float] = field(default_factory=dict)
    first_seen: datetime | None = None
    last_seen: datetime | None = None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _time(ms: str | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(int(ms) / 1000, UTC)


LABEL_PREFIXES = ("c", "t")  # preference labels share the hash (domain.profiles.CATEGORY, TAG)


def parse(row: dict, recent: list) -> HotProfile | None:
    """Return the hot profile of raw Redis replies, or None when the consumer has applied nothing for the user."""
    fields = {_text(k): _text(v) for k, v in row.items()}
    if "n" not in fields:
        return None
    by: dict[str, dict[str, int]] = {"ty": {}, "sc": {}, "h": {}}
    labels: dict[str, float] = {}
    for name, value in fields.items():
        kind, _, label = name.partition(":")
        if kind in by and label:
            by[kind][label] = int(value)
        elif kind in LABEL_PREFIXES and label:
            labels[name] = float(value)
    return HotProfile(
        applied=int(fields["n"]), accepted=int(fields.get("acc", 0)), counts_by_type=by["ty"],
        counts_by_scenario=by["sc"], active_hours={int(h): n for h, n in by["h"].items()},
        recent=[_recent(_text(m)) for m in recent], labels=labels,
        first_seen=_time(fields.get("f")), last_seen=_time(fields.get("l")),
    )


def _recent(member: str) -> dict:
    ts, item, scenario, kind = parse_recent(member)
    return {"i": item, "s": scenario, "y": kind, "t": datetime.fromtimestamp(ts / 1000, UTC)}


async def read_hot(client: aioredis.Redis, user_ids: Sequence[str], *, tenant_id: str) -> dict[str, HotProfile]:
    """Return the hot profiles of those users the consumer has seen (one pipelined round trip)."""
    users = list(dict.fromkeys(user_ids))
    async with client.pipeline(transaction=False) as pipe:
        for user_id in users:
            pipe.hgetall(profile_key(tenant_id, user_id))
            pipe.zrevrange(recent_key(tenant_id, user_id), 0, RECENT_SHOWN - 1)
        rows = await pipe.execute()
    found = {}
    for n, user_id in enumerate(users):
        hot = parse(*rows[2 * n : 2 * n + 2])
        if hot is not None:
            found[user_id] = hot
    return found


async def pending_users(client: aioredis.Redis, user_ids: Sequence[str], *, tenant_id: str) -> list[str]:
    """Return the users with events accepted but not yet applied, while a consumer runs to apply them (none
    otherwise: nobody would)."""
    users = list(dict.fromkeys(user_ids))
    async with client.pipeline(transaction=False) as pipe:
        pipe.exists(HEARTBEAT)
        for user_id in users:
            pipe.hmget(profile_key(tenant_id, user_id), ["n", "acc"])
        alive, *rows = await pipe.execute()
    if not alive:
        return []
    return [u for u, (n, acc) in zip(users, rows, strict=True) if int(acc or 0) > int(n or 0)]
