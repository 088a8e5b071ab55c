"""Items: bulk idempotent upsert, delete from a scenario, lookups and filtered listing.

An item belongs to its tenant and serves one or more of the tenant's scenarios. Writes go to MongoDB in one bulk
call; the metadata ingest needs (scenarios, categories, tags, status, duration) is mirrored into the cache so that
validating interactions never asks MongoDB per event.
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError

from domain.errors import BadInput
from domain.hotcache import HotCache, Invalidations, Revalidator
from domain.ids import check_first, decode_cursor, encode_cursor, utcnow
from domain.scenarios.service import Page, ScenarioService
from domain.windows import KeyWindows
from models.cache import Cache, CacheUnavailable, ItemMeta, meta_from_item
from models.documents import Item, composite_id

log = structlog.get_logger()

ITEM_STATUSES = ("ACTIVE", "INACTIVE")
MAX_ID = 256
MAX_LABELS = 100
MAX_ATTRIBUTES_BYTES = 64 * 1024
MAX_SEARCH_WORDS = 8
MAX_SEARCH_CHARS = 256
DUPLICATE_KEY = 11000
ITEM_TTL_S = 30.0  # how long a shown item is reused as read; other processes' changes show after it
ITEM_STALE_S = 3600.0  # how long past that it is still shown while a background read refreshes it
Written = Callable[[str, str, list[str]], Awaitable[None]]  # (tenant_id, scenario_id, item ids)


@dataclass(frozen=True, slots=True)
class ItemData:
    """An item as a client sends it."""

    id: str
    title: str | None = None
    categories: Sequence[str] = ()
    tags: Sequence[str] = ()
    attributes: Mapping[str, Any] | None = None
    published_at: datetime | None = None
    status: str = "ACTIVE"


@dataclass(frozen=True, slots=True)
class RowError:
    """A per-row error: 0-based index, the input field at fault, and why."""

    index: int
    field: str | None
    message: str


@dataclass(slots=True)
class UpsertResult:
    upserted: int = 0
    errors: list[RowError] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ItemFilter:
    category: str | None = None
    tag: str | None = None
    status: str | None = None
    published_after: datetime | None = None
    published_before: datetime | None = None
    title_prefix: str | None = None
    search: str | None = None


def validate_item(data: ItemData) -> tuple[str | None, str] | None:
    """Return (field, message) for the first problem with an item, or None when it is valid."""
    if not isinstance(data.id, str) or not data.id.strip() or len(data.id) > MAX_ID:
        return "id", f"id must be 1-{MAX_ID} characters and not blank"
    if data.title is not None and len(data.title) > 1000:
        return "title", "title must be at most 1000 characters"
    for name, labels in (("categories", data.categories), ("tags", data.tags)):
        if len(labels) > MAX_LABELS:
            return name, f"at most {MAX_LABELS} {name}"
        if any(not isinstance(v, str) or not v.strip() or len(v) > 200 for v in labels):
            return name, f"{name} must be non-blank strings of at most 200 characters"
    if data.status not in ITEM_STATUSES:
        return "status", f"status must be one of {', '.join(ITEM_STATUSES)}"
    return _validate_attributes(data.attributes)


def _validate_attributes(attributes: Mapping[str, Any] | None) -> tuple[str, str] | None:
    if attributes is None:
        return None
    if not isinstance(attributes, Mapping):
        return "attributes", "attributes must be a JSON object"
    if bad := _bad_key(attributes):
        return f"attributes.{bad}", "attribute names must not be empty or start with '$'"
    if len(json.dumps(attributes, default=str)) > MAX_ATTRIBUTES_BYTES:
        return "attributes", f"attributes must be at most {MAX_ATTRIBUTES_BYTES} bytes as JSON"
    duration = attributes.get("durationSeconds")
    if duration is not None and (isinstance(duration, bool) or not isinstance(duration, (int, float)) or duration < 0):
        return "attributes.durationSeconds", "durationSeconds must be a non-negative number"
    return None


def _bad_key(value: Any, path: str = "") -> str | None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str) or not k or k.startswith("$"):
                return f"{path}{k}"
            if bad := _bad_key(v, f"{path}{k}."):
                return bad
    elif isinstance(value, list):
        for i, v in enumerate(value):
            if bad := _bad_key(v, f"{path}{i}."):
                return bad
    return None


def _as_utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _item_fields(data: ItemData, now: datetime) -> dict[str, Any]:
    return {
        "title": data.title,
        "title_lc": data.title.lower() if data.title else None,
        "categories": list(dict.fromkeys(data.categories)),
        "tags": list(dict.fromkeys(data.tags)),
        "attributes": dict(data.attributes or {}),
        "published_at": _as_utc(data.published_at),
        "status": data.status,
        "updated_at": now,
    }


class CatalogueService:
    """Item storage scoped by tenant."""

    def __init__(
        self, cache: Cache, scenarios: ScenarioService, *, windowed_listing: bool = False,
        invalidations: Invalidations | None = None,
    ) -> None:
        """`windowed_listing`: page `list` through key windows, for a server that sorts every match before limiting
        (the embedded one; see domain/windows.py). `invalidations`: tell other processes which items changed."""
        self._cache = cache
        self._scenarios = scenarios
        self._invalidations = invalidations or Invalidations(None)
        self._invalidations.on("items", lambda tenant_id, ids: self._hot.drop((tenant_id, i) for i in ids))
        self._invalidations.on("tenant-items", lambda tenant_id, _: self.forget_cached(tenant_id=tenant_id))
        self._windows = KeyWindows(self._listing_keys) if windowed_listing else None
        # Items shown in every list: keep MongoDB off the request path. A value past its TTL is still shown while
        # a background task re-reads it (for an hour at most), so a list waits on MongoDB only for items it has
        # never shown; this process's own writes drop their items at once.
        self._hot: HotCache[Item] = HotCache(ttl_s=ITEM_TTL_S, stale_s=ITEM_STALE_S)
        self._reread = Revalidator(self._reread_items, name="items")
        self._written: list[Written] = []

    def on_written(self, handler: Written) -> None:
        """Await handler(tenant_id, scenario_id, item ids) after items of a scenario were upserted or removed from it
        (what is derived from items follows them: the two-tower vectors in the store)."""
        self._written.append(handler)

    async def upsert(self, items: Sequence[ItemData], *, tenant_id: str, scenario_id: str) -> UpsertResult:
        """Insert or update items under a scenario; bad rows are reported, good rows stored."""
        await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
        result = UpsertResult()
        now = utcnow()
        accepted: list[ItemData] = []
        seen: set[str] = set()
        for index, data in enumerate(items):
            if problem := validate_item(data):
                result.errors.append(RowError(index, *problem))
            elif data.id in seen:
                result.errors.append(RowError(index, "id", f"item {data.id!r} appears earlier in this call"))
            else:
                seen.add(data.id)
                accepted.append(data)
        if accepted:
            self._hot.drop((tenant_id, d.id) for d in accepted)
            new = await self._write(accepted, tenant_id=tenant_id, scenario_id=scenario_id, now=now)
            await self._mirror(accepted, new, tenant_id=tenant_id, scenario_id=scenario_id)
            await self._changed([d.id for d in accepted], tenant_id=tenant_id)
            await self._tell(tenant_id, scenario_id, [d.id for d in accepted])
        result.upserted = len(accepted)
        return result

    async def _write(self, accepted: list[ItemData], *, tenant_id: str, scenario_id: str, now: datetime) -> set[int]:
        """Insert all items, then upsert those that existed; return the indexes of new items.

        Inserts are an order of magnitude cheaper than upserts on the embedded server, and a catalogue is mostly
        loaded once and updated in part, so trying the insert first pays.
        """
        col = Item.get_pymongo_collection()
        docs = [
            {"_id": composite_id(tenant_id, d.id), "tenant_id": tenant_id, "item_id": d.id, "scenarios": [scenario_id],
             "created_at": now, **_item_fields(d, now)}
            for d in accepted
        ]
        try:
            await col.insert_many(docs, ordered=False)
            return set(range(len(docs)))
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != DUPLICATE_KEY for err in errors):
                raise
            existing = {err["index"] for err in errors}
        ops = [self._upsert_op(accepted[i], tenant_id, scenario_id, now) for i in sorted(existing)]
        written = await col.bulk_write(ops, ordered=False)
        # An item deleted between the insert and the upsert is created by the upsert: it is new too.
        recreated = {sorted(existing)[i] for i in written.upserted_ids}
        return set(range(len(docs))) - existing | recreated

    @staticmethod
    def _upsert_op(data: ItemData, tenant_id: str, scenario_id: str, now: datetime) -> UpdateOne:
        return UpdateOne(
            {"_id": composite_id(tenant_id, data.id)},
            {
                "$set": _item_fields(data, now),
                "$addToSet": {"scenarios": scenario_id},
                "$setOnInsert": {"tenant_id": tenant_id, "item_id": data.id, "created_at": now},
            },
            upsert=True,
        )

    async def _mirror(self, accepted: list[ItemData], new: set[int], *, tenant_id: str, scenario_id: str) -> None:
        """Copy the metadata of written items into the cache (or forget what cannot be known)."""
        try:
            known = await self._cache.item_meta([d.id for i, d in enumerate(accepted) if i not in new], tenant_id=tenant_id)
            metas, unknown = {}, []
            for i, data in enumerate(accepted):
                previous = () if i in new else known.get(data.id, ItemMeta(scenarios=())).scenarios
                if i not in new and data.id not in known:
                    unknown.append(data.id)  # other scenarios unknown here: let ingest read it through
                    continue
                doc = {"scenarios": dict.fromkeys([*previous, scenario_id]), **_item_fields(data, utcnow())}
                metas[data.id] = meta_from_item(doc)
            await self._cache.put_item_meta(metas, tenant_id=tenant_id)
            await self._cache.drop_item_meta(unknown, tenant_id=tenant_id)
        except CacheUnavailable as exc:
            log.warning("cache.unavailable", op="items.mirror", error=str(exc))

    async def delete(self, ids: Sequence[str], *, tenant_id: str, scenario_id: str) -> int:
        """Remove items from a scenario (deleting those left in none); return how many were removed."""
        await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
        col = Item.get_pymongo_collection()
        keys = [composite_id(tenant_id, i) for i in dict.fromkeys(ids)]
        self._hot.drop((tenant_id, i) for i in ids)
        result = await col.update_many(
            {"_id": {"$in": keys}, "tenant_id": tenant_id, "scenarios": scenario_id},
            {"$pull": {"scenarios": scenario_id}},
        )
        await col.delete_many({"_id": {"$in": keys}, "tenant_id": tenant_id, "scenarios": {"$size": 0}})
        try:
            await self._cache.drop_item_meta(list(ids), tenant_id=tenant_id)
        except CacheUnavailable as exc:
            log.warning("cache.unavailable", op="items.delete", error=str(exc))
        await self._changed(list(dict.fromkeys(ids)), tenant_id=tenant_id)
        await self._tell(tenant_id, scenario_id, list(dict.fromkeys(ids)))
        return result.modified_count

    async def _tell(self, tenant_id: str, scenario_id: str, ids: list[str]) -> None:
        for handler in self._written:
            await handler(tenant_id, scenario_id, ids)

    async def _changed(self, ids: list[str], *, tenant_id: str) -> None:
        """Tell serving (every process) that these items changed: the items version its item views follow, and the
        notice that drops them from other processes' caches."""
        try:
            await self._cache.items_changed(tenant_id=tenant_id)
        except CacheUnavailable as exc:  # item views catch up at their next full check
            log.warning("cache.unavailable", op="items.version", error=str(exc))
        await self._invalidations.publish("items", tenant_id, ids)

    @property
    def windowed(self) -> bool:
        """Whether `list` pages through key windows."""
        return self._windows is not None

    def forget_cached(self, *, tenant_id: str) -> None:
        """Drop the tenant's items from the in-process cache (after a bulk change such as deleting a scenario)."""
        self._hot.drop_where(lambda key: key[0] == tenant_id)

    async def forget_everywhere(self, *, tenant_id: str) -> None:
        """Drop the tenant's cached items here and in the other processes."""
        self.forget_cached(tenant_id=tenant_id)
        await self._invalidations.publish("tenant-items", tenant_id)

    async def get_many(self, ids: Sequence[str], *, tenant_id: str) -> list[Item | None]:
        """Return items in the order of ids, None for missing ones (hot cache, then one query for the items not
        held; held items past their TTL are re-read in the background)."""
        by_id: dict[str, Item] = {}
        missing: list[str] = []
        stale: list[tuple[str, str]] = []
        for item_id in dict.fromkeys(ids):
            doc, old = self._hot.lookup((tenant_id, item_id))
            if doc is None:
                missing.append(item_id)
            else:
                by_id[item_id] = doc
                if old:
                    stale.append((tenant_id, item_id))
        if missing:
            by_id.update(await self._read_items(missing, tenant_id=tenant_id))
        if stale:
            self._reread.schedule(stale)
        return [by_id.get(i) for i in ids]

    async def _read_items(self, ids: Sequence[str], *, tenant_id: str) -> dict[str, Item]:
        """Read items from MongoDB into the hot cache; return those found."""
        found = await Item.find({"_id": {"$in": [composite_id(tenant_id, i) for i in ids]}, "tenant_id": tenant_id}
                                ).to_list()
        for doc in found:
            self._hot.put((tenant_id, doc.item_id), doc)
        return {doc.item_id: doc for doc in found}

    async def _reread_items(self, keys: list[tuple[str, str]]) -> None:
        by_tenant: dict[str, list[str]] = {}
        for tenant_id, item_id in keys:
            by_tenant.setdefault(tenant_id, []).append(item_id)
        for tenant_id, ids in by_tenant.items():
            found = await self._read_items(ids, tenant_id=tenant_id)
            self._hot.drop((tenant_id, i) for i in ids if i not in found)  # deleted meanwhile

    async def metas(self, ids: Sequence[str], *, tenant_id: str) -> dict[str, ItemMeta]:
        """Return ingest metadata for the ids that exist: cache first, MongoDB for the rest."""
        wanted = list(dict.fromkeys(ids))
        try:
            found = await self._cache.item_meta(wanted, tenant_id=tenant_id)
            cache_up = True
        except CacheUnavailable:
            found, cache_up = {}, False
        missing = [i for i in wanted if i not in found]
        if missing:
            loaded = await self._load_metas(missing, tenant_id=tenant_id)
            found.update(loaded)
            if cache_up and loaded:
                try:
                    await self._cache.put_item_meta(loaded, tenant_id=tenant_id)
                except CacheUnavailable:
                    pass
        return found

    async def _load_metas(self, ids: list[str], *, tenant_id: str) -> dict[str, ItemMeta]:
        projection = {"item_id": 1, "scenarios": 1, "categories": 1, "tags": 1, "status": 1, "attributes": 1}
        cursor = Item.get_pymongo_collection().find(
            {"_id": {"$in": [composite_id(tenant_id, i) for i in ids]}, "tenant_id": tenant_id}, projection
        )
        return {doc["item_id"]: meta_from_item(doc) async for doc in cursor}

    async def list(
        self, *, tenant_id: str, scenario_id: str, filters: ItemFilter | None, first: int | None,
        after: str | None, max_first: int,
    ) -> Page:
        """Return a page of a scenario's items ordered by item id."""
        await self._scenarios.cached(scenario_id, tenant_id=tenant_id)
        limit = check_first(first, maximum=max_first)
        matching = _filter_query(_checked(filters or ItemFilter()), tenant_id=tenant_id, scenario_id=scenario_id)
        start = decode_cursor(after)
        bounds = [None] if self._windows is None else await self._windows.bounds(
            (tenant_id, scenario_id), after=start, need=limit + 1
        )
        for bound in bounds:  # the last has no bound: it alone would do, but on the embedded server it reads them all
            keys = {"$gt": start} if start is not None else {}
            if bound is not None:
                keys["$lte"] = bound
            query = {**matching, "item_id": keys} if keys else matching
            docs = await Item.find(query).sort("item_id").limit(limit + 1).to_list()
            if len(docs) > limit:
                break
        nodes = docs[:limit]
        total = lambda: Item.get_pymongo_collection().count_documents(matching)  # noqa: E731
        return Page(
            nodes=nodes, cursors=[encode_cursor(d.item_id) for d in nodes], has_next=len(docs) > limit, total=total
        )

    async def _listing_keys(self, listing: tuple[str, str]) -> list[str]:
        tenant_id, scenario_id = listing
        cursor = Item.get_pymongo_collection().find(
            {"tenant_id": tenant_id, "scenarios": scenario_id}, {"_id": 0, "item_id": 1}
        )
        return [doc["item_id"] async for doc in cursor]


def _checked(f: ItemFilter) -> ItemFilter:
    """Return the filter, or raise BadInput when its title search would cost a regex too large to run."""
    # Each search word is one lookahead scanning the whole title of every item the other fields match.
    if f.search is not None and (len(f.search) > MAX_SEARCH_CHARS or len(f.search.split()) > MAX_SEARCH_WORDS):
        raise BadInput(f"search takes at most {MAX_SEARCH_WORDS} words and {MAX_SEARCH_CHARS} characters",
                       field="filter.search")
    if f.title_prefix is not None and len(f.title_prefix) > MAX_SEARCH_CHARS:
        raise BadInput(f"titlePrefix takes at most {MAX_SEARCH_CHARS} characters", field="filter.titlePrefix")
    return f


def _filter_query(f: ItemFilter, *, tenant_id: str, scenario_id: str) -> dict[str, Any]:
    """Build one merged filter dict (the embedded server only uses indexes for merged dicts)."""
    query: dict[str, Any] = {"tenant_id": tenant_id, "scenarios": scenario_id}
    if f.category is not None:
        query["categories"] = f.category
    if f.tag is not None:
        query["tags"] = f.tag
    if f.status is not None:
        query["status"] = f.status
    published = {}
    if f.published_after is not None:
        published["$gte"] = _as_utc(f.published_after)
    if f.published_before is not None:
        published["$lt"] = _as_utc(f.published_before)
    if published:
        query["published_at"] = published
    if f.title_prefix or f.search:
        query["title_lc"] = {"$regex": _title_regex(f.title_prefix, f.search)}
    return query


def _title_regex(prefix: str | None, search: str | None) -> str:
    """Return a regex: the title starts with prefix and contains every search word, case-insensitively."""
    words = (search or "").lower().split()
    lookaheads = "".join(f"(?=.*{re.escape(w)})" for w in words)
    return "^" + lookaheads + re.escape((prefix or "").lower())
