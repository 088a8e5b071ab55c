"""What a backup copies of each collection for one tenant, how it reads it, and what it changes on the way.

Every collection of models.documents is here (a test holds the two lists equal). The embedded server holds its
storage lock while it gathers a query's matches, and gathers every match whatever the limit: one query over 100,000
events held every other query (serving's key lookups among them) back for seconds. So every query that may match
many documents is bounded by a narrow range of an indexed key, a few thousand documents at most:

- events, served pages, analytics rollups: windows of an indexed time that never changes (`time_windows`: each
  sized from the density the last one found), scenario by scenario; events by event time, which imports spread
  out, where a bulk import gives a million events the same receive time;
- items: ranges of the item id, scenario by scenario, between split points taken from the item ids the cache
  knows (one range per scenario without them); an item in several scenarios is kept once;
- first-event records: ranges of the user id between split points taken from the users met in the events, which
  are read before them; profiles: windows of their last event time, then by id the users of the events the windows
  missed (a profile updated meanwhile moves forward in time, to a window already read);
- the rest (keys, scenarios and their config versions, experiments, jobs, audit, model versions, erasures): one cursor in `_id` order.

Every range but the profiles' is of a key that never changes, so a document changed while the backup runs is met
once, and the ranges of each collection cover all of its keys. (A range of `_id` would not do: the embedded server
scans the whole collection for it.)

Order: state that later data is checked against comes first. Analytics watermarks are copied before the rollups and
the events, so a restored rollup pass recomputes rather than skips the hours between them; everything derived from
events is rebuilt from them on restore; erasures come last (domain.backup.scrub leaves out the users they name).

Work in flight is not carried into a snapshot: a QUEUED or RUNNING job is written FAILED, a model version still being
built FAILED without its artifact (its files are not copied), and an analytics pass's lease is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import bson
from beanie import Document
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo.asynchronous.collection import AsyncCollection

from domain.analytics.store import GRAINS
from domain.events import FUTURE_TOLERANCE
from domain.export import EARLIEST, MAX_SPAN, next_span
from domain.learning.versions import READY, TRAINING
from models.documents import (
    AnalyticsRollup,
    AnalyticsState,
    AnalyticsUser,
    ApiKey,
    AuditEntry,
    Erasure,
    Experiment,
    Impression,
    Interaction,
    Item,
    Job,
    ModelVersion,
    Scenario,
    ScenarioConfigVersion,
    Tenant,
    UserProfile,
    composite_id,
)

RAW = CodecOptions(document_class=RawBSONDocument)
DECODE = CodecOptions(tz_aware=True)
BATCH = 1000  # documents per read
WINDOW_TARGET = 500  # documents a time window should hold (sized from the density found): tens of ms of the lock
RANGE = 500  # keys per range of the ranged reads
ID_CHUNK = 100  # ids per read by id
MAX_AHEAD = timedelta(days=36_500)  # the profiles' windows start this far after the mark: every last event time
CROSS = 1.1  # how much a time window grows after an empty one
# Windows walk back from the mark, starting small: receive times are dense right before it (live traffic, a recent
# import), and each window doubles while it finds few, so years of quiet history are crossed in a few dozen reads.
FIRST_SPAN = timedelta(seconds=1)
AFTER_MARK = timedelta(milliseconds=1)  # times are kept to the millisecond: `< mark + 1 ms` takes the mark itself
INTERRUPTED = "in progress when the backup was taken; run it again"

Batches = AsyncIterator[list[RawBSONDocument]]


class Pacer:
    """Keep a backup to a share of the store's time: after a read that took t seconds, rest t * (1 - duty) / duty,
    so serving's own queries find the store free most of the time."""

    def __init__(self, duty: float = 0.5) -> None:
        if not 0 < duty <= 1:
            raise ValueError("duty must be in (0, 1]")
        self._factor = (1 - duty) / duty

    async def rest(self, took_s: float) -> None:
        """Rest after a read that took `took_s`."""
        await asyncio.sleep(took_s * self._factor)


@dataclass(frozen=True)
class Scope:
    """One tenant's read: its id, the mark, its scenarios, and the keys that split the reads of its largest
    collections: the item ids the cache knows, and the users met in its events (filled while they are read)."""

    tenant_id: str
    mark: datetime
    scenario_ids: tuple[str, ...]
    pacer: Pacer
    item_ids: tuple[str, ...] = ()
    user_ids: set[str] = field(default_factory=set)


Reader = Callable[[AsyncCollection, Scope], Batches]
Transform = Callable[[dict[str, Any], datetime], dict[str, Any]]


@dataclass(frozen=True)
class Part:
    """One collection in a backup: its document class, how a tenant's documents are read, and what changes."""

    document: type[Document]
    read: Reader
    transform: Transform | None = None

    @property
    def name(self) -> str:
        """Return the collection's name (the file's stem in the backup)."""
        return str(self.document.Settings.name)

    def collection(self) -> AsyncCollection:
        """Return the collection, reading raw BSON."""
        return self.document.get_pymongo_collection().with_options(codec_options=RAW)

    def batches(self, scope: Scope) -> Batches:
        """Return the tenant's documents in batches, transformed."""
        batches = self.read(self.collection(), scope)
        return batches if self.transform is None else _transformed(batches, self.transform, scope.mark)


async def _transformed(batches: Batches, transform: Transform, mark: datetime) -> Batches:
    async for batch in batches:
        yield [_changed(raw, transform, mark) for raw in batch]


def _changed(raw: RawBSONDocument, transform: Transform, mark: datetime) -> RawBSONDocument:
    """Return a document through `transform`; its bytes as read when it did not change (decoding and encoding
    again may change a number's type)."""
    doc = bson.decode(raw.raw, codec_options=DECODE)
    before = bson.encode(doc)
    after = bson.encode(transform(doc, mark))
    return raw if after == before else RawBSONDocument(after)


async def _cursor(col: AsyncCollection, query: dict[str, Any], pacer: Pacer, *, sort: bool = True) -> Batches:
    cursor = col.find(query, sort=[("_id", 1)] if sort else None, batch_size=BATCH)
    try:
        while True:
            began = time.monotonic()
            batch = await cursor.to_list(BATCH)
            if not batch:
                return
            await pacer.rest(time.monotonic() - began)
            yield batch
    finally:
        await cursor.close()


def by_id() -> Reader:
    """Read the tenant's documents through one cursor in `_id` order (collections that stay small)."""

    def read(col: AsyncCollection, scope: Scope) -> Batches:
        return _cursor(col, {"tenant_id": scope.tenant_id}, scope.pacer)

    return read


def by_time(field: str, *, groups: Callable[[Scope], Sequence[dict[str, Any]]] = lambda scope: [{}],
            after_mark: timedelta = AFTER_MARK) -> Reader:
    """Read the tenant's documents through windows of an indexed time that never changes, up to `after_mark` past
    the mark, one group (a scenario, ...) after the other when the index names it before the time."""

    async def read(col: AsyncCollection, scope: Scope) -> Batches:
        for group in groups(scope):
            def fetch(lo: datetime, hi: datetime, group: dict[str, Any] = group) -> Batches:
                query = {"tenant_id": scope.tenant_id, **group, field: {"$gte": lo, "$lt": hi}}
                return _cursor(col, query, scope.pacer, sort=False)

            async for batch in time_windows(fetch, end=scope.mark + after_mark, target=WINDOW_TARGET):
                yield batch

    return read


async def time_windows(fetch: Callable[[datetime, datetime], Batches], *, end: datetime, target: int) -> Batches:
    """Yield the batches of `fetch(lo, hi)` over windows of time that walk back from `end` to the earliest time.

    After a window that found documents the next is sized from their density (domain.export.next_span); after an
    empty one it grows by CROSS only, so that the window which meets documents again after a long quiet stretch
    spans a tenth of the distance crossed, not half of it: on the embedded server that window is read whole.
    """
    hi, span = end, FIRST_SPAN
    while hi > EARLIEST:
        lo = EARLIEST if hi - EARLIEST <= span else hi - span
        found = 0
        async with aclosing(fetch(lo, hi)) as window:
            async for batch in window:
                found += len(batch)
                yield batch
        hi = lo
        span = min(span * CROSS, MAX_SPAN) if found == 0 else next_span(span, found, target=target)


def by_ranges(field: str, keys: Callable[[Scope], Iterable[str]], *,
              groups: Callable[[Scope], Sequence[dict[str, Any]]] = lambda scope: [{}]) -> Reader:
    """Read the tenant's documents through ranges of an indexed key that never changes, split at every RANGE-th of
    `keys`, one group after the other when the index names it before the key; a document in several groups (an
    item in several scenarios) is read once per group and kept once."""

    async def read(col: AsyncCollection, scope: Scope) -> Batches:
        splits = sorted(set(keys(scope)))[RANGE::RANGE]
        bounds: list[str | None] = [None, *splits, None]
        seen: set[Any] = set()
        for group in groups(scope):
            for lo, hi in zip(bounds, bounds[1:], strict=False):
                bound = {**({"$gte": lo} if lo is not None else {}), **({"$lt": hi} if hi is not None else {})}
                query = {"tenant_id": scope.tenant_id, **group, **({field: bound} if bound else {})}
                async for batch in _cursor(col, query, scope.pacer, sort=False):
                    if fresh := _unseen(batch, seen):
                        yield fresh

    return read


def profiles(col: AsyncCollection, scope: Scope) -> Batches:
    """Read the tenant's profile snapshots: windows of the last event time (indexed), then, by id, the users met in
    the events that the windows missed (a snapshot rewritten meanwhile moves to a window already read)."""
    return _profiles(col, scope)


async def _profiles(col: AsyncCollection, scope: Scope) -> Batches:
    seen: set[Any] = set()

    def fetch(lo: datetime, hi: datetime) -> Batches:
        return _cursor(col, {"tenant_id": scope.tenant_id, "last_seen": {"$gte": lo, "$lt": hi}}, scope.pacer,
                       sort=False)

    async for batch in time_windows(fetch, end=scope.mark + MAX_AHEAD, target=WINDOW_TARGET):
        if fresh := _unseen(batch, seen):
            yield fresh
    async for batch in _cursor(col, {"tenant_id": scope.tenant_id, "last_seen": None}, scope.pacer, sort=False):
        if fresh := _unseen(batch, seen):
            yield fresh
    missed = sorted({composite_id(scope.tenant_id, u) for u in scope.user_ids} - seen)
    for start in range(0, len(missed), ID_CHUNK):
        async for batch in _cursor(col, {"_id": {"$in": missed[start : start + ID_CHUNK]}}, scope.pacer, sort=False):
            if fresh := _unseen(batch, seen):
                yield fresh


def _unseen(batch: list[RawBSONDocument], seen: set[Any]) -> list[RawBSONDocument]:
    """Return the documents of a batch not met before, noting them."""
    fresh = [doc for doc in batch if doc["_id"] not in seen]
    seen.update(doc["_id"] for doc in fresh)
    return fresh


def collecting_users(reader: Reader) -> Reader:
    """Read as `reader` does, noting each document's user in the scope (the split points of per-user reads)."""

    async def read(col: AsyncCollection, scope: Scope) -> Batches:
        async for batch in reader(col, scope):
            scope.user_ids.update(doc["user_id"] for doc in batch)
            yield batch

    return read


def per_scenario(scope: Scope) -> list[dict[str, Any]]:
    """Return one group per scenario of the tenant."""
    return [{"scenario_id": s} for s in scope.scenario_ids]


def per_catalogue(scope: Scope) -> list[dict[str, Any]]:
    """Return one group per scenario of the tenant, as items name theirs."""
    return [{"scenarios": s} for s in scope.scenario_ids]


def per_rollup(scope: Scope) -> list[dict[str, Any]]:
    """Return one group per scenario and stored rollup grain (domain.analytics.store.GRAINS)."""
    return [{"scenario_id": s, "grain": g} for s in scope.scenario_ids for g in GRAINS]


def tenant_doc(col: AsyncCollection, scope: Scope) -> Batches:
    """Read the tenant's own document."""
    return _cursor(col, {"_id": scope.tenant_id}, scope.pacer)


def interrupted_job(doc: dict[str, Any], mark: datetime) -> dict[str, Any]:
    """Write a job that was queued or running as FAILED: no worker will pick it up after a restore."""
    if doc.get("status") in ("QUEUED", "RUNNING"):
        doc.update(status="FAILED", active=False, error=INTERRUPTED, finished_at=mark)
    return doc


def unfinished_version(doc: dict[str, Any], mark: datetime) -> dict[str, Any]:
    """Write a model version still being built as FAILED, without its (partial) artifact."""
    if doc.get("status") == TRAINING or (doc.get("status") == READY and doc.get("applied_at") is None):
        doc.update(status="FAILED", artifact=None, error=INTERRUPTED)
    return doc


def released_lease(doc: dict[str, Any], mark: datetime) -> dict[str, Any]:
    """Drop the lease of an analytics pass that was running."""
    doc.update(lease_until=None, lease_owner=None)
    return doc


PARTS: tuple[Part, ...] = (
    Part(Tenant, tenant_doc),
    Part(ApiKey, by_id()),
    Part(Scenario, by_id()),
    Part(ScenarioConfigVersion, by_id()),
    Part(Experiment, by_id()),
    Part(Job, by_id(), interrupted_job),
    Part(AnalyticsState, by_id(), released_lease),
    Part(AnalyticsRollup, by_time("start", groups=per_rollup, after_mark=timedelta(days=1))),
    Part(AuditEntry, by_id()),
    Part(ModelVersion, by_id(), unfinished_version),
    Part(Item, by_ranges("item_id", lambda scope: scope.item_ids, groups=per_catalogue)),
    Part(Impression, by_time("served_at", groups=per_scenario)),
    # Event time: an event accepted before the mark has one at most FUTURE_TOLERANCE after it.
    Part(Interaction, collecting_users(by_time("ts", groups=per_scenario, after_mark=FUTURE_TOLERANCE + AFTER_MARK))),
    Part(UserProfile, profiles),
    Part(AnalyticsUser, by_ranges("user_id", lambda scope: scope.user_ids)),
    Part(Erasure, by_id()),
)
TENANTS = PARTS[0]
