"""Schema migrations on a real server: each pending one applied once, in order, under the lock, however many
processes start at once; data newer than the code refused in one line; a restore's migrations re-applied."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from pymongo.asynchronous.database import AsyncDatabase

from domain.errors import Unavailable
from domain.ids import utcnow
from domain.migrations import COLLECTION, MIGRATIONS, SCHEMA_VERSION, Migration, MigrationLock, SchemaTooNew, migrate
from domain.migrations import schema_version


@pytest.fixture
async def db(served) -> AsyncIterator[AsyncDatabase]:
    """A database of its own on the session's server (dropped after)."""
    database = served.runtime.mongo[f"migrations_{uuid.uuid4().hex[:8]}"]
    yield database
    await served.runtime.mongo.drop_database(database.name)


def counting(calls: list[int], *, pause_s: float = 0.0) -> tuple[Migration, ...]:
    """Two migrations that add a field to every `things` document, noting each call."""

    def step(number: int):
        async def apply(db: AsyncDatabase) -> int:
            calls.append(number)
            await asyncio.sleep(pause_s)
            result = await db["things"].update_many({f"v{number}": {"$exists": False}}, {"$set": {f"v{number}": True}})
            return result.modified_count
        return Migration(number, f"field v{number}", apply)

    return step(1), step(2)


async def test_pending_migrations_are_applied_once_in_order_and_recorded(db):
    await db["things"].insert_many([{"_id": n} for n in range(3)])
    calls: list[int] = []
    assert await migrate(db, migrations=counting(calls)) == [1, 2]
    assert calls == [1, 2]
    assert await db["things"].count_documents({"v1": True, "v2": True}) == 3
    records = await db[COLLECTION].find({"number": {"$exists": True}}).sort("number").to_list(None)
    assert [(r["_id"], r["number"], r["changed"]) for r in records] == [("0001", 1, 3), ("0002", 2, 3)]
    assert await schema_version(db) == 2
    assert await migrate(db, migrations=counting(calls)) == [] and calls == [1, 2]  # nothing pending: not run


async def test_processes_starting_together_apply_each_migration_once(db):
    calls: list[int] = []
    results = await asyncio.gather(*(migrate(db, migrations=counting(calls, pause_s=0.2)) for _ in range(4)))
    assert calls == [1, 2]  # one process applied both; the others waited for the lock, then found none pending
    assert sorted(results, key=len) == [[], [], [], [1, 2]]
    assert await db[COLLECTION].find_one({"_id": "lock"}) is None  # released


async def test_only_the_migrations_above_the_recorded_version_run(db):
    calls: list[int] = []
    await migrate(db, migrations=counting(calls)[:1])  # an older version knew only the first
    assert await migrate(db, migrations=counting(calls)) == [2]
    assert calls == [1, 2]


async def test_data_newer_than_the_code_is_refused_in_one_line(db):
    await migrate(db, migrations=counting([]))
    with pytest.raises(SchemaTooNew) as refused:
        await migrate(db, migrations=counting([])[:1])
    message = refused.value.message
    assert "schema version 2" in message and "knows up to 1" in message and "\n" not in message


async def test_a_restore_reapplies_the_migrations_newer_than_its_backup(db):
    calls: list[int] = []
    await migrate(db, migrations=counting(calls))
    await db["things"].insert_one({"_id": "restored"})  # a tenant's documents written at schema version 1
    assert await migrate(db, migrations=counting(calls), since=1) == [2]
    assert calls == [1, 2, 2]
    assert await db["things"].find_one({"_id": "restored", "v2": True}) is not None


async def test_a_lock_whose_holder_died_is_taken_once_its_lease_expires(db):
    await db[COLLECTION].insert_one({"_id": "lock", "owner": "dead:1", "until": utcnow() - timedelta(seconds=1)})
    assert await migrate(db, migrations=counting([])) == [1, 2]


async def test_a_held_lock_makes_a_starting_process_wait_then_give_up(db):
    async with MigrationLock(db[COLLECTION]):
        with pytest.raises(Unavailable, match="migration lock"):
            await migrate(db, migrations=counting([]), lock_wait_s=0.6)


async def test_the_registry_is_numbered_from_one_without_gaps():
    assert [m.number for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
