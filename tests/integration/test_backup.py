"""Backup and restore on the embedded servers, in process: one tenant's backup holds nothing of another's, a restore
leaves other tenants as they were, a stopped restore is completed by running it again, work in flight is not
carried, and a user erased while the backup ran is left out of it."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import bson
import pytest

from domain import erasure
from domain.backup import Target, read_manifest, restore_backup, take_backup
from domain.backup.files import read_bson
from domain.catalogue import ItemData
from domain.errors import BadInput, NotFound
from domain.events import InteractionData
from domain.ids import utcnow
from domain.realtime.keys import profile_key
from models.documents import DOCUMENTS, Interaction, Job, Tenant, UserProfile
from tests.conftest import new_tenant


async def shop(served, name: str, users: int = 4) -> tuple[str, str]:
    """Create a tenant with a scenario, items and events; return (tenant id, scenario id)."""
    services = served.runtime.services
    keys = await new_tenant(served, name)
    scenario = await services.scenarios.create(tenant_id=keys.tenant_id, name="shop", template="VLOG", config=None)
    items = [ItemData(id=f"i{n}", title=f"Item {n}", categories=["a" if n % 2 else "b"]) for n in range(6)]
    await services.catalogue.upsert(items, tenant_id=keys.tenant_id, scenario_id=scenario.id)
    events = [InteractionData(scenario_id=scenario.id, user_id=f"u{u}", item_id=f"i{(u + k) % 6}", type="VIEW",
                              event_id=f"{name}-{u}-{k}") for u in range(users) for k in range(3)]
    assert (await services.events.record(events, tenant_id=keys.tenant_id)).accepted == len(events)
    await snapshotted(keys.tenant_id, users)
    return keys.tenant_id, scenario.id


async def snapshotted(tenant_id: str, users: int, timeout_s: float = 20.0) -> None:
    """Wait until the session's consumer has written the users' profile snapshots (it flushes every second)."""
    deadline = time.monotonic() + timeout_s
    while await UserProfile.get_pymongo_collection().count_documents({"tenant_id": tenant_id}) < users:
        assert time.monotonic() < deadline, "the consumer wrote no profile snapshots"
        await asyncio.sleep(0.1)


def documents(root: Path, tenant_id: str, collection: str) -> list[dict]:
    path = root / f"tenants/{tenant_id}/{collection}.bson"
    return [bson.decode(raw.raw) for batch in read_bson(path) for raw in batch] if path.exists() else []


def target(served) -> Target:
    runtime = served.runtime
    return Target(db=runtime.mongo[served.settings.mongo.database], redis=runtime.cache.client,
                  realtime=runtime.services.realtime, vectors=runtime.vectors,
                  models_dir=runtime.models_dir)


async def counts(tenant_id: str) -> dict[str, int]:
    out = {}
    for document in DOCUMENTS:
        query = {"_id": tenant_id} if document is Tenant else {"tenant_id": tenant_id}
        out[document.Settings.name] = await document.get_pymongo_collection().count_documents(query)
    return out


async def forget(tenant_id: str, served) -> None:
    """Lose a tenant: its documents and its Redis keys (a restore's leftovers look like this half of it)."""
    for document in DOCUMENTS:
        query = {"_id": tenant_id} if document is Tenant else {"tenant_id": tenant_id}
        await document.get_pymongo_collection().delete_many(query)
    redis = served.runtime.cache.client
    keys = [k async for k in redis.scan_iter(match=f"t:{{{tenant_id}}}:*")]
    if keys:
        await redis.delete(*keys)


async def test_a_tenant_backup_holds_only_that_tenant_and_its_restore_leaves_others_alone(served, tmp_path):
    mine, _ = await shop(served, "backup-mine")
    theirs, _ = await shop(served, "backup-theirs", users=2)
    theirs_before = await counts(theirs)
    mine_before = await counts(mine)
    manifest = await take_backup(tmp_path / "b", tenant_id=mine, models_dir=served.runtime.models_dir)
    assert [t.id for t in manifest.tenants] == [mine]
    for document in DOCUMENTS:
        found = documents(tmp_path / "b", mine, document.Settings.name)
        assert all(d.get("tenant_id", d["_id"]) == mine for d in found), document.Settings.name
    assert not (tmp_path / "b" / "tenants" / theirs).exists()
    assert len(documents(tmp_path / "b", mine, "interactions")) == mine_before["interactions"] == 12

    with pytest.raises(BadInput, match="already holds tenant"):
        await restore_backup(tmp_path / "b", target(served))
    await forget(mine, served)
    done = await restore_backup(tmp_path / "b", target(served))
    assert done.documents == sum(manifest.tenants[0].counts.values()) and done.events_replayed == 12
    after = await counts(mine)
    assert {k: v for k, v in after.items() if k != "user_profiles"} == \
        {k: v for k, v in mine_before.items() if k != "user_profiles"}
    assert await counts(theirs) == theirs_before
    profile = await served.runtime.cache.client.hgetall(profile_key(mine, "u1"))
    assert int(profile[b"n"]) == 3  # the hot state replayed from the restored events


async def test_a_restore_stopped_part_way_is_completed_by_running_it_again(served, tmp_path):
    mine, _ = await shop(served, "backup-again")
    before = await counts(mine)
    await take_backup(tmp_path / "b", tenant_id=mine, models_dir=served.runtime.models_dir)
    await forget(mine, served)
    # What a restore killed before the tenant documents (written last) leaves: some events, some Redis state.
    await Interaction.get_pymongo_collection().insert_one(documents(tmp_path / "b", mine, "interactions")[0])
    await served.runtime.cache.client.hset(profile_key(mine, "u1"), "n", 99)
    await restore_backup(tmp_path / "b", target(served))
    assert await counts(mine) == {**before, "user_profiles": (await counts(mine))["user_profiles"]}
    assert int((await served.runtime.cache.client.hgetall(profile_key(mine, "u1")))[b"n"]) == 3


async def test_work_in_flight_is_not_carried_into_a_backup(served, tmp_path):
    mine, scenario = await shop(served, "backup-jobs", users=1)
    now = utcnow()
    await Job.get_pymongo_collection().insert_many([
        {"_id": "job-running", "tenant_id": mine, "kind": "train", "scenario_id": scenario, "status": "RUNNING",
         "key": f"train:{scenario}", "active": True, "created_at": now},
        {"_id": "job-done", "tenant_id": mine, "kind": "train", "scenario_id": scenario, "status": "SUCCEEDED",
         "active": False, "created_at": now},
    ])
    await take_backup(tmp_path / "b", tenant_id=mine, models_dir=served.runtime.models_dir)
    jobs = {d["_id"]: d for d in documents(tmp_path / "b", mine, "jobs")}
    assert jobs["job-running"]["status"] == "FAILED" and jobs["job-running"]["active"] is False
    assert "backup" in jobs["job-running"]["error"]
    assert jobs["job-done"]["status"] == "SUCCEEDED"


async def test_a_user_erased_while_the_backup_ran_is_left_out(served, tmp_path):
    mine, _ = await shop(served, "backup-erased")
    await erasure.record("u2", tenant_id=mine)  # an erasure under way: recorded, its deletes not done yet
    manifest = await take_backup(tmp_path / "b", tenant_id=mine, models_dir=served.runtime.models_dir)
    assert manifest.scrubbed_users == 1
    users = {d["user_id"] for d in documents(tmp_path / "b", mine, "interactions")}
    assert users == {"u0", "u1", "u3"}
    assert len(documents(tmp_path / "b", mine, "erasures")) == 1  # the record stays: in-flight events are skipped
    assert read_manifest(tmp_path / "b").tenants[0].counts["interactions"] == 9  # checksums and counts rewritten


async def test_a_backup_of_a_tenant_that_does_not_exist_is_refused_and_leaves_nothing(served, tmp_path):
    with pytest.raises(NotFound, match="no tenant"):
        await take_backup(tmp_path / "b", tenant_id="t_nobody", models_dir=served.runtime.models_dir)
    assert list(tmp_path.iterdir()) == []


async def test_bounded_reads_meet_every_document_once(served, tmp_path, monkeypatch):
    from domain.backup import parts

    monkeypatch.setattr(parts, "RANGE", 2)  # split the items and the per-user reads every 2 keys
    monkeypatch.setattr(parts, "WINDOW_TARGET", 2)  # and the event windows at about 2 events
    mine, _ = await shop(served, "backup-ranges", users=5)
    before = await counts(mine)
    await take_backup(tmp_path / "b", tenant_id=mine, models_dir=served.runtime.models_dir,
                      redis=served.runtime.cache.client)
    for collection in ("items", "interactions", "user_profiles", "analytics_users"):
        ids = [d["_id"] for d in documents(tmp_path / "b", mine, collection)]
        assert len(ids) == len(set(ids)) == before[collection], collection
