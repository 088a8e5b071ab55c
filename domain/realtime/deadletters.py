"""Dead letters: stream entries the consumer could not apply however often it tried, kept per tenant.

An entry that keeps failing (a script error on its data, a key of the wrong type, an entry the Python side cannot
prepare) is moved to the tenant's dead-letter stream `t:{T}:dead`, capped at `max_len` entries (`MAXLEN ~`), and
acknowledged, so the tenant's other entries and every other tenant keep flowing. Each dead letter holds the raw
entry (`d`), the error text (`e`) and the id the entry had in the event stream (`s`, whose first part is its
receive time in ms); the dead letter's own id says when it failed. An admin lists them (`page`) and, once the cause
is fixed, replays them (`replay`): each goes back to the tenant's event stream and out of the dead letters.

An event counts as accepted on its user's profile (`acc`) when it enters the stream, and profile reads wait while
a user has accepted events not yet applied; burying an event takes it back out of that count (replaying puts it
back), so a dead letter never makes its user's reads wait.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo.errors import PyMongoError
from redis import asyncio as aioredis
from redis.exceptions import (
    AskError, ClusterDownError, DataError, MasterDownError, MovedError, NoScriptError, OutOfMemoryError, ReadOnlyError,
    RedisError, ResponseError, TryAgainError,
)

from domain.errors import BadInput, Unavailable
from domain.ids import check_first, decode_cursor, encode_cursor
from domain.realtime.apply import MARKER_TTL_S
from domain.realtime.keys import FIELD, GROUP, STREAMS, dead_key, done_key, profile_key, stream_key
from domain.realtime.stream import MAX_LEN, StreamEvent, decode
from models.cache import USER_STATE_TTL_S
from domain.scenarios.service import Page

DEAD_MAX_LEN = 10_000  # dead letters kept per tenant (approximate trim: the oldest go first)
ERROR_CHARS = 1000  # an error text is cut to this length
REPLAY_CHUNK = 500  # dead letters moved back per transaction
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
# Redis refusing every command for a while, whatever the data: not the batch's fault.
_REDIS_WIDE_ERRORS = (AskError, ClusterDownError, MasterDownError, MovedError, NoScriptError, OutOfMemoryError,
                      ReadOnlyError, TryAgainError)
_REDIS_WIDE = re.compile(
    r"\b(OOM|READONLY|BUSY|LOADING|MASTERDOWN|TRYAGAIN|CLUSTERDOWN|NOREPLICAS|MOVED|ASK|NOSCRIPT)\b")


def is_poison(exc: Exception) -> bool:
    """Return whether an error applying a batch comes from the batch itself rather than from Redis or MongoDB being
    unavailable."""
    if isinstance(exc, _REDIS_WIDE_ERRORS):
        return False
    if isinstance(exc, ResponseError):  # inside a script Redis's own refusals come as text
        return not _REDIS_WIDE.search(str(exc))
    if isinstance(exc, DataError):  # redis-py refused an argument
        return True
    return not isinstance(exc, (RedisError, OSError, PyMongoError))


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """One stream entry that kept failing."""

    id: str  # its id in the tenant's dead-letter stream
    received_at: datetime  # when it entered the event stream
    failed_at: datetime  # when it was given up on
    error: str
    entry: Any  # the entry as JSON (the raw text when it is not JSON)


@dataclass(frozen=True, slots=True)
class Burial:
    """An entry to bury: its raw field, why it failed, and its id in the event stream (None for an event the
    periodic catch-up read from MongoDB, which was never in the stream)."""

    raw: str
    error: str
    message_id: str | None = None


class DeadLetters:
    """Bury, list and replay a tenant's dead letters (every call on the tenant's own keys)."""

    def __init__(
        self, client: aioredis.Redis, *, max_len: int = DEAD_MAX_LEN, user_ttl_s: int = USER_STATE_TTL_S
    ) -> None:
        self._r = client
        self._max_len = max_len
        self._user_ttl_s = user_ttl_s  # a profile counter written here expires like every user key
        self.buried = 0  # entries this instance buried (the consumer's counter at /metrics)

    async def bury(self, burials: Sequence[Burial], *, tenant_id: str) -> None:
        """Move entries to the dead letters, mark them dealt with (their marker: neither the consumer nor the
        periodic catch-up tries them again) and acknowledge those from the stream, in one transaction."""
        if not burials:
            return
        dead = dead_key(tenant_id)
        async with self._r.pipeline(transaction=True) as pipe:  # every key is in the tenant's hash slot
            for b in burials:
                entry, marked = decode(b.raw), _marker_of(b.raw, tenant_id)
                source = b.message_id or (f"{entry.received_ms}-0" if marked is not None and entry else "0-0")
                pipe.xadd(dead, {FIELD: b.raw, "e": b.error[:ERROR_CHARS], "s": source}, maxlen=self._max_len,
                          approximate=True)
                if marked is not None:
                    pipe.sadd(*marked)
                    pipe.expire(marked[0], MARKER_TTL_S)
                if b.message_id is not None and isinstance(entry, StreamEvent) and isinstance(entry.user_id, str):
                    pipe.hincrby(profile_key(tenant_id, entry.user_id), "acc", -1)
                    pipe.expire(profile_key(tenant_id, entry.user_id), self._user_ttl_s)
            if acked := [b.message_id for b in burials if b.message_id is not None]:
                pipe.xack(stream_key(tenant_id), GROUP, *acked)
            await pipe.execute()
        self.buried += len(burials)

    async def page(self, *, tenant_id: str, first: int | None, after: str | None, max_first: int) -> Page:
        """Return dead letters oldest first, `first` of them after the cursor `after`."""
        size = check_first(first, maximum=max_first)
        start = decode_cursor(after)
        if start is not None and not _STREAM_ID.match(start):
            raise BadInput("not a cursor this API returned", field="after")
        with _unavailable():
            rows = await self._r.xrange(dead_key(tenant_id), "-" if start is None else f"({start}", "+",
                                        count=size + 1)
        nodes = [_letter(mid, fields) for mid, fields in rows[:size]]
        return Page(nodes=nodes, cursors=[encode_cursor(n.id) for n in nodes], has_next=len(rows) > size,
                    total=lambda: self.count(tenant_id=tenant_id))

    async def count(self, *, tenant_id: str) -> int:
        """Return how many dead letters the tenant has."""
        with _unavailable():
            return int(await self._r.xlen(dead_key(tenant_id)))

    async def replay(self, *, tenant_id: str, ids: Sequence[str] | None = None) -> int:
        """Append dead letters (all when ids is None) to the tenant's event stream again and delete them from the
        dead letters; return how many moved. Ids the tenant does not have are skipped."""
        for n, value in enumerate(ids or ()):
            if not _STREAM_ID.match(value):
                raise BadInput("not a dead letter id", field=f"ids.{n}")
        with _unavailable():
            return await (self._replay_all(tenant_id) if ids is None else self._replay_ids(tenant_id, ids))

    async def _replay_ids(self, tenant_id: str, ids: Sequence[str]) -> int:
        moved = 0
        wanted = list(dict.fromkeys(ids))
        for start in range(0, len(wanted), REPLAY_CHUNK):
            async with self._r.pipeline(transaction=False) as pipe:
                for value in wanted[start : start + REPLAY_CHUNK]:
                    pipe.xrange(dead_key(tenant_id), value, value)
                found = [row for reply in await pipe.execute() for row in reply]
            moved += await self._move(tenant_id, found)
        return moved

    async def _replay_all(self, tenant_id: str) -> int:
        moved = 0
        while rows := await self._r.xrange(dead_key(tenant_id), "-", "+", count=REPLAY_CHUNK):
            moved += await self._move(tenant_id, rows)
        return moved

    async def _move(self, tenant_id: str, rows: list[tuple[Any, dict]]) -> int:
        """Re-append rows of the dead letters to the event stream and delete them, in one transaction."""
        if not rows:
            return 0
        async with self._r.pipeline(transaction=True) as pipe:
            for _, fields in rows:
                raw = _field(fields, FIELD)
                if (marked := _marker_of(raw, tenant_id)) is not None:
                    pipe.srem(*marked)  # to be applied again
                entry = decode(raw)
                if isinstance(entry, StreamEvent) and isinstance(entry.user_id, str):
                    pipe.hincrby(profile_key(tenant_id, entry.user_id), "acc", 1)  # accepted, as on ingest
                    pipe.expire(profile_key(tenant_id, entry.user_id), self._user_ttl_s)
                pipe.xadd(stream_key(tenant_id), {FIELD: raw}, maxlen=MAX_LEN, approximate=True)
            pipe.xdel(dead_key(tenant_id), *[mid for mid, _ in rows])
            await pipe.execute()
        await self._r.sadd(STREAMS, tenant_id)  # outside the transaction: the registry is not in the tenant's slot
        return len(rows)

    async def erase_user(self, user_id: str, *, tenant_id: str) -> int:
        """Delete the dead letters that name the user (privacy erasure); return how many."""
        doomed: list[Any] = []
        last = "-"
        while rows := await self._r.xrange(dead_key(tenant_id), last, "+", count=REPLAY_CHUNK):
            doomed += [mid for mid, fields in rows if _user_of(_field(fields, FIELD)) == user_id]
            if len(rows) < REPLAY_CHUNK:
                break
            last = "(" + _text(rows[-1][0])
        for start in range(0, len(doomed), REPLAY_CHUNK):
            await self._r.xdel(dead_key(tenant_id), *doomed[start : start + REPLAY_CHUNK])
        return len(doomed)


@contextmanager
def _unavailable() -> Iterator[None]:
    try:
        yield
    except (RedisError, OSError) as exc:
        raise Unavailable(f"dead letters are kept in Redis, which cannot be reached ({exc})") from exc


def _letter(mid: bytes | str, fields: dict) -> DeadLetter:
    dead_id = _text(mid)
    raw = _field(fields, FIELD)
    source = _field(fields, "s") or "0-0"
    try:
        entry: Any = json.loads(raw)
    except ValueError:
        entry = raw
    return DeadLetter(id=dead_id, received_at=_time_of(source), failed_at=_time_of(dead_id),
                      error=_field(fields, "e"), entry=entry)


def _marker_of(raw: str, tenant_id: str) -> tuple[str, str] | None:
    """Return (marker set, marker) of an entry, or None for one too broken to have them."""
    entry = decode(raw)
    if entry is None or isinstance(entry.received_ms, bool) or not isinstance(entry.received_ms, int):
        return None
    ident = entry.event_id if isinstance(entry, StreamEvent) else entry.request_id
    if not isinstance(ident, str):
        return None
    return done_key(tenant_id, entry.received_ms // 1000 // 86400), entry.marker


def _user_of(raw: str) -> str | None:
    entry = decode(raw)
    return None if entry is None else entry.user_id


def _time_of(stream_id: str) -> datetime:
    return datetime.fromtimestamp(int(stream_id.split("-", 1)[0]) / 1000, UTC)


def _field(fields: dict, name: str) -> str:
    value = fields.get(name.encode(), fields.get(name, b""))
    return _text(value)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
