"""Recompute a scenario's rollups of some days from the stored events and served pages.

A recent day (which keeps a bucket per hour) recomputes only the span of its pending hours and merges its 24 hours
into the day; older days are recomputed whole, several in one read, and keep only their day bucket. A week's bucket
is merged from its days once they are written.

Erasure (domain.privacy) records a keyed hash of the user first, deletes their events, then removes them from the
rollups. So that a recomputation that read the events before they were deleted cannot write the user back: users
erased since shortly before the pass are left out of what is written, and users erased while it wrote are removed
again just after; either way their hours are reported, to be recomputed without the deleted events.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from domain import erasure
from domain.analytics import store
from domain.analytics.rollup import DAY, HOUR, Bucket, day_from_hours, day_of, fold_hours, from_documents, merge
from domain.analytics.stats import WEEK
from domain.analytics.store import DAY_GRAIN, HOUR_GRAIN, WEEK_GRAIN, Replacement
from domain.ids import utcnow
from models.documents import Scenario

CLOCK_SKEW = timedelta(seconds=5)  # erasure records are stamped by the process that erased


@dataclass(slots=True)
class Outcome:
    """What a recomputation read, and the hours that held erased users (to recompute again)."""

    events: int = 0
    erased_hours: set[datetime] = field(default_factory=set)


async def erased_test(*, tenant_id: str, since: datetime) -> Callable[[str], bool]:
    """Return a test of whether a user id was erased at or after `since`."""
    digests = await erasure.erased_since(since, tenant_id=tenant_id)
    if not digests:
        return lambda _user: False
    key = await erasure.hash_key(tenant_id=tenant_id)
    return lambda user: erasure.digest(key, user) in digests


async def recent_day(*, tenant_id: str, scenario_id: str, day: datetime, hours: set[datetime],
                     erased_since: datetime) -> Outcome:
    """Recompute the pending hours of a recent day, then the day from its hours."""
    kept = await store.hours(tenant_id=tenant_id, scenario_id=scenario_id, start=day, end=day + DAY)
    start, end = min(hours), max(hours) + HOUR
    fresh, outcome = await _fold(tenant_id, scenario_id, start, end, erased_since)
    whole = await asyncio.to_thread(day_from_hours, day, [*(b for h, b in kept.items() if not start <= h < end),
                                                          *fresh.values()])
    await _store(tenant_id, scenario_id, fresh, [Replacement(HOUR_GRAIN, start, end, list(fresh.values())),
                                                 Replacement(DAY_GRAIN, day, day + DAY, [whole])], outcome)
    return outcome


async def old_days(*, tenant_id: str, scenario_id: str, days: Sequence[datetime], erased_since: datetime) -> Outcome:
    """Recompute whole days from one read spanning them (any hour buckets they kept from their recent days go)."""
    start, end = min(days), max(days) + DAY
    fresh, outcome = await _fold(tenant_id, scenario_id, start, end, erased_since)
    by_day: dict[datetime, list[Bucket]] = {}
    for hour, bucket in fresh.items():
        by_day.setdefault(day_of(hour), []).append(bucket)
    replacements = []
    for day in days:
        hours = by_day.get(day, [])
        whole = await asyncio.to_thread(day_from_hours, day, hours)
        replacements += [Replacement(HOUR_GRAIN, day, day + DAY, []), Replacement(DAY_GRAIN, day, day + DAY, [whole])]
    await _store(tenant_id, scenario_id, fresh, replacements, outcome)
    return outcome


async def weeks(*, tenant_id: str, scenario_id: str, starts: Iterable[datetime]) -> Outcome:
    """Merge each week (Monday 00:00 UTC) from its stored days: long ranges read weeks, not days."""
    fresh, replacements = {}, []
    for week in sorted(starts):
        docs = await store.family_docs(tenant_id=tenant_id, scenario_id=scenario_id, grain=DAY_GRAIN, start=week,
                                       end=week + WEEK)
        fresh[week] = await asyncio.to_thread(_merged, week, docs)
        replacements.append(Replacement(WEEK_GRAIN, week, week + WEEK, [fresh[week]]))
    outcome = Outcome()
    await _store(tenant_id, scenario_id, fresh, replacements, outcome)
    return outcome


def _merged(start: datetime, docs: list[dict]) -> Bucket:
    return merge(start, from_documents(docs).values())


async def _fold(tenant_id: str, scenario_id: str, start: datetime, end: datetime, erased_since: datetime
                ) -> tuple[dict[datetime, Bucket], Outcome]:
    """Return the hour buckets of [start, end) without the users erased since `erased_since`."""
    events, pages, served = await store.raw(tenant_id=tenant_id, scenario_id=scenario_id, start=start, end=end)
    first = await store.first_seen(tenant_id=tenant_id, scenario_id=scenario_id, users={e["user_id"] for e in events})
    fresh = await asyncio.to_thread(fold_hours, events, pages, served, first)  # off the event loop
    erased = await erased_test(tenant_id=tenant_id, since=erased_since)
    return fresh, Outcome(len(events), _drop(fresh, erased))


def _drop(buckets: dict[datetime, Bucket], erased: Callable[[str], bool]) -> set[datetime]:
    """Remove erased users from the buckets' user maps; return the hours they were in."""
    hours = set()
    for start, bucket in buckets.items():
        for user in [u for u in bucket.users if erased(u)]:
            del bucket.users[user]
            bucket.new.discard(user)
            hours.add(start)
    return hours


async def _store(tenant_id: str, scenario_id: str, fresh: dict[datetime, Bucket], replacements: Sequence[Replacement],
                 outcome: Outcome) -> None:
    """Write the replacements unless the scenario was deleted meanwhile; then take out users erased while writing."""
    scenarios = Scenario.get_pymongo_collection()
    if await scenarios.find_one({"_id": scenario_id, "tenant_id": tenant_id}, {"_id": 1}) is None:
        return  # its rollups went with it
    checked = utcnow()
    await store.replace(replacements, tenant_id=tenant_id, scenario_id=scenario_id)
    late = await erased_test(tenant_id=tenant_id, since=checked - CLOCK_SKEW)
    users = {u for bucket in fresh.values() for u in bucket.users if late(u)}
    for user in users:
        await store.remove_user(user, tenant_id=tenant_id, scenario_id=scenario_id,
                                start=min(r.start for r in replacements), end=max(r.end for r in replacements))
    outcome.erased_hours |= _drop(fresh, late)
