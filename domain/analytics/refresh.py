"""The rollup pass: find which hours changed since the last pass and recompute them from the stored data.

A pass holds its tenant's lease (one pass per tenant at a time, whichever process runs it) and:
1. scans the interactions received since the events watermark (less `EVENTS_OVERLAP`, for inserts still in flight
   when the last pass read) and the pages served since the pages watermark (less `PAGES_OVERLAP`: the consumer
   writes pages in batches), noting each (scenario, hour of event time) they touch; lowers the stored first-event
   time of their users where they go back further (the hour that counted such a user as new is noted too); then
   adds the hours to the tenant's pending list and moves both watermarks, in one write;
2. recomputes the pending hours day by day, newest first, until its time budget is spent: a day of the last
   `RECENT_DAYS` keeps a bucket per hour (with maps), recomputes only its pending hours and merges its 24 hours
   into the day; older days are recomputed whole, several per read, and keep only the day bucket (which holds
   each hour's figures for hourly series). Every second the weeks of the days written are merged from their days,
   and the days leave the pending list in the write that renews the lease;
3. drops the hour buckets of the days that aged out of the last `RECENT_DAYS`.

Every step is idempotent: a pass that dies leaves its hours pending or recomputes them again. Hours to recompute
can also be asked for by erasure and on demand (`mark`): they wait beside the pending list, which a running pass
prunes as it goes, and the next pass takes them up. A user erased while the pass runs (their keyed hash is in the
erasure records since shortly before it began) is kept out of what it writes, and the hours that saw them stay
pending, to be recomputed without their deleted events.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from domain.analytics import recompute, store
from domain.analytics.rollup import DAY, HOUR, day_of, hour_of
from domain.analytics.stats import week_start
from domain.events import FUTURE_TOLERANCE
from domain.export import windows
from domain.ids import utcnow
from domain.scenarios.service import ScenarioService
from models.documents import AnalyticsState, Impression, Interaction

EVENTS_OVERLAP = timedelta(seconds=60)
PAGES_OVERLAP = timedelta(minutes=10)
RECENT_DAYS = 2  # today and yesterday keep hour buckets: live traffic recomputes an hour, not a day
LEASE = timedelta(minutes=2)
ERASURE_MARGIN = timedelta(minutes=10)  # erasures this long before a pass began may still be deleting events
SEP = "|"
REQUESTED = "requested"  # the state's list of hours asked for by erasure and on demand, taken up by the next pass
SETTLE_EVERY_S = 1.0  # recomputed hours leave the pending list (and the lease is renewed) this often
DROP_BACK = timedelta(days=7)  # each pass drops the hour buckets of the days this far before the recent ones
CHUNK_EVENTS = 10_000  # old days are recomputed several at a time, about this many events per read ...
CHUNK_DAYS = 31  # ... spanning at most this many days


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a tenant's rollups stand."""

    hours_done: int  # hours this call recomputed
    pending: int  # hours still to recompute
    rolled_up_to: datetime | None  # events received before then are counted (None: no complete pass yet)
    busy: bool = False  # another pass held the tenant's lease for the whole wait


def entry(scenario_id: str, hour: datetime) -> str:
    """Return the pending-list entry of a scenario's hour."""
    return f"{scenario_id}{SEP}{int(hour.timestamp())}"


def parse(value: str) -> tuple[str, datetime]:
    """Return the scenario and hour of a pending-list entry."""
    scenario_id, epoch = value.rsplit(SEP, 1)
    return scenario_id, datetime.fromtimestamp(int(epoch), UTC)


def recent_start(now: datetime) -> datetime:
    """Return the start of the first of the recent days (those that keep hour buckets)."""
    return day_of(now) - (RECENT_DAYS - 1) * DAY


def hours_to_rebuild(start: datetime, end: datetime) -> list[datetime]:
    """Return the hours to mark so that every day of [start, end) is recomputed: each hour of the recent days (which
    recompute only their pending hours), the first hour of older ones (which are recomputed whole)."""
    recent = recent_start(utcnow())
    out, day = [], day_of(start)
    while day < end:
        out += [day + k * HOUR for k in range(24)] if day >= recent else [day]
        day += DAY
    return out


def _state():
    return AnalyticsState.get_pymongo_collection()


async def mark(entries: Iterable[str], *, tenant_id: str) -> None:
    """Ask for hours to be recomputed: the next pass takes the requests up (one running now may have read their data
    already)."""
    values = list(entries)
    if values:
        await _state().update_one({"_id": tenant_id}, {"$addToSet": {REQUESTED: {"$each": values}},
                                                       "$setOnInsert": {"tenant_id": tenant_id}}, upsert=True)


async def rolled_up_to(*, tenant_id: str) -> datetime | None:
    """Return when the tenant's last complete pass began (None before the first)."""
    doc = await _state().find_one({"_id": tenant_id}, {"rolled_up_to": 1}) or {}
    rolled = doc.get("rolled_up_to")
    return rolled.astimezone(UTC) if rolled else None


async def progress(*, tenant_id: str, busy: bool = False, done: int = 0) -> Progress:
    """Return the tenant's rollup progress as stored."""
    doc = await _state().find_one({"_id": tenant_id}, {"dirty": 1, REQUESTED: 1, "rolled_up_to": 1}) or {}
    rolled = doc.get("rolled_up_to")
    pending = len(set(doc.get("dirty") or ()) | set(doc.get(REQUESTED) or ()))
    return Progress(done, pending, rolled.astimezone(UTC) if rolled else None, busy)


class Pass:
    """One rollup pass over one tenant (see the module docstring)."""

    def __init__(self, scenarios: ScenarioService, *, tenant_id: str, budget_s: float) -> None:
        self._scenarios = scenarios
        self.tenant_id = tenant_id
        self._deadline = time.monotonic() + budget_s
        self._token = uuid.uuid4().hex
        self._began = utcnow()
        self._dirty: set[str] = set()  # the pending list, as this pass (the lease holder) last wrote it
        self.done = 0

    async def acquire(self, wait_s: float = 0.0) -> bool:
        """Take the tenant's lease, waiting up to wait_s for another pass to finish; return whether it was taken."""
        await _state().update_one({"_id": self.tenant_id}, {"$setOnInsert": {"tenant_id": self.tenant_id, "dirty": []}},
                                  upsert=True)
        give_up = time.monotonic() + wait_s
        while True:
            now = utcnow()
            taken = await _state().find_one_and_update(
                {"_id": self.tenant_id, "$or": [{"lease_until": None}, {"lease_until": {"$lt": now}}]},
                {"$set": {"lease_until": now + LEASE, "lease_owner": self._token}},
            )
            if taken is not None:
                return True
            if time.monotonic() >= give_up:
                return False
            await asyncio.sleep(0.2)

    async def release(self) -> None:
        """Give the lease back (only if still ours)."""
        await _state().update_one({"_id": self.tenant_id, "lease_owner": self._token},
                                  {"$set": {"lease_until": None, "lease_owner": None}})

    async def run(self) -> None:
        """Scan, recompute pending hours within the budget, and drop aged-out hour buckets (the lease must be held)."""
        cutoff = utcnow()
        scenario_ids = set(await self._scenarios.ids(tenant_id=self.tenant_id))
        state = await _state().find_one({"_id": self.tenant_id}) or {}
        found = await self._scan(state, cutoff, scenario_ids)
        requested = (await _state().find_one({"_id": self.tenant_id}, {REQUESTED: 1}) or {}).get(REQUESTED) or []
        # Only the lease holder writes the pending list, so it is kept here and written whole: SecantusDB's
        # `$addToSet`/`$pullAll` compare every pair of values, which takes minutes for a first build's 10,000 hours.
        self._dirty = set(state.get("dirty") or ()) | found | set(requested)
        moved = await _state().update_one({"_id": self.tenant_id, "lease_owner": self._token}, {"$set": {
            "dirty": sorted(self._dirty), "events_wm": cutoff, "pages_wm": cutoff}})
        if moved.matched_count == 0:
            return  # the lease was lost: another pass goes on
        await self._take(requested)
        by_day: dict[tuple[str, datetime], set[str]] = defaultdict(set)
        for value in self._dirty:
            scenario_id, hour = parse(value)
            by_day[(scenario_id, day_of(hour))].add(value)
        recent = recent_start(cutoff)
        if not await self._recompute(by_day, scenario_ids, recent=recent):
            return
        if state.get("hours_dropped") != recent:  # once a day: the days that aged out (older ones kept no hours)
            for scenario_id in scenario_ids:
                await store.drop_hours(tenant_id=self.tenant_id, scenario_id=scenario_id, start=recent - DROP_BACK,
                                       end=recent)
        done = {"hours_dropped": recent, **({} if self._dirty else {"rolled_up_to": cutoff})}
        await _state().update_one({"_id": self.tenant_id, "lease_owner": self._token}, {"$set": done})

    async def _recompute(self, by_day: dict[tuple[str, datetime], set[str]], scenario_ids: set[str], *,
                         recent: datetime) -> bool:
        """Recompute pending days until the budget is spent: recent ones first, newest first, one by one; then each
        scenario's older ones, newest first, several per read. Return False when the lease was lost."""
        order = sorted(by_day, key=lambda k: (k[1] < recent, k[0] if k[1] < recent else "", -k[1].timestamp()))
        done: set[str] = set()
        again: set[str] = set()
        weeks: set[tuple[str, datetime]] = set()  # (scenario, week start) whose days were rewritten
        settled, span, i = time.monotonic(), timedelta(days=1), 0
        while i < len(order) and time.monotonic() < self._deadline:
            scenario_id, day = order[i]
            chunk = [day]
            if day < recent:  # older days of the same scenario within `span`, sized by the last read
                while (j := i + len(chunk)) < len(order) and order[j][0] == scenario_id and order[j][1] > day - span:
                    chunk.append(order[j][1])
            values = set().union(*(by_day[(scenario_id, d)] for d in chunk))
            if scenario_id in scenario_ids:
                outcome = await self._days(scenario_id, chunk, values, recent=day >= recent)
                again.update(entry(scenario_id, h) for h in outcome.erased_hours)
                weeks.update((scenario_id, week_start(d)) for d in chunk)
                read_span = (max(chunk) - min(chunk) + DAY) / DAY
                span = timedelta(days=max(1, min(CHUNK_DAYS, int(CHUNK_EVENTS * read_span / max(outcome.events, 1)))))
            done |= values
            i += len(chunk)
            if time.monotonic() - settled >= SETTLE_EVERY_S:
                if not await self._settle(done, again, weeks):
                    return False
                done, again, weeks, settled = set(), set(), set(), time.monotonic()
        return await self._settle(done, again, weeks)

    async def _days(self, scenario_id: str, days: list[datetime], values: set[str], *, recent: bool
                    ) -> recompute.Outcome:
        since = self._began - ERASURE_MARGIN
        if recent:
            return await recompute.recent_day(tenant_id=self.tenant_id, scenario_id=scenario_id, day=days[0],
                                              hours={parse(v)[1] for v in values}, erased_since=since)
        return await recompute.old_days(tenant_id=self.tenant_id, scenario_id=scenario_id, days=days,
                                        erased_since=since)

    async def _take(self, requested: list[str]) -> None:
        """Remove the requests now in the pending list (those added since stay for the next pass)."""
        if not requested:
            return
        swapped = await _state().update_one({"_id": self.tenant_id, REQUESTED: requested}, {"$set": {REQUESTED: []}})
        if swapped.matched_count == 0:
            await _state().update_one({"_id": self.tenant_id}, {"$pullAll": {REQUESTED: requested}})

    async def _renew(self) -> None:
        """Extend the lease (a pass that lost it finds out at its next write, which names it)."""
        await _state().update_one({"_id": self.tenant_id, "lease_owner": self._token},
                                  {"$set": {"lease_until": utcnow() + LEASE}})

    async def _settle(self, done: set[str], again: set[str], weeks: set[tuple[str, datetime]]) -> bool:
        """Merge the weeks whose days were rewritten, then take the recomputed hours off the pending list (those
        that saw an erased user go back on) and renew the lease; return False when the lease was lost."""
        by_scenario: dict[str, set[datetime]] = defaultdict(set)
        for scenario_id, week in weeks:
            by_scenario[scenario_id].add(week)
        for scenario_id, starts in by_scenario.items():
            outcome = await recompute.weeks(tenant_id=self.tenant_id, scenario_id=scenario_id, starts=starts)
            again = again | {entry(scenario_id, h) for h in outcome.erased_hours}
        self._dirty = (self._dirty - done) | again
        result = await _state().update_one({"_id": self.tenant_id, "lease_owner": self._token},
                                           {"$set": {"dirty": sorted(self._dirty), "lease_until": utcnow() + LEASE}})
        if result.matched_count == 0:
            return False
        self.done += len(done - again)
        return True

    async def _scan(self, state: dict, cutoff: datetime, scenario_ids: set[str]) -> set[str]:
        """Return the pending-list entries of the hours that events and pages stored since the watermarks touch,
        after recording their users' first events."""
        found: set[str] = set()
        firsts: dict[tuple[str, str], datetime] = {}
        renewed = time.monotonic()
        async for batch in self._new_events(state.get("events_wm"), cutoff, scenario_ids):
            if time.monotonic() - renewed > LEASE.total_seconds() / 4:  # a first scan of a long history
                await self._renew()
                renewed = time.monotonic()
            for doc in batch:
                scenario_id = doc["scenario_id"]
                if scenario_id not in scenario_ids:
                    continue
                at = doc["ts"].astimezone(UTC)
                found.add(entry(scenario_id, hour_of(at)))
                key = (scenario_id, doc["user_id"])
                if (known := firsts.get(key)) is None or at < known:
                    firsts[key] = at
        erased = await recompute.erased_test(tenant_id=self.tenant_id, since=self._began - ERASURE_MARGIN)
        kept = {key: at for key, at in firsts.items() if not erased(key[1])}
        moved = await store.lower_first_seen(tenant_id=self.tenant_id, firsts=kept)
        found.update(entry(scenario_id, hour_of(before)) for (scenario_id, _), before in moved.items())
        found.update(await self._pages(state.get("pages_wm"), cutoff, scenario_ids))
        return found

    async def _new_events(self, events_wm: datetime | None, cutoff: datetime, scenario_ids: set[str]
                          ) -> AsyncIterator[list[dict]]:
        """Yield the interactions received since the watermark (all of them at first, scenario by scenario by event
        time), in batches read through windows of a few thousand events: the embedded server holds a query's whole
        result until it is read, and answers nothing else meanwhile."""
        fields = {"_id": 0, "scenario_id": 1, "user_id": 1, "ts": 1}
        col = Interaction.get_pymongo_collection()
        if events_wm is None:
            for scenario_id in sorted(scenario_ids):
                def by_time(lo: datetime, hi: datetime, sid: str = scenario_id) -> AsyncIterator[list[dict]]:
                    return store.batches(col.find({"tenant_id": self.tenant_id, "scenario_id": sid,
                                                   "ts": {"$gte": lo, "$lt": hi}}, fields))
                async for batch in windows(by_time, start=None, end=cutoff + FUTURE_TOLERANCE):
                    yield batch
            return

        def received(lo: datetime, hi: datetime) -> AsyncIterator[list[dict]]:
            return store.batches(col.find({"tenant_id": self.tenant_id, "received_at": {"$gte": lo, "$lt": hi}},
                                          fields))

        async for batch in windows(received, start=events_wm - EVENTS_OVERLAP, end=cutoff,
                                   first_span=EVENTS_OVERLAP):
            yield batch

    async def _pages(self, pages_wm: datetime | None, cutoff: datetime, scenario_ids: set[str]) -> set[str]:
        """Return the pending-list entries of the hours of the pages served since the watermark (windows as in
        `_new_events`)."""
        col, found = Impression.get_pymongo_collection(), set()
        start = pages_wm - PAGES_OVERLAP if pages_wm is not None else None
        for scenario_id in sorted(scenario_ids):
            def served(lo: datetime, hi: datetime, sid: str = scenario_id) -> AsyncIterator[list[dict]]:
                return store.batches(col.find({"tenant_id": self.tenant_id, "scenario_id": sid,
                                               "served_at": {"$gte": lo, "$lt": hi}}, {"_id": 0, "served_at": 1}))
            async for batch in windows(served, start=start, end=cutoff):
                found.update(entry(scenario_id, hour_of(d["served_at"])) for d in batch)
        return found


async def quiet(*, tenant_id: str, scenario_ids: Iterable[str]) -> bool:
    """Return whether a pass over the tenant would find nothing to do: nothing pending or requested, no interaction
    received and no page served since shortly before the last scan, and the aged-out hours dropped already (a few
    reads, no write: the periodic pass skips such tenants). A page stored later than that after it was served waits
    for the tenant's next pass, which scans back `PAGES_OVERLAP`."""
    state = await _state().find_one({"_id": tenant_id}, {"dirty": 1, REQUESTED: 1, "events_wm": 1, "pages_wm": 1,
                                                         "hours_dropped": 1})
    if state is None or state.get("dirty") or state.get(REQUESTED) or state.get("events_wm") is None:
        return False
    dropped = state.get("hours_dropped")
    if dropped is None or dropped.astimezone(UTC) != recent_start(utcnow()):
        return False
    if await Interaction.get_pymongo_collection().find_one(
            {"tenant_id": tenant_id, "received_at": {"$gte": state["events_wm"] - EVENTS_OVERLAP}}, {"_id": 1}):
        return False
    since = state["pages_wm"] - EVENTS_OVERLAP
    for scenario_id in scenario_ids:
        if await Impression.get_pymongo_collection().find_one(
                {"tenant_id": tenant_id, "scenario_id": scenario_id, "served_at": {"$gte": since}}, {"_id": 1}):
            return False
    return True


async def run_pass(scenarios: ScenarioService, *, tenant_id: str, budget_s: float, wait_s: float = 0.0) -> Progress:
    """Run one pass over the tenant if its lease can be taken within wait_s; return the progress after it."""
    work = Pass(scenarios, tenant_id=tenant_id, budget_s=budget_s)
    if not await work.acquire(wait_s):
        return await progress(tenant_id=tenant_id, busy=True)
    try:
        await work.run()
    finally:
        await work.release()
    return await progress(tenant_id=tenant_id, done=work.done)
