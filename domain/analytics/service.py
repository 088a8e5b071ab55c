"""Admin analytics of a scenario over a time range, read from the rollups (never from the raw events).

Ranges are [from, to) in UTC. A series has a point for every hour or day whose start falls in the range (the first
is the bucket holding `from`), empty ones included. Catalogue and audience statistics count whole UTC days, from
the day holding `from` to the last day starting before `to`; retention counts whole weeks (Monday 00:00 UTC), from
the week holding `from`. A range may span at most `MAX_RANGE`.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

import structlog

from domain.analytics import figures, refresh, stats, store
from domain.analytics.figures import AudienceStats, CatalogueStats, Granularity, Series
from domain.analytics.rollup import DAY, ITEMS, USERS, day_of, hour_of
from domain.errors import BadInput
from domain.scenarios.service import ScenarioService
from models.documents import Item, Tenant

log = structlog.get_logger()

MAX_RANGE = timedelta(days=92)  # any calendar quarter
MAX_REBUILD = MAX_RANGE
MAX_TOP = 100  # most items and categories in each of catalogueStats' rankings
CATALOGUE_TTL_S = 30.0  # the scenario's items (status, categories) are re-read this often
CATALOGUES_KEPT = 64
REFRESH_BUDGET_S = 20.0  # an on-demand refresh returns after this long, leaving the rest pending
REFRESH_WAIT_S = 5.0  # how long an on-demand refresh waits for a pass that holds the tenant
PERIODIC_BUDGET_S = 30.0  # per tenant and periodic pass


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def check_range(start: datetime, end: datetime, *, limit: timedelta = MAX_RANGE) -> tuple[datetime, datetime]:
    """Return the range in UTC, or raise BadInput naming `from` (not before `to`) or `to` (too long)."""
    start, end = _utc(start), _utc(end)
    if start >= end:
        raise BadInput(f"from ({start.isoformat()}) must be before to ({end.isoformat()})", field="from")
    if end - start > limit:
        raise BadInput(f"the range may span at most {limit.days} days, got {(end - start) / DAY:.1f}", field="to")
    return start, end


def bucket_starts(start: datetime, end: datetime, granularity: Granularity) -> list[datetime]:
    """Return the starts of the buckets of a range: from the one holding `start` to the last starting before `end`."""
    at = hour_of(start) if granularity is Granularity.HOUR else day_of(start)
    out = []
    while at < end:
        out.append(at)
        at += granularity.step
    return out


class AnalyticsService:
    """Answer analytics queries from the rollups, and keep the rollups current (domain.analytics.refresh)."""

    def __init__(self, scenarios: ScenarioService) -> None:
        self._scenarios = scenarios
        self._catalogues: OrderedDict[tuple[str, str], tuple[float, dict[str, tuple[bool, tuple[str, ...]]]]] = (
            OrderedDict())
        self._loading: dict[tuple[str, str], asyncio.Task] = {}  # background re-reads of stale catalogues

    async def series(self, *, tenant_id: str, scenario_id: str, start: datetime, end: datetime,
                     granularity: Granularity) -> Series:
        """Return the scenario's counters per hour or day over [start, end)."""
        start, end = await self._checked(tenant_id, scenario_id, start, end)
        starts = bucket_starts(start, end, granularity)
        hourly = granularity is Granularity.HOUR  # day heads keep each hour's figures
        heads = await store.read(tenant_id=tenant_id, scenario_id=scenario_id, grain=store.DAY_GRAIN,
                                 start=day_of(start), end=end, fields=("hc",) if hourly else ("c",))
        points = figures.hour_points(starts, heads) if hourly else figures.points(starts, heads)
        return Series(scenario_id, start, end, granularity, points, await self._rolled(tenant_id))

    async def catalogue(self, *, tenant_id: str, scenario_id: str, start: datetime, end: datetime, first: int,
                        min_impressions: int) -> CatalogueStats:
        """Return coverage, concentration and the top items and categories of the scenario over [start, end)."""
        if not 1 <= first <= MAX_TOP:
            raise BadInput(f"first must be between 1 and {MAX_TOP}, got {first}", field="first")
        if min_impressions < 1:
            raise BadInput(f"minImpressions must be at least 1, got {min_impressions}", field="minImpressions")
        start, end = await self._checked(tenant_id, scenario_id, start, end)
        docs = await self._span(tenant_id, scenario_id, ITEMS, ("m",), day_of(start), day_of(start), end)
        items = await self._items(tenant_id, scenario_id)
        return await asyncio.to_thread(
            figures.catalogue, docs, items, first=first, min_impressions=min_impressions, scenario_id=scenario_id,
            start=start, end=end, rolled_up_to=await self._rolled(tenant_id))

    async def audience(self, *, tenant_id: str, scenario_id: str, start: datetime, end: datetime) -> AudienceStats:
        """Return the events-per-user distribution, weekly retention cohorts and CTR by list position and by recall
        source of the scenario over [start, end)."""
        start, end = await self._checked(tenant_id, scenario_id, start, end)
        first_day, first_week = day_of(start), stats.week_start(day_of(start))
        weeks = bucket_starts(first_week, end, Granularity.DAY)[::7]
        heads = await self._span(tenant_id, scenario_id, "", ("pn", "pc", "src"), first_day, first_day, end)
        users = await self._span(tenant_id, scenario_id, USERS, ("m",), first_week, first_day, end)
        return await asyncio.to_thread(
            figures.audience, heads, users, weeks, first_day=first_day, scenario_id=scenario_id, start=start,
            end=end, rolled_up_to=await self._rolled(tenant_id))

    async def refresh(self, *, tenant_id: str, scenario_id: str | None = None, start: datetime | None = None,
                      end: datetime | None = None, budget_s: float = REFRESH_BUDGET_S,
                      wait_s: float = REFRESH_WAIT_S) -> refresh.Progress:
        """Roll up what changed now (and first mark every hour of [start, end) to recompute, of one scenario or of
        all, when given); return the progress, with hours left pending when the budget ran out."""
        if (start is None) != (end is None):
            raise BadInput("give both from and to to recompute a range, or neither", field="from" if end else "to")
        if scenario_id is not None:
            await self._scenario(tenant_id, scenario_id)
        if start is not None and end is not None:
            start, end = check_range(start, end, limit=MAX_REBUILD)
            ids = [scenario_id] if scenario_id else await self._scenarios.ids(tenant_id=tenant_id)
            await refresh.mark((refresh.entry(s, h) for s in ids for h in refresh.hours_to_rebuild(start, end)),
                               tenant_id=tenant_id)
        return await refresh.run_pass(self._scenarios, tenant_id=tenant_id, budget_s=budget_s, wait_s=wait_s)

    async def refresh_all(self, *, budget_s: float = PERIODIC_BUDGET_S) -> int:
        """Run a pass over every tenant with something to roll up and a free lease; return how many hours were
        recomputed."""
        done = 0
        async for doc in Tenant.get_pymongo_collection().find({}, {"_id": 1}):
            tenant_id = doc["_id"]
            if await refresh.quiet(tenant_id=tenant_id, scenario_ids=await self._scenarios.ids(tenant_id=tenant_id)):
                continue
            done += (await refresh.run_pass(self._scenarios, tenant_id=tenant_id, budget_s=budget_s)).hours_done
        return done

    async def erase_user(self, user_id: str, *, tenant_id: str) -> int:
        """Remove a user from every rollup and first-event record (the hours they were in are recomputed by the
        next pass, without their deleted events); return how many records changed. Their first events say where
        to look: no rollup counts a user before it (the records go last, so an interrupted erasure can be run
        again)."""
        changed = 0
        for scenario_id, first in (await store.first_events(user_id, tenant_id=tenant_id)).items():
            starts = await store.remove_user(user_id, tenant_id=tenant_id, scenario_id=scenario_id,
                                             start=stats.week_start(day_of(first)))
            await refresh.mark({refresh.entry(scenario_id, at) for at in starts}, tenant_id=tenant_id)
            changed += len(starts)
        return changed + await store.forget_user(user_id, tenant_id=tenant_id)

    async def drop_scenario(self, tenant_id: str, scenario_id: str) -> None:
        """Delete a deleted scenario's rollups (ScenarioService's delete handler)."""
        await store.drop_scenario(tenant_id=tenant_id, scenario_id=scenario_id)
        self._catalogues.pop((tenant_id, scenario_id), None)

    async def _span(self, tenant_id: str, scenario_id: str, kind: str, fields: tuple[str, ...], lead: datetime,
                    first_day: datetime, end: datetime) -> list[dict]:
        """Return the `kind` documents (heads "", item maps, user maps) of the days from `lead` to the day holding
        `end`: the whole weeks from `first_day` on as week buckets, the days around them as day buckets."""
        last = day_of(end) + (DAY if end > day_of(end) else timedelta(0))  # the end of the last day counted
        week = stats.week_start(first_day)
        weeks = (week if week == first_day else week + stats.WEEK, stats.week_start(last))
        where = {"tenant_id": tenant_id, "scenario_id": scenario_id, "fields": fields}
        if weeks[0] >= weeks[1]:
            return await store.read(grain=store.DAY_GRAIN + kind, start=lead, end=last, **where)
        return [*await store.read(grain=store.DAY_GRAIN + kind, start=lead, end=weeks[0], **where),
                *await store.read(grain=store.WEEK_GRAIN + kind, start=weeks[0], end=weeks[1], **where),
                *await store.read(grain=store.DAY_GRAIN + kind, start=weeks[1], end=last, **where)]

    async def _checked(self, tenant_id: str, scenario_id: str, start: datetime, end: datetime
                       ) -> tuple[datetime, datetime]:
        await self._scenario(tenant_id, scenario_id)
        return check_range(start, end)

    async def _scenario(self, tenant_id: str, scenario_id: str) -> None:
        if await self._scenarios.get(scenario_id, tenant_id=tenant_id) is None:
            raise BadInput(f"no scenario {scenario_id}", field="scenarioId")

    async def _rolled(self, tenant_id: str) -> datetime | None:
        return await refresh.rolled_up_to(tenant_id=tenant_id)

    async def _items(self, tenant_id: str, scenario_id: str) -> dict[str, tuple[bool, tuple[str, ...]]]:
        """Return the scenario's items: whether each is ACTIVE, and its categories. Read once, then re-read in the
        background when older than CATALOGUE_TTL_S (reading a large catalogue takes longer than the query)."""
        key = (tenant_id, scenario_id)
        cached = self._catalogues.get(key)
        if cached is None:
            return await self._load_items(key)
        self._catalogues.move_to_end(key)
        if cached[0] <= time.monotonic() and key not in self._loading:
            task = asyncio.create_task(self._load_items(key))
            self._loading[key] = task
            task.add_done_callback(lambda done: self._loaded(key, done))
        return cached[1]

    async def _load_items(self, key: tuple[str, str]) -> dict[str, tuple[bool, tuple[str, ...]]]:
        tenant_id, scenario_id = key
        cursor = Item.get_pymongo_collection().find(
            {"tenant_id": tenant_id, "scenarios": scenario_id}, {"_id": 0, "item_id": 1, "status": 1, "categories": 1},
            batch_size=store.READ_BATCH,
        )
        items = {d["item_id"]: (d.get("status", "ACTIVE") == "ACTIVE", tuple(d.get("categories") or ()))
                 async for d in cursor}
        self._catalogues[key] = (time.monotonic() + CATALOGUE_TTL_S, items)
        while len(self._catalogues) > CATALOGUES_KEPT:
            self._catalogues.popitem(last=False)
        return items

    def _loaded(self, key: tuple[str, str], done: asyncio.Task) -> None:
        self._loading.pop(key, None)
        if not done.cancelled() and (error := done.exception()) is not None:
            log.warning("analytics.items_reload_failed", error=str(error))  # the stale copy serves until next time
