"""Jobs over GraphQL: runJob for every kind through the in-process arq worker, the `jobs` connection, cancelJob on
queued, running and finished jobs, access rules, and job metrics at /metrics."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx
import numpy as np
import pytest

from domain.learning.model import ScenarioModel
from domain.learning.service import TrainingService
from domain.learning.versions import promote
from domain.maintenance import MaintenanceService
from models.documents import Interaction, ModelVersion
from tests.conftest import METRICS_AUTH, new_tenant
from tests.e2e.test_training import CREATE, RECORD, UPSERT, active_versions, error, shop, train

pytestmark = pytest.mark.slow

RUN = """mutation($s: ID!, $k: JobKind!) {
  runJob(scenarioId: $s, kind: $k) { id kind status scenarioId timeLimitSeconds } }"""
CANCEL = "mutation($id: ID!) { cancelJob(id: $id) { id status finishedAt error } }"
JOB = """query($id: ID!) { job(id: $id) { id kind status progress stage attempts error createdAt startedAt finishedAt
  durationSeconds result scenario { id name } } }"""
JOBS = """query($s: ID, $status: JobStatus, $kind: JobKind, $first: Int, $after: String) {
  jobs(scenarioId: $s, status: $status, kind: $kind, first: $first, after: $after) {
    edges { cursor node { id kind status scenarioId } } pageInfo { hasNextPage endCursor } totalCount } }"""


async def finished(gql, key: str, job_id: str, timeout_s: float = 60.0) -> dict:
    """Poll job(id) until it is no longer QUEUED or RUNNING."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = (await gql.data(JOB, {"id": job_id}, key=key))["job"]
        if job["status"] not in ("QUEUED", "RUNNING"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish within {timeout_s} s: {job}")


async def run(gql, key: str, sid: str, kind: str) -> dict:
    job = (await gql.data(RUN, {"s": sid, "k": kind}, key=key))["runJob"]
    assert job["kind"] == kind and job["scenarioId"] == sid and job["timeLimitSeconds"] > 0
    return await finished(gql, key, job["id"])


@pytest.fixture(scope="module")
async def owner(served):
    return await new_tenant(served, "jobs-owner")


@pytest.fixture(scope="module")
async def trained(served, gql, owner) -> str:
    sid = await shop(gql, owner.admin, "jobs-feed")
    assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"
    return sid


async def test_similarity_refits_item_cf_and_content_over_the_served_model_and_swaps(served, gql, owner, trained):
    before = (await active_versions(owner.tenant_id, trained))[0]
    registry = served.runtime.registry
    served_before = await registry.get(owner.tenant_id, trained)  # loaded, so the swap replaces it
    start = datetime.now(UTC) - timedelta(days=3)
    events = [{"scenarioId": trained, "userId": f"u{u}", "itemId": item, "type": "LIKE",
               "timestamp": (start + timedelta(minutes=u)).isoformat()} for u in range(10) for item in ("v1", "v2")]
    assert (await gql.data(RECORD, {"events": events}, key=owner.admin))["recordInteractions"]["accepted"] == 20
    job = await run(gql, owner.admin, trained, "SIMILARITY")
    assert job["status"] == "SUCCEEDED" and job["attempts"] == 1, job
    result = job["result"]
    assert result["version"] == before + 1 and result["basedOn"] == before
    assert result["refitted"] == ["item_cf", "content"] and result["interactions"] == 340  # read afresh
    assert await active_versions(owner.tenant_id, trained) == [before + 1]
    assert registry.version(owner.tenant_id, trained) == before + 1
    assert (await registry.get(owner.tenant_id, trained)) is not served_before
    docs = {d.version: d for d in await ModelVersion.find({"tenant_id": owner.tenant_id, "scenario_id": trained,
                                                            "version": {"$in": [before, before + 1]}}).to_list()}
    old, new = (ScenarioModel.load(served.runtime.models_dir / docs[v].artifact) for v in (before, before + 1))
    assert new.catalogue.item_ids == old.catalogue.item_ids  # the same index space
    assert np.array_equal(new.ease.weights, old.ease.weights) and np.array_equal(new.popularity, old.popularity)
    assert new.info["basedOn"] == before and new.content is not None
    v1, v2 = (new.catalogue.index[i] for i in ("v1", "v2"))
    assert new.item_cf.neighbors[v1][0] == v2 != old.item_cf.neighbors[v1][0]  # the new co-occurrences count
    assert docs[before + 1].spaces["content"] != docs[before].spaces["content"]  # new vectors beside the old
    space = docs[before + 1].spaces["content"]
    assert await served.runtime.vectors.count(space, tenant_id=owner.tenant_id) > 0


async def test_similarity_of_a_scenario_never_trained_has_nothing_to_refresh(gql, owner):
    sid = (await gql.data(CREATE, {"input": {"name": "untrained", "template": "VLOG"}}, key=owner.admin))
    sid = sid["createScenario"]["id"]
    job = await run(gql, owner.admin, sid, "SIMILARITY")
    assert job["status"] == "SUCCEEDED" and "no trained model" in job["result"]["skipped"]
    assert await active_versions(owner.tenant_id, sid) == []


async def test_candidates_warm_every_recently_active_user(gql, owner, trained):
    job = await run(gql, owner.admin, trained, "CANDIDATES")
    assert job["status"] == "SUCCEEDED", job
    assert job["result"] == {"activeUsers": 40, "warmed": 40, "failed": 0}  # all 40 within 24 h of the newest event
    assert job["progress"] == 1.0 and job["scenario"] == {"id": trained, "name": "jobs-feed"}


async def test_cleanup_runs_and_reports_what_it_removed(gql, owner, trained):
    job = await run(gql, owner.admin, trained, "CLEANUP")
    assert job["status"] == "SUCCEEDED", job
    assert job["result"]["retentionDays"] == 180  # the VLOG template's retention
    assert job["result"]["interactionsDeleted"] == 0 and job["result"]["jobsDeleted"] == 0


async def test_profiles_rebuild_replays_the_scenarios_events(served, gql, owner, trained):
    realtime = getattr(served.runtime.services, "realtime", None)
    if realtime is None or not hasattr(realtime, "rebuild"):
        pytest.skip("services.realtime (with rebuild) does not exist yet: its colleague is building it")
    job = await run(gql, owner.admin, trained, "PROFILES")
    assert job["status"] == "SUCCEEDED", job
    stored = await Interaction.find({"tenant_id": owner.tenant_id, "scenario_id": trained}).count()
    assert job["result"]["eventsReplayed"] == stored


async def test_jobs_lists_newest_first_with_filters_and_pages(served, gql, owner, trained):
    other = await shop(gql, owner.admin, "jobs-other", users=5, items=10)
    made = [(await gql.data(RUN, {"s": sid, "k": "CLEANUP"}, key=owner.admin))["runJob"]["id"]
            for sid in (trained, other)]
    for job_id in made:
        await finished(gql, owner.admin, job_id)
    page = (await gql.data(JOBS, {"first": 2}, key=owner.admin))["jobs"]
    assert [e["node"]["id"] for e in page["edges"]] == made[::-1] and page["pageInfo"]["hasNextPage"]
    total = page["totalCount"]
    rest = (await gql.data(JOBS, {"first": 200, "after": page["pageInfo"]["endCursor"]}, key=owner.admin))["jobs"]
    assert len(rest["edges"]) == total - 2 and not rest["pageInfo"]["hasNextPage"]
    created = [e["node"]["id"] for e in page["edges"] + rest["edges"]]
    assert created == sorted(created, reverse=True)  # ids sort by creation time: newest first
    mine = (await gql.data(JOBS, {"s": other, "first": 50}, key=owner.admin))["jobs"]
    assert {e["node"]["scenarioId"] for e in mine["edges"]} == {other} and mine["totalCount"] == 1
    kinds = (await gql.data(JOBS, {"kind": "TRAIN", "first": 50}, key=owner.admin))["jobs"]
    assert kinds["edges"] and {e["node"]["kind"] for e in kinds["edges"]} == {"TRAIN"}
    done = (await gql.data(JOBS, {"status": "SUCCEEDED", "s": trained, "first": 50}, key=owner.admin))["jobs"]
    assert {e["node"]["status"] for e in done["edges"]} == {"SUCCEEDED"}


async def test_jobs_are_tenant_scoped_and_need_the_right_key(served, gql, owner, trained):
    stranger = await new_tenant(served, "jobs-stranger")
    assert (await gql.data(JOBS, {"first": 50}, key=stranger.admin))["jobs"]["edges"] == []
    refused = error(await gql(JOBS, {"s": trained}, key=stranger.admin))
    assert refused["extensions"] == {"code": "NOT_FOUND", "field": "scenarioId"}
    foreign = error(await gql(RUN, {"s": trained, "k": "CLEANUP"}, key=stranger.admin))
    assert foreign["extensions"] == {"code": "NOT_FOUND", "field": "scenarioId"}
    assert error(await gql(RUN, {"s": trained, "k": "CLEANUP"}, key=owner.public))["extensions"]["code"] == "FORBIDDEN"
    assert error(await gql(JOBS, {}, key=owner.public))["extensions"]["code"] == "FORBIDDEN"
    assert (await gql.data(JOBS, {"first": 1}, key=owner.gateway))["jobs"]["edges"]  # gateways read
    job_id = (await gql.data(JOBS, {"first": 1}, key=owner.admin))["jobs"]["edges"][0]["node"]["id"]
    assert error(await gql(CANCEL, {"id": job_id}, key=stranger.admin))["extensions"] == {"code": "NOT_FOUND",
                                                                                           "field": "id"}
    assert error(await gql(CANCEL, {"id": job_id}, key=owner.gateway))["extensions"]["code"] == "FORBIDDEN"


async def test_cancelling_a_queued_job_means_it_never_runs(served, gql, owner, trained):
    jobs = served.runtime.services.jobs
    queued = await jobs.create("cleanup", tenant_id=owner.tenant_id, scenario_id=trained)  # recorded, not yet queued
    cancelled = (await gql.data(CANCEL, {"id": queued.id}, key=owner.admin))["cancelJob"]
    assert cancelled["status"] == "CANCELLED" and cancelled["finishedAt"]
    await served.runtime.arq.enqueue_job("maintenance.cleanup", owner.tenant_id, trained, queued.id, _job_id=queued.id)
    await asyncio.sleep(1.5)  # the worker polls every 0.5 s: it would have started it
    job = (await gql.data(JOB, {"id": queued.id}, key=owner.admin))["job"]
    assert job["status"] == "CANCELLED" and job["attempts"] == 0 and job["startedAt"] is None


async def test_cancelling_a_running_job_stops_its_function(served, gql, owner, trained, monkeypatch):
    stopped, started = asyncio.Event(), asyncio.Event()

    async def slow(self, *, tenant_id, scenario_id, report):
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return {}

    monkeypatch.setattr(MaintenanceService, "cleanup", slow)
    job = (await gql.data(RUN, {"s": trained, "k": "CLEANUP"}, key=owner.admin))["runJob"]
    await asyncio.wait_for(started.wait(), 10)
    assert (await gql.data(JOB, {"id": job["id"]}, key=owner.admin))["job"]["status"] == "RUNNING"
    cancelled = (await gql.data(CANCEL, {"id": job["id"]}, key=owner.admin))["cancelJob"]
    assert cancelled["status"] == "CANCELLED"
    await asyncio.wait_for(stopped.wait(), 5)  # arq's abort reached the running function
    await asyncio.sleep(0.3)
    final = (await gql.data(JOB, {"id": job["id"]}, key=owner.admin))["job"]
    assert final["status"] == "CANCELLED" and final["attempts"] == 1 and final["finishedAt"]
    again = (await gql.data(RUN, {"s": trained, "k": "CLEANUP"}, key=owner.admin))["runJob"]
    assert again["id"] != job["id"]  # the lock was released
    monkeypatch.undo()
    assert (await finished(gql, owner.admin, again["id"]))["status"] == "SUCCEEDED"


async def test_a_finished_job_cannot_be_cancelled(gql, owner, trained):
    job = await run(gql, owner.admin, trained, "CLEANUP")
    refused = error(await gql(CANCEL, {"id": job["id"]}, key=owner.admin))
    assert refused["extensions"] == {"code": "BAD_USER_INPUT", "field": "id"} and "SUCCEEDED" in refused["message"]


async def test_job_durations_and_failures_are_exported(served, gql, owner, trained):
    sid = (await gql.data(CREATE, {"input": {"name": "gone-soon", "template": "CUSTOM"}}, key=owner.admin))
    sid = sid["createScenario"]["id"]
    await gql.data(UPSERT, {"s": sid, "items": [{"id": "x1", "title": "X"}]}, key=owner.admin)
    ok = await run(gql, owner.admin, sid, "CLEANUP")
    assert ok["status"] == "SUCCEEDED"
    doomed = await served.runtime.services.jobs.create("cleanup", tenant_id=owner.tenant_id, scenario_id="sc_gone")
    await served.runtime.arq.enqueue_job("maintenance.cleanup", owner.tenant_id, "sc_gone", doomed.id,
                                         _job_id=doomed.id)
    failed = await finished(gql, owner.admin, doomed.id)
    assert failed["status"] == "FAILED" and "no longer exists" in failed["error"]
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{served.url}/metrics", headers=METRICS_AUTH)).text
    assert 'recograph_job_duration_seconds_count{kind="cleanup",outcome="succeeded"}' in text
    assert 'recograph_job_failures_total{kind="cleanup",outcome="failed"}' in text


async def test_similarity_over_a_model_replaced_meanwhile_keeps_the_newer_one(served, gql, owner, monkeypatch):
    sid = await shop(gql, owner.admin, "raced", users=10, items=20)
    assert (await train(gql, owner.admin, sid))["result"]["version"] == 1
    original = TrainingService._store_vectors

    async def a_training_finishes_meanwhile(self, version, data, embeddings):
        spaces = await original(self, version, data, embeddings)
        base = await ModelVersion.find_one({"tenant_id": owner.tenant_id, "scenario_id": sid, "version": 1})
        newer = base.model_copy(update={"id": f"{base.id}x", "version": version.version + 1, "job_id": "job_other"})
        await newer.insert()
        await promote(newer)
        return spaces

    monkeypatch.setattr(TrainingService, "_store_vectors", a_training_finishes_meanwhile)
    job = await run(gql, owner.admin, sid, "SIMILARITY")
    assert job["status"] == "SUCCEEDED" and "another version became champion" in job["result"]["skipped"], job
    built = await ModelVersion.find({"tenant_id": owner.tenant_id, "scenario_id": sid}).sort("version").to_list()
    assert [(v.version, v.status) for v in built] == [(1, "RETIRED"), (2, "FAILED"), (3, "READY")]
