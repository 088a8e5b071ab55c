"""Apply pending migrations once, under a lease in MongoDB, and read the data's schema version."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from importlib.metadata import PackageNotFoundError, version
from types import TracebackType

import structlog
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from domain.errors import Unavailable
from domain.ids import utcnow
from domain.migrations.base import Migration, SchemaTooNew
from domain.migrations.steps import MIGRATIONS

log = structlog.get_logger()

COLLECTION = "schema_migrations"
LOCK_ID = "lock"
LOCK_TTL_S = 60.0  # a holder that died frees the lock after this; a live one renews it every LOCK_TTL_S / 4
LOCK_WAIT_S = 900.0  # longest a process waits for another's migrations before it gives up starting
LOCK_POLL_S = 0.5


def recograph_version() -> str:
    """Return the installed recograph's version ("unknown" from a source tree that was never installed)."""
    try:
        return version("recograph")
    except PackageNotFoundError:
        return "unknown"


async def schema_version(db: AsyncDatabase) -> int:
    """Return the data's schema version: the highest migration recorded (0 when none is)."""
    cursor = db[COLLECTION].find({"number": {"$exists": True}}, {"number": 1})
    return max([int(doc["number"]) async for doc in cursor], default=0)


def check_known(found: int, migrations: Sequence[Migration], *, what: str) -> None:
    """Raise SchemaTooNew, in one line, when `found` is newer than the newest of `migrations`."""
    newest = max((m.number for m in migrations), default=0)
    if found > newest:
        raise SchemaTooNew(
            f"{what} has schema version {found}, but this recograph ({recograph_version()}) knows up to {newest}: run "
            "the recograph that wrote it, or restore the backup taken before the upgrade (docs/operations.md)"
        )


async def migrate(
    db: AsyncDatabase, *, migrations: Sequence[Migration] = MIGRATIONS, since: int | None = None,
    lock_wait_s: float = LOCK_WAIT_S,
) -> list[int]:
    """Apply the pending migrations in order, each once, under the migration lock; return the numbers applied.

    Pending: numbered above the data's version; with `since` (a restore of data at that version), every migration
    numbered above it, whatever the database recorded. Raises SchemaTooNew for data newer than `migrations`.
    """
    current = await schema_version(db)
    check_known(current, migrations, what="the data in MongoDB")
    floor = current if since is None else min(since, current)
    if not any(m.number > floor for m in migrations):
        return []  # the usual start: one read
    async with MigrationLock(db[COLLECTION], wait_s=lock_wait_s):
        current = await schema_version(db)  # another process may have applied them while we waited
        check_known(current, migrations, what="the data in MongoDB")
        floor = current if since is None else min(since, current)
        applied = []
        for migration in sorted(migrations, key=lambda m: m.number):
            if migration.number > floor:
                await _apply(db, migration)
                applied.append(migration.number)
        return applied


async def _apply(db: AsyncDatabase, migration: Migration) -> None:
    began = time.perf_counter()
    changed = await migration.apply(db)
    seconds = round(time.perf_counter() - began, 3)
    record = {"number": migration.number, "name": migration.name, "applied_at": utcnow(), "seconds": seconds,
              "changed": int(changed), "recograph": recograph_version()}
    await db[COLLECTION].replace_one({"_id": f"{migration.number:04d}"}, record, upsert=True)
    log.info("schema.migrated", number=migration.number, name=migration.name, changed=changed, seconds=seconds)


class MigrationLock:
    """The lease one process holds while it migrates: a document `{_id: "lock", owner, until}` it renews; another
    process takes it only once `until` has passed."""

    def __init__(self, collection: AsyncCollection, *, ttl_s: float = LOCK_TTL_S, wait_s: float = LOCK_WAIT_S) -> None:
        self._col = collection
        self._ttl = timedelta(seconds=ttl_s)
        self._wait_s = wait_s
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._renewal: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MigrationLock:
        deadline = time.monotonic() + self._wait_s
        while not await self._take():
            if time.monotonic() > deadline:
                holder = await self._col.find_one({"_id": LOCK_ID}) or {}
                raise Unavailable(f"another process ({holder.get('owner', 'unknown')}) has held the schema migration "
                                  f"lock for {self._wait_s:.0f} s; start again once its migrations are done")
            await asyncio.sleep(LOCK_POLL_S)
        self._renewal = asyncio.create_task(self._renew())
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._renewal is not None:
            self._renewal.cancel()
            await asyncio.gather(self._renewal, return_exceptions=True)
        await self._col.delete_one({"_id": LOCK_ID, "owner": self.owner})

    async def _take(self) -> bool:
        now = utcnow()
        lease = {"owner": self.owner, "until": now + self._ttl}
        taken = await self._col.update_one({"_id": LOCK_ID, "until": {"$lt": now}}, {"$set": lease})
        if taken.modified_count:
            return True
        try:
            await self._col.insert_one({"_id": LOCK_ID, **lease})
        except DuplicateKeyError:
            return False  # held, and not expired
        return True

    async def _renew(self) -> None:
        while True:
            await asyncio.sleep(self._ttl.total_seconds() / 4)
            await self._col.update_one({"_id": LOCK_ID, "owner": self.owner},
                                       {"$set": {"until": utcnow() + self._ttl}})
