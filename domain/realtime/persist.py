"""Write what the consumer keeps hot to MongoDB in batches: profile snapshots and served pages (impressions).

Both writes are idempotent (profiles are `$set` from the hot state, impressions are keyed by request id), so a
batch written twice, or a flush interrupted and retried, changes nothing.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import structlog
from pymongo import UpdateOne
from pymongo.errors import BulkWriteError, PyMongoError
from redis import asyncio as aioredis

from domain.realtime.hotstate import HotProfile, read_hot
from domain.realtime.keys import dirty_key
from domain.realtime.stream import StreamImpression
from models.documents import Impression, UserProfile, composite_id

log = structlog.get_logger()
SNAPSHOT_BATCH = 500  # users per bulk write
SNAPSHOT_LIMIT = 5000  # users per flush and tenant: a backlog of dirty profiles waits for the next flushes
# Profiles the consumer's periodic flush writes per second and tenant. A snapshot is a durable copy of the hot state
# (the stored events are the record of truth, and a PROFILES job rebuilds from them), so it may lag. The embedded
# MongoDB upserts ~1,500 documents a second and also stores every event: under 1,000 events/s from distinct users,
# 400 snapshots a second still held ingest back to ~800 events/s. Redis holds the live profile; the snapshots
# catch up when the load drops.
SNAPSHOT_RATE = 100
IMPRESSION_BATCH = 2000  # pages per insert
DUPLICATE_KEY = 11000


def snapshot_update(user_id: str, hot: HotProfile, *, tenant_id: str) -> UpdateOne:
    """Return the upsert that makes a user's MongoDB profile equal to their hot state."""
    return UpdateOne(
        {"_id": composite_id(tenant_id, user_id)},
        {
            "$set": {
                "tenant_id": tenant_id, "user_id": user_id, "interaction_count": hot.applied,
                "counts_by_type": hot.counts_by_type, "counts_by_scenario": hot.counts_by_scenario,
                "recent": list(reversed(hot.recent)), "first_seen": hot.first_seen, "last_seen": hot.last_seen,
                "active_hours": {str(h): n for h, n in hot.active_hours.items()},
            }
        },
        upsert=True,
    )


def impression_document(tenant_id: str, page: StreamImpression) -> dict[str, Any]:
    """Return the stored form of one served page."""
    return {
        "_id": composite_id(tenant_id, page.request_id), "tenant_id": tenant_id, "scenario_id": page.scenario_id,
        "user_id": page.user_id, "request_id": page.request_id, "variant": page.variant,
        "experiment_id": page.experiment,
        "items": [{"i": item, "s": list(sources)} for item, sources in page.items],
        "served_at": datetime.fromtimestamp(page.served_ms / 1000, UTC),
    }


class MongoWriter:
    """Buffer served pages and snapshot dirty profiles; `flush` writes both."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._r = client
        self._pages: list[dict[str, Any]] = []
        self._tenants: set[str] = set()

    def add(self, tenant_id: str, pages: Iterable[StreamImpression]) -> None:
        """Queue served pages and note that the tenant's profiles may have moved."""
        self._pages.extend(impression_document(tenant_id, p) for p in pages)
        self._tenants.add(tenant_id)

    def touched(self, tenant_id: str) -> None:
        """Note that the tenant's profiles may have moved."""
        self._tenants.add(tenant_id)

    @property
    def backlog(self) -> int:
        """Return how many served pages wait to be written."""
        return len(self._pages)

    async def flush(self, limit: int = SNAPSHOT_LIMIT) -> int:
        """Write queued pages and up to `limit` dirty profiles per tenant; return how many documents were written."""
        written = await self._flush_pages()
        tenants, self._tenants = self._tenants, set()
        for tenant_id in tenants:
            written += await self.snapshot(tenant_id, limit)
        return written

    async def _flush_pages(self) -> int:
        pages, self._pages = self._pages, []
        for start in range(0, len(pages), IMPRESSION_BATCH):
            chunk = pages[start : start + IMPRESSION_BATCH]
            try:
                await Impression.get_pymongo_collection().insert_many(chunk, ordered=False)
            except BulkWriteError as exc:
                if any(e.get("code") != DUPLICATE_KEY for e in exc.details.get("writeErrors", [])):
                    raise
            except PyMongoError:
                self._pages = pages[start:] + self._pages  # kept for the next flush
                raise
        return len(pages)

    async def snapshot(self, tenant_id: str, limit: int = SNAPSHOT_LIMIT) -> int:
        """Write the MongoDB snapshot of up to `limit` of the tenant's dirty profiles; return how many were written
        (the tenant stays due for the next flush while some are left)."""
        written = 0
        while written < limit and (users := [u.decode() if isinstance(u, bytes) else u
                                             for u in await self._r.spop(dirty_key(tenant_id), min(SNAPSHOT_BATCH, limit - written)) or []]):
            hot = await read_hot(self._r, users, tenant_id=tenant_id)
            ops = [snapshot_update(u, h, tenant_id=tenant_id) for u, h in hot.items()]
            try:
                if ops:
                    await UserProfile.get_pymongo_collection().bulk_write(ops, ordered=False)
            except PyMongoError:
                await self._r.sadd(dirty_key(tenant_id), *users)  # snapshot them on the next flush
                raise
            written += len(ops)
        if written >= limit:
            self._tenants.add(tenant_id)
        return written
