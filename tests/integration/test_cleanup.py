"""CLEANUP on the embedded MongoDB and Redis: old artifacts, finished job records, interactions past the scenario's
retention, and seen sets left by deleted scenarios go; everything else stays."""

from __future__ import annotations

from datetime import timedelta

import pytest

from domain.ids import new_id, utcnow
from domain.maintenance import CleanupPolicy, MaintenanceService
from models.cache import tenant_key
from models.documents import Interaction, Job, ModelVersion


async def _ignore(fraction: float, stage: str) -> None:
    return None


@pytest.fixture
async def tenant(served) -> str:
    return new_id("tn")


async def scenario(served, tenant_id: str, name: str, days: int | None) -> str:
    config = {"retention": {"interactionsDays": days}}
    created = await served.runtime.services.scenarios.create(
        tenant_id=tenant_id, name=name, template="CUSTOM", config=config
    )
    return created.id


async def store_events(tenant_id: str, sid: str, ages_days: list[float]) -> None:
    now = utcnow()
    await Interaction.insert_many([
        Interaction(id=new_id("ev"), tenant_id=tenant_id, scenario_id=sid, user_id="u1", item_id="i1", type="VIEW",
                    ts=now - timedelta(days=age), event_id=new_id("e"), received_at=now)
        for age in ages_days
    ])


async def store_job(tenant_id: str, sid: str, *, finished_days_ago: float | None) -> str:
    now = utcnow()
    job = Job(id=new_id("job"), tenant_id=tenant_id, kind="train", scenario_id=sid,
              status="SUCCEEDED" if finished_days_ago is not None else "RUNNING",
              active=finished_days_ago is None, key=f"train:{sid}" if finished_days_ago is None else None,
              created_at=now - timedelta(days=(finished_days_ago or 0) + 1),
              finished_at=now - timedelta(days=finished_days_ago) if finished_days_ago is not None else None)
    await job.insert()
    return job.id


async def store_versions(tenant_id: str, sid: str, models_dir, statuses: list[str]) -> list[str]:
    artifacts = []
    for number, status in enumerate(statuses, start=1):
        artifact = f"{tenant_id}/{sid}/v{number}"
        (models_dir / artifact).mkdir(parents=True)
        (models_dir / artifact / "meta.json").write_text("{}")
        await ModelVersion(id=new_id("mv"), tenant_id=tenant_id, scenario_id=sid, kind="scenario", version=number,
                           status=status, aliases=["champion"] if status == "READY" else [], artifact=artifact,
                           created_at=utcnow(), applied_at=utcnow()).insert()
        artifacts.append(artifact)
    return artifacts


async def test_cleanup_removes_only_what_outlived_its_use(served, tenant, tmp_path):
    sid = await scenario(served, tenant, "kept-30-days", 30)
    other = await scenario(served, tenant, "forever", None)
    await store_events(tenant, sid, [45, 32, 29, 1])  # kept: within 30 days of the newest (1 day old)
    await store_events(tenant, other, [400])
    old_job = await store_job(tenant, sid, finished_days_ago=45)
    recent_job = await store_job(tenant, sid, finished_days_ago=2)
    running = await store_job(tenant, sid, finished_days_ago=None)
    other_job = await store_job(tenant, other, finished_days_ago=45)
    artifacts = await store_versions(tenant, sid, tmp_path, ["RETIRED"] * 4 + ["READY"])
    redis = served.runtime.cache.client
    gone = new_id("sc")  # a scenario deleted earlier: its seen sets linger without a TTL
    await redis.sadd(tenant_key(tenant, "seen", gone, "u1"), "i1")
    await redis.sadd(tenant_key(tenant, "seen", gone, "u2"), "i1")
    await redis.sadd(tenant_key(tenant, "seen", "sc_expiring", "u1"), "i1")
    await redis.expire(tenant_key(tenant, "seen", "sc_expiring", "u1"), 600)
    await redis.sadd(tenant_key(tenant, "seen", sid, "u1"), "i1")
    elsewhere = new_id("tn")
    await redis.sadd(tenant_key(elsewhere, "seen", gone, "u1"), "i1")  # another tenant's keys are not looked at

    service = MaintenanceService(served.runtime.cache, models_dir=tmp_path,
                                 policy=CleanupPolicy(keep_finished_jobs_days=30, keep_retired_models=2))
    result = await service.cleanup(tenant_id=tenant, scenario_id=sid, report=_ignore)

    assert result == {"artifactsDeleted": 2, "jobsDeleted": 1, "interactionsDeleted": 2, "retentionDays": 30,
                      "redisKeysDeleted": 2}
    left = await Interaction.find({"tenant_id": tenant, "scenario_id": sid}).to_list()
    assert sorted((utcnow() - e.ts.replace(tzinfo=utcnow().tzinfo)).days for e in left) == [1, 29]
    assert await Interaction.find({"tenant_id": tenant, "scenario_id": other}).count() == 1  # no retention set
    assert {j.id for j in await Job.find({"tenant_id": tenant}).to_list()} == {recent_job, running, other_job}
    assert old_job not in {j.id for j in await Job.find({"tenant_id": tenant}).to_list()}
    on_disk = [a for a in artifacts if (tmp_path / a).exists()]
    assert on_disk == artifacts[2:]  # the two oldest retired went; the newest two retired and the champion stay
    assert await redis.exists(tenant_key(tenant, "seen", gone, "u1"), tenant_key(tenant, "seen", gone, "u2")) == 0
    assert await redis.exists(tenant_key(tenant, "seen", "sc_expiring", "u1"), tenant_key(tenant, "seen", sid, "u1"),
                              tenant_key(elsewhere, "seen", gone, "u1")) == 3
    again = await service.cleanup(tenant_id=tenant, scenario_id=sid, report=_ignore)
    assert again == {"artifactsDeleted": 0, "jobsDeleted": 0, "interactionsDeleted": 0, "retentionDays": 30,
                     "redisKeysDeleted": 0}


async def test_retention_counts_from_the_newest_event_so_an_import_is_not_wiped(served, tenant, tmp_path):
    sid = await scenario(served, tenant, "imported", 30)
    await store_events(tenant, sid, [400, 415, 431, 500])  # a historical import: the newest is 400 days old
    service = MaintenanceService(served.runtime.cache, models_dir=tmp_path)
    result = await service.cleanup(tenant_id=tenant, scenario_id=sid, report=_ignore)
    assert result["interactionsDeleted"] == 2
    left = await Interaction.find({"tenant_id": tenant, "scenario_id": sid}).to_list()
    assert sorted((utcnow() - e.ts.replace(tzinfo=utcnow().tzinfo)).days for e in left) == [400, 415]


async def test_cleanup_of_a_missing_scenario_is_not_found(served, tenant, tmp_path):
    from domain.errors import NotFound

    service = MaintenanceService(served.runtime.cache, models_dir=tmp_path)
    with pytest.raises(NotFound):
        await service.cleanup(tenant_id=tenant, scenario_id="sc_missing", report=_ignore)


class CountingScans:
    """A Redis client that counts SCAN walks and passes everything through."""

    def __init__(self, client) -> None:  # noqa: ANN001
        self._client, self.scans = client, 0

    def scan_iter(self, *args, **kwargs):  # noqa: ANN002, ANN003, ANN201
        self.scans += 1
        return self._client.scan_iter(*args, **kwargs)

    def __getattr__(self, name: str):  # noqa: ANN204
        return getattr(self._client, name)


async def test_cleanup_scans_the_keyspace_once_per_tenant_not_once_per_scenario(served, tenant, tmp_path):
    from types import SimpleNamespace

    scenarios = [await scenario(served, tenant, f"s{n}", None) for n in range(3)]
    redis = CountingScans(served.runtime.cache.client)
    service = MaintenanceService(SimpleNamespace(client=redis), models_dir=tmp_path)
    gone = new_id("sc")
    await redis.sadd(tenant_key(tenant, "seen", gone, "u1"), "i1")
    results = [await service.cleanup(tenant_id=tenant, scenario_id=sid, report=_ignore) for sid in scenarios]
    assert [r["redisKeysDeleted"] for r in results] == [1, 0, 0]
    assert redis.scans == 1
    other = new_id("tn")  # another tenant's cleanup still scans for its own keys
    other_sid = await scenario(served, other, "o", None)
    await service.cleanup(tenant_id=other, scenario_id=other_sid, report=_ignore)
    assert redis.scans == 2
