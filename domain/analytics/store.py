"""Where analytics reads and writes MongoDB: the raw events and pages a rollup folds, and the rolled-up buckets.

Every query names the tenant first and rides an index that starts with tenant_id: interactions by (tenant,
scenario, ts) and (tenant, received_at), served pages by (tenant, scenario, served_at) and by `_id`, rollups by
(tenant, scenario, grain, start) with one grain a query (an `$in` on it makes the embedded server scan them all),
first events by `_id` and (tenant, user).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import DeleteMany, ReplaceOne, UpdateOne

from domain.analytics.rollup import (
    ITEMS, USERS, Bucket, Page, chunks, drop_users, from_documents, page_of, to_documents,
)
from models.documents import AnalyticsRollup, AnalyticsUser, Impression, Interaction, composite_id

HOUR_GRAIN, DAY_GRAIN, WEEK_GRAIN = "h", "d", "w"
IN_BATCH = 1000  # ids per `$in`
# Documents per read: the embedded server answers one request at a time, and a long one can outlast the driver's
# heartbeat, which then resets the pool and cancels the operations in flight.
READ_BATCH = 1000
WRITE_BATCH = 100  # writes per bulk request, for the same reason
EVENT_FIELDS = {"_id": 0, "scenario_id": 1, "user_id": 1, "item_id": 1, "type": 1, "value": 1, "ts": 1,
                "request_id": 1}


async def batches(cursor: Any, size: int = READ_BATCH) -> AsyncIterator[list[dict[str, Any]]]:
    """Yield a cursor's documents `size` at a time, closing it however the iteration ends."""
    try:
        while batch := await cursor.to_list(size):
            yield batch
    finally:
        await cursor.close()


def family(grain: str) -> tuple[str, str, str]:
    """Return the grains a bucket of `grain` is stored under: its head, its item map and its user map."""
    return grain, grain + ITEMS, grain + USERS


GRAINS = tuple(g for grain in (HOUR_GRAIN, DAY_GRAIN, WEEK_GRAIN) for g in family(grain))  # every stored grain
USER_GRAINS = tuple(grain + USERS for grain in (HOUR_GRAIN, DAY_GRAIN, WEEK_GRAIN))  # those that hold user ids


def _utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


def user_key(tenant_id: str, scenario_id: str, user_id: str) -> str:
    """Return the `_id` of a user's first-event record in a scenario."""
    return f"{tenant_id}/{scenario_id}/{user_id}"


async def raw(
    *, tenant_id: str, scenario_id: str, start: datetime, end: datetime
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, Page]]:
    """Return the scenario's interactions (by event time) and served pages in [start, end), and the pages the
    interactions' requestIds name (request id -> page; those not stored are left out)."""
    span = {"$gte": start, "$lt": end}
    events = await Interaction.get_pymongo_collection().find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "ts": span}, EVENT_FIELDS, batch_size=READ_BATCH
    ).to_list(None)
    pages = await Impression.get_pymongo_collection().find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "served_at": span},
        {"_id": 0, "items": 1, "served_at": 1}, batch_size=READ_BATCH,
    ).to_list(None)
    cited = list({e["request_id"] for e in events if e.get("request_id")})
    served: dict[str, Page] = {}
    for batch in chunks(cited, IN_BATCH):
        cursor = Impression.get_pymongo_collection().find(
            {"_id": {"$in": [composite_id(tenant_id, r) for r in batch]}, "tenant_id": tenant_id},
            {"request_id": 1, "scenario_id": 1, "items": 1},
        )
        async for doc in cursor:
            served[doc["request_id"]] = page_of(doc)
    return events, pages, served


async def first_seen(*, tenant_id: str, scenario_id: str, users: Iterable[str]) -> dict[str, datetime]:
    """Return when each of the users' first event in the scenario happened (those without a record left out)."""
    out: dict[str, datetime] = {}
    for batch in chunks(list(users), IN_BATCH):
        cursor = AnalyticsUser.get_pymongo_collection().find(
            {"_id": {"$in": [user_key(tenant_id, scenario_id, u) for u in batch]}, "tenant_id": tenant_id},
            {"user_id": 1, "first": 1},
        )
        out.update({doc["user_id"]: _utc(doc["first"]) async for doc in cursor})
    return out


async def lower_first_seen(
    *, tenant_id: str, firsts: Mapping[tuple[str, str], datetime]
) -> dict[tuple[str, str], datetime]:
    """Record first events ((scenario, user) -> time) where earlier than what is stored; return the records that
    moved earlier, with the time they held before (the hour that counted the user as new must be recomputed)."""
    keys = {key: user_key(tenant_id, *key) for key in firsts}
    stored: dict[str, datetime] = {}
    for batch in chunks(list(keys.values()), IN_BATCH):
        cursor = AnalyticsUser.get_pymongo_collection().find(
            {"_id": {"$in": batch}, "tenant_id": tenant_id}, {"first": 1})
        stored.update({doc["_id"]: _utc(doc["first"]) async for doc in cursor})
    ops, moved = [], {}
    for (scenario_id, user_id), at in firsts.items():
        before = stored.get(keys[(scenario_id, user_id)])
        if before is not None and before <= at:
            continue
        if before is not None:
            moved[(scenario_id, user_id)] = before
        ops.append(UpdateOne(
            {"_id": keys[(scenario_id, user_id)]},
            {"$min": {"first": at}, "$setOnInsert": {"tenant_id": tenant_id, "scenario_id": scenario_id,
                                                     "user_id": user_id}},
            upsert=True,
        ))
    for batch in chunks(ops, WRITE_BATCH):
        await AnalyticsUser.get_pymongo_collection().bulk_write(batch, ordered=False)
    return moved


@dataclass(frozen=True, slots=True)
class Replacement:
    """The buckets of one grain that must be all there is of that grain in [start, end) (empty ones not kept)."""

    grain: str
    start: datetime
    end: datetime
    buckets: Sequence[Bucket]


async def replace(replacements: Sequence[Replacement], *, tenant_id: str, scenario_id: str) -> None:
    """Store each replacement's buckets and delete every other part of its grain in its range: the ids there are read
    through the rollup index (a `$nin` on `_id` would scan the collection), then one bulk write."""
    if not replacements:
        return
    docs = [doc for r in replacements for b in r.buckets if not b.empty
            for doc in to_documents(b, tenant_id=tenant_id, scenario_id=scenario_id, grain=r.grain)]
    written = {d["_id"] for d in docs}
    col = AnalyticsRollup.get_pymongo_collection()
    stale = []
    for grain in sorted({g for r in replacements for g in family(r.grain)}):  # an `$in` on grain scans them all
        ranges = [(r.start, r.end) for r in replacements if grain in family(r.grain)]
        cursor = col.find({"tenant_id": tenant_id, "scenario_id": scenario_id, "grain": grain,
                           "start": {"$gte": min(a for a, _ in ranges), "$lt": max(b for _, b in ranges)}},
                          {"start": 1})
        stale += [d["_id"] async for d in cursor if d["_id"] not in written
                  and any(a <= _utc(d["start"]) < b for a, b in ranges)]
    ops: list[Any] = [ReplaceOne({"_id": d["_id"]}, d, upsert=True) for d in docs]
    ops += [DeleteMany({"_id": {"$in": batch}, "tenant_id": tenant_id}) for batch in chunks(stale, IN_BATCH)]
    for batch in chunks(ops, WRITE_BATCH):
        await col.bulk_write(batch, ordered=False)


async def read(
    *, tenant_id: str, scenario_id: str, grain: str, start: datetime, end: datetime,
    fields: Collection[str] | None = None,
) -> list[dict[str, Any]]:
    """Return the documents of `grain` (a head grain, or a map grain of `family`) starting in [start, end), with
    only `fields` beside start and grain when given."""
    query = {"tenant_id": tenant_id, "scenario_id": scenario_id, "grain": grain, "start": {"$gte": start, "$lt": end}}
    projection = {"_id": 0, "start": 1, "grain": 1, **dict.fromkeys(fields, 1)} if fields is not None else None
    return await AnalyticsRollup.get_pymongo_collection().find(query, projection, batch_size=READ_BATCH).to_list(None)


async def family_docs(*, tenant_id: str, scenario_id: str, grain: str, start: datetime, end: datetime
                      ) -> list[dict[str, Any]]:
    """Return every document (heads and maps) of the buckets of `grain` starting in [start, end)."""
    docs = []
    for member in family(grain):
        docs += await read(tenant_id=tenant_id, scenario_id=scenario_id, grain=member, start=start, end=end)
    return docs


async def hours(*, tenant_id: str, scenario_id: str, start: datetime, end: datetime) -> dict[datetime, Bucket]:
    """Return the stored hour buckets in [start, end), maps included."""
    return from_documents(await family_docs(tenant_id=tenant_id, scenario_id=scenario_id, grain=HOUR_GRAIN,
                                            start=start, end=end))


async def drop_hours(*, tenant_id: str, scenario_id: str, start: datetime, end: datetime) -> None:
    """Delete the hour buckets (heads and maps) starting in [start, end): their days keep their hourly figures."""
    col = AnalyticsRollup.get_pymongo_collection()
    where = {"tenant_id": tenant_id, "scenario_id": scenario_id, "start": {"$gte": start, "$lt": end}}
    ids = [d["_id"] for grain in family(HOUR_GRAIN) async for d in col.find({**where, "grain": grain}, {"_id": 1})]
    for batch in chunks(ids, IN_BATCH):
        await col.delete_many({"_id": {"$in": batch}, "tenant_id": tenant_id})


async def remove_user(user_id: str, *, tenant_id: str, scenario_id: str, start: datetime,
                      end: datetime | None = None) -> list[datetime]:
    """Rewrite the scenario's user maps (weeks, days and hours starting in [start, end)) that name the user without
    them; return the starts of those rewritten."""
    col = AnalyticsRollup.get_pymongo_collection()
    span = {"$gte": start, **({"$lt": end} if end is not None else {})}
    needle = json.dumps(user_id, ensure_ascii=False)  # as `pack` writes it
    changed = []
    for grain in USER_GRAINS:
        cursor = col.find({"tenant_id": tenant_id, "scenario_id": scenario_id, "grain": grain, "start": span},
                          {"start": 1, "m": 1})
        async for doc in cursor:
            if needle in doc["m"] and drop_users(doc, user_id.__eq__):
                await col.update_one({"_id": doc["_id"], "tenant_id": tenant_id}, {"$set": {"m": doc["m"]}})
                changed.append(_utc(doc["start"]))
    return changed


async def first_events(user_id: str, *, tenant_id: str) -> dict[str, datetime]:
    """Return the user's first event in each scenario that recorded one."""
    cursor = AnalyticsUser.get_pymongo_collection().find({"tenant_id": tenant_id, "user_id": user_id},
                                                         {"scenario_id": 1, "first": 1})
    return {doc["scenario_id"]: _utc(doc["first"]) async for doc in cursor}


async def forget_user(user_id: str, *, tenant_id: str) -> int:
    """Delete the user's first-event records; return how many there were."""
    result = await AnalyticsUser.get_pymongo_collection().delete_many({"tenant_id": tenant_id, "user_id": user_id})
    return result.deleted_count


async def drop_scenario(*, tenant_id: str, scenario_id: str) -> int:
    """Delete every rollup and first-event record of a scenario; return how many documents went."""
    removed = 0
    for col in (AnalyticsRollup.get_pymongo_collection(), AnalyticsUser.get_pymongo_collection()):
        removed += (await col.delete_many({"tenant_id": tenant_id, "scenario_id": scenario_id})).deleted_count
    return removed
