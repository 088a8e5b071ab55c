"""Exports: all of a tenant's interactions, items or profiles, read in batches so that memory stays flat.

Interactions are read scenario by scenario, newest first, through windows of event time on the
(tenant_id, scenario_id, ts) index rather than through one open cursor. On mongod one cursor would stream, but the
embedded server holds a query's whole result in its own memory until the cursor is drained (measured: 160 MB per
100,000 events), while a bounded range of the index costs it only what the range holds. So each window is sized to
hold about `TARGET` events from the density the previous one found: it shrinks after a crowded window and doubles
after an empty or sparse one, so a quiet stretch of years is crossed in a few dozen empty reads. Only a window that
meets a sudden burst, or the first one after a long gap, holds more. The same windows serve both topologies.

Items and profiles are read through one cursor each, in key order (the client's ids, unique in the tenant): a
catalogue or a user base is what the embedded server holds for a listing anyway.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo.errors import ExecutionTimeout

from domain.errors import BadInput
from domain.events import FUTURE_TOLERANCE
from domain.ids import utcnow
from domain.profiles import ProfileService, ProfileView
from domain.scenarios.service import ScenarioService
from models.documents import Interaction, Item, UserProfile

BATCH = 1000  # documents per read and per batch handed on
PROFILE_BATCH = 500  # profiles per batch: each batch also reads the users' state in Redis
TARGET = 5000  # events a window of event time should hold
FIRST_SPAN = timedelta(hours=1)
MIN_SPAN = timedelta(milliseconds=1)  # event times are kept to the millisecond
MAX_SPAN = timedelta(days=1_000_000)  # more than the whole range of event times
GROW, SHRINK = 2.0, 8.0  # how far one window's span may move from the last one's
EARLIEST = datetime(1, 1, 1, tzinfo=UTC)  # the oldest event time a window reaches back to without `start`
COUNT_BUDGET_MS = 1000  # a count for a progress bar is worth this much of the server's time, no more

Doc = dict[str, Any]
Fetch = Callable[[datetime, datetime], AsyncIterator[list[Doc]]]


@dataclass(frozen=True)
class Export:
    """One export, checked and ready: its batches are read as they are iterated."""

    batches: AsyncIterator[list[Any]]
    count: Callable[[], Awaitable[int | None]]  # how many it will hold, when the server counts that cheaply


def next_span(span: timedelta, found: int, *, target: int = TARGET) -> timedelta:
    """Return the span of the next window, from the span of the last and how many events it held."""
    factor = GROW if found == 0 else min(GROW, max(1 / SHRINK, target / found))
    return min(MAX_SPAN, max(MIN_SPAN, span * factor))


async def windows(
    fetch: Fetch, *, start: datetime | None, end: datetime, target: int = TARGET, first_span: timedelta = FIRST_SPAN,
) -> AsyncIterator[list[Doc]]:
    """Yield the batches of `fetch(lo, hi)` (events with lo <= ts < hi, newest first) over windows that walk back
    from `end` to `start` (None: the earliest time), each sized from the density the last one found."""
    floor = start or EARLIEST
    hi, span = end, first_span
    while hi > floor:
        lo = hi - span if hi - floor > span else floor
        found = 0
        async with aclosing(fetch(lo, hi)) as window:
            async for batch in window:
                found += len(batch)
                yield batch
        hi, span = lo, next_span(span, found, target=target)


async def _cursor_batches(cursor: Any, size: int) -> AsyncIterator[list[Doc]]:
    """Yield a cursor's documents `size` at a time, closing it however the iteration ends."""
    try:
        while batch := await cursor.to_list(size):
            yield batch
    finally:
        await cursor.close()


async def _counted(collection: Any, query: Doc) -> int | None:
    """Return how many documents match, or None when counting would take more than `COUNT_BUDGET_MS`."""
    try:
        return await collection.count_documents(query, maxTimeMS=COUNT_BUDGET_MS)
    except ExecutionTimeout:
        return None


async def _uncounted() -> None:
    return None


class ExportService:
    """Open a tenant's exports; a scenario of another tenant is as missing as one that does not exist."""

    def __init__(self, scenarios: ScenarioService, profiles: ProfileService, *, counts: bool = True) -> None:
        """`counts`: whether `Export.count` asks the server. Not of the embedded one: it counts by holding every
        match in memory (+230 MB for a million events, even when stopped by the time budget), and the `count`
        command there holds the whole collection."""
        self._scenarios = scenarios
        self._profiles = profiles
        self._counts = counts

    def _count(self, collection: Any, query: Doc) -> Callable[[], Awaitable[int | None]]:
        return (lambda: _counted(collection, query)) if self._counts else _uncounted

    async def interactions(
        self, *, tenant_id: str, scenario_id: str | None, start: datetime | None, end: datetime | None,
        field: str = "scenarioId", end_field: str = "to",
    ) -> Export:
        """Return the export of the interactions with start <= timestamp < end (either open) of one scenario, or of
        every scenario (one after the other, by id), newest first."""
        if start is not None and end is not None and start >= end:
            raise BadInput("must be later than the start of the range", field=end_field)
        scenario_ids = await self._scope(tenant_id, scenario_id, field)
        last = end or utcnow() + FUTURE_TOLERANCE + MIN_SPAN  # no stored event is later
        collection = Interaction.get_pymongo_collection()

        async def batches() -> AsyncIterator[list[Doc]]:
            for sid in scenario_ids:
                def fetch(lo: datetime, hi: datetime, sid: str = sid) -> AsyncIterator[list[Doc]]:
                    query = {"tenant_id": tenant_id, "scenario_id": sid, "ts": {"$gte": lo, "$lt": hi}}
                    cursor = collection.find(query, sort=[("ts", -1), ("_id", -1)], batch_size=BATCH)
                    return _cursor_batches(cursor, BATCH)

                walk = windows(fetch, start=start, end=last, target=TARGET, first_span=FIRST_SPAN)
                async with aclosing(walk) as read:
                    async for batch in read:
                        yield batch

        times: Doc = {"$lt": last, **({"$gte": start} if start is not None else {})}
        counted = {"tenant_id": tenant_id, "scenario_id": {"$in": scenario_ids}, "ts": times}
        return Export(batches=batches(), count=self._count(collection, counted))

    async def items(self, *, tenant_id: str, scenario_id: str | None, field: str = "scenarioId") -> Export:
        """Return the export of the items of one scenario, or of the whole catalogue, by item id."""
        collection = Item.get_pymongo_collection()
        if scenario_id is not None:
            await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id, field=field)
            query, order = {"tenant_id": tenant_id, "scenarios": scenario_id}, "item_id"  # the index's order
        else:
            query, order = {"tenant_id": tenant_id}, "_id"  # "{tenant}/{item id}": item id order, no sort stage

        async def batches() -> AsyncIterator[list[Doc]]:
            cursor = collection.find(query, sort=[(order, 1)], batch_size=BATCH)
            async with aclosing(_cursor_batches(cursor, BATCH)) as read:
                async for batch in read:
                    yield batch

        return Export(batches=batches(), count=self._count(collection, query))

    async def profiles(self, *, tenant_id: str) -> Export:
        """Return the export of the stored profiles by user id, each as the `profile` query reads it."""
        collection = UserProfile.get_pymongo_collection()
        query = {"tenant_id": tenant_id}

        async def batches() -> AsyncIterator[list[ProfileView]]:
            cursor = collection.find(query, sort=[("_id", 1)], batch_size=PROFILE_BATCH)
            async with aclosing(_cursor_batches(cursor, PROFILE_BATCH)) as read:
                async for docs in read:
                    stored = [UserProfile.model_validate(doc) for doc in docs]
                    yield await self._profiles.of_documents(stored, tenant_id=tenant_id)

        return Export(batches=batches(), count=self._count(collection, query))

    async def _scope(self, tenant_id: str, scenario_id: str | None, field: str) -> Sequence[str]:
        if scenario_id is None:
            return sorted(await self._scenarios.ids(tenant_id=tenant_id))
        await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id, field=field)
        return [scenario_id]
