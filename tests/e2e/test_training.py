"""Training over GraphQL: trainScenario queues a job that trains in a child process, stores a version, fills the
vector space and swaps the serving copy; job(id) shows how it went; failures keep the previous version serving."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from pymongo.errors import AutoReconnect

from domain.errors import NotFound
from domain.learning.service import Retryable, TrainingService
from domain.recommend import serving
from domain.recommend.serving import ModelRegistry, SwapChannel
from models.documents import ModelVersion
from tests.conftest import new_tenant
from workers import jobs as worker_jobs

pytestmark = pytest.mark.slow

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
RECORD = "mutation($events: [InteractionInput!]!) { recordInteractions(events: $events) { accepted errors { index } } }"
TRAIN = "mutation($s: ID!) { trainScenario(scenarioId: $s) { id kind scenarioId status attempts timeLimitSeconds } }"
JOB = """query($id: ID!) { job(id: $id) { id kind scenarioId status progress stage attempts error createdAt startedAt
  finishedAt durationSeconds result } }"""
CATEGORIES = ("comedy", "drama", "sport", "music", "travel")
KINDS = ("WATCH", "LIKE", "VIEW", "WATCH", "SHARE", "VIEW", "WATCH", "LIKE")  # each user's eight interactions


def error(body: dict) -> dict:
    assert len(body.get("errors") or []) == 1, body
    return body["errors"][0]


async def shop(gql, key: str, name: str, *, users: int = 40, items: int = 60) -> str:
    """Create a VLOG scenario with items and a few hundred interactions; return its id."""
    sid = (await gql.data(CREATE, {"input": {"name": name, "template": "VLOG"}}, key=key))["createScenario"]["id"]
    catalogue = [{"id": f"v{i}", "title": f"Clip {i} about {CATEGORIES[i % 5]}", "categories": [CATEGORIES[i % 5]],
                  "tags": [f"t{i % 7}"], "attributes": {"durationSeconds": 60}} for i in range(items)]
    assert (await gql.data(UPSERT, {"s": sid, "items": catalogue}, key=key))["upsertItems"]["upserted"] == items
    start = datetime.now(UTC) - timedelta(days=3)
    events = [
        {"scenarioId": sid, "userId": f"u{u}", "itemId": f"v{(u * 3 + k * (u % 5 + 1)) % items}", "type": kind,
         "value": 45.0 if kind == "WATCH" else None, "timestamp": (start + timedelta(minutes=u * 13 + k)).isoformat()}
        for u in range(users) for k, kind in enumerate(KINDS)
    ]
    result = (await gql.data(RECORD, {"events": events}, key=key))["recordInteractions"]
    assert result["errors"] == [] and result["accepted"] == len(events)
    return sid


async def finished(gql, key: str, job_id: str, timeout_s: float = 30.0) -> dict:
    """Poll job(id) until it is no longer QUEUED or RUNNING; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = (await gql.data(JOB, {"id": job_id}, key=key))["job"]
        if job["status"] not in ("QUEUED", "RUNNING"):
            return job
        await asyncio.sleep(0.2)
    raise AssertionError(f"job {job_id} did not finish within {timeout_s} s: {job}")


async def train(gql, key: str, sid: str) -> dict:
    job = (await gql.data(TRAIN, {"s": sid}, key=key))["trainScenario"]
    return await finished(gql, key, job["id"])


async def active_versions(tenant_id: str, sid: str) -> list[int]:
    """Return the versions holding the champion alias (the one that serves)."""
    docs = await ModelVersion.find({"tenant_id": tenant_id, "scenario_id": sid, "aliases": "champion"}).to_list()
    return [d.version for d in docs]


@pytest.fixture(scope="module")
async def owner(served):
    return await new_tenant(served, "trainer")


@pytest.fixture(scope="module")
async def trained(served, gql, owner):
    """A scenario trained once, with its first job."""
    sid = await shop(gql, owner.admin, "feed")
    first = (await gql.data(TRAIN, {"s": sid}, key=owner.admin))["trainScenario"]
    again = (await gql.data(TRAIN, {"s": sid}, key=owner.admin))["trainScenario"]
    return sid, first, again, await finished(gql, owner.admin, first["id"])


async def test_train_scenario_queues_one_job_and_it_succeeds(trained, owner):
    sid, first, again, job = trained
    assert first["status"] in ("QUEUED", "RUNNING") and first["kind"] == "TRAIN" and first["scenarioId"] == sid
    assert first["timeLimitSeconds"] > 0
    assert again["id"] == first["id"]  # the same training is never queued twice at once
    assert job["status"] == "SUCCEEDED", job
    assert job["progress"] == 1.0 and job["error"] is None and job["attempts"] == 1 and job["stage"] == "done"
    assert job["durationSeconds"] > 0 and job["startedAt"] and job["finishedAt"] >= job["startedAt"]
    result = job["result"]
    assert result["version"] == 1 and result["interactions"] == 320 and result["users"] == 40 and result["items"] == 60
    assert result["modelBytes"] > 0 and result["seconds"]["total"] < 30


async def test_the_version_is_stored_active_and_served(served, trained, owner):
    sid, *_ = trained
    assert await active_versions(owner.tenant_id, sid) == [1]
    version = await ModelVersion.find_one({"tenant_id": owner.tenant_id, "scenario_id": sid, "version": 1})
    assert (served.runtime.models_dir / version.artifact).is_dir()
    assert version.metrics["interactions"] == 320 and version.metrics["model_bytes"] > 0
    space = version.spaces["content"]
    assert await served.runtime.vectors.count(space, tenant_id=owner.tenant_id) == version.metrics["embeddings"] > 0
    registry = served.runtime.registry
    engine = await registry.get(owner.tenant_id, sid)
    assert registry.version(owner.tenant_id, sid) == 1 and engine.model.version == 1


async def test_retraining_swaps_the_serving_copy_atomically(served, gql, trained, owner):
    sid, *_ = trained
    registry = served.runtime.registry
    before = await registry.get(owner.tenant_id, sid)
    job = await train(gql, owner.admin, sid)
    assert job["status"] == "SUCCEEDED" and job["result"]["version"] == 2
    assert await active_versions(owner.tenant_id, sid) == [2]
    assert registry.version(owner.tenant_id, sid) == 2  # swapped before the job reported success
    after = await registry.get(owner.tenant_id, sid)
    assert after is not before and after.model.version == 2
    stored = await ModelVersion.find({"tenant_id": owner.tenant_id, "scenario_id": sid}).to_list()
    versions = {d.version: d for d in stored}
    assert versions[1].status == "RETIRED" and versions[1].aliases == [] and versions[2].status == "READY"
    assert versions[2].spaces["content"] != versions[1].spaces["content"]  # new vectors were written beside the old


async def test_a_failed_training_keeps_the_previous_version(served, gql, trained, owner, monkeypatch):
    sid, *_ = trained

    async def refuse(self, version, data, embeddings):
        raise RuntimeError("vector write refused")

    monkeypatch.setattr(TrainingService, "_store_vectors", refuse)
    job = await train(gql, owner.admin, sid)
    assert job["status"] == "FAILED" and job["error"] == "RuntimeError: vector write refused", job
    assert job["progress"] < 1 and job["finishedAt"]
    assert await active_versions(owner.tenant_id, sid) == [2]
    failed = await ModelVersion.find_one({"tenant_id": owner.tenant_id, "scenario_id": sid, "version": 3})
    assert failed.status == "FAILED" and failed.artifact is None and "vector write refused" in failed.error
    assert served.runtime.registry.version(owner.tenant_id, sid) == 2


async def test_a_training_past_its_time_limit_is_stopped(served, gql, trained, owner, monkeypatch):
    sid, *_ = trained
    training = served.runtime.services.training
    monkeypatch.setattr(training, "_config", replace(training._config, time_limit_s=0))
    job = await train(gql, owner.admin, sid)
    assert job["status"] == "FAILED" and "limit" in job["error"], job
    monkeypatch.undo()
    again = await train(gql, owner.admin, sid)  # a fresh training process replaces the stopped one
    assert again["status"] == "SUCCEEDED" and again["result"]["version"] == 5
    assert served.runtime.registry.version(owner.tenant_id, sid) == 5


async def test_a_scenario_without_interactions_trains_an_untrained_feed(served, gql, owner):
    created = await gql.data(CREATE, {"input": {"name": "empty", "template": "VLOG"}}, key=owner.admin)
    sid = created["createScenario"]["id"]
    items = [{"id": f"e{i}", "title": f"Item {i}", "categories": ["news"]} for i in range(5)]
    await gql.data(UPSERT, {"s": sid, "items": items}, key=owner.admin)
    job = await train(gql, owner.admin, sid)
    assert job["status"] == "SUCCEEDED", job
    assert job["result"]["interactions"] == 0 and job["result"]["items"] == 5


async def test_jobs_are_tenant_scoped_and_need_the_right_key(served, gql, trained, owner):
    sid, first, *_ = trained
    other = await new_tenant(served, "not-the-trainer")
    assert (await gql.data(JOB, {"id": first["id"]}, key=other.admin))["job"] is None
    assert (await gql.data(JOB, {"id": "job_missing"}, key=owner.admin))["job"] is None
    refused = error(await gql(TRAIN, {"s": sid}, key=other.admin))
    assert refused["extensions"] == {"code": "NOT_FOUND", "field": "scenarioId"}
    assert error(await gql(TRAIN, {"s": "sc_nope"}, key=owner.admin))["extensions"]["code"] == "NOT_FOUND"
    assert error(await gql(TRAIN, {"s": sid}, key=owner.public))["extensions"]["code"] == "FORBIDDEN"
    assert error(await gql(JOB, {"id": first["id"]}, key=owner.public))["extensions"]["code"] == "FORBIDDEN"
    assert (await gql.data(JOB, {"id": first["id"]}, key=owner.gateway))["job"]["status"] == "SUCCEEDED"
    assert error(await gql(JOB, {"id": first["id"]}))["extensions"]["code"] == "UNAUTHENTICATED"


async def test_another_process_converges_by_notice_and_by_re_check(served, gql, owner):
    sid = await shop(gql, owner.admin, "pods", users=20)
    assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"
    runtime = served.runtime
    listening = ModelRegistry(vectors=runtime.vectors, models_dir=runtime.models_dir,
                              channel=SwapChannel(runtime.cache.client), refresh_s=3600)
    polling = ModelRegistry(vectors=runtime.vectors, models_dir=runtime.models_dir, refresh_s=0)
    for pod in (listening, polling):
        await pod.get(owner.tenant_id, sid)
        assert pod.version(owner.tenant_id, sid) == 1
    read_model = listening._read_model

    async def slow_read(doc):  # the other process takes its time loading the new model
        await asyncio.sleep(2.0)
        return await read_model(doc)

    listening._read_model = slow_read
    listening.start()
    try:
        await asyncio.sleep(0.3)  # subscribed
        assert (await train(gql, owner.admin, sid))["result"]["version"] == 2
        await asyncio.sleep(0.05)  # the notice crosses Redis
        # The job said SUCCEEDED: a request to the other process waits for the new model rather than use the old.
        await listening.get(owner.tenant_id, sid, config_version=0)  # as requests ask: no config re-read
        assert listening.version(owner.tenant_id, sid) == 2  # the swap notice reached the other process
        assert polling.version(owner.tenant_id, sid) == 1
        await polling.refresh()
        assert polling.version(owner.tenant_id, sid) == 2  # the periodic re-check found it without a notice
    finally:
        await listening.stop()


async def test_a_serving_process_loads_a_new_champion_before_any_request_asks_for_it(served, gql, owner):
    # A process that never served the scenario used to load it on its first request: that request, and every one
    # queued behind the scenario's lock, waited seconds for the model and the item view (the serve bench's cold p99).
    sid = await shop(gql, owner.admin, "preloads", users=20)
    assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"
    runtime = served.runtime
    serving_pod = ModelRegistry(vectors=runtime.vectors, models_dir=runtime.models_dir, preload=True)
    worker = ModelRegistry(vectors=runtime.vectors, models_dir=runtime.models_dir)  # no preload: a worker's registry
    try:
        for pod in (serving_pod, worker):
            assert await pod.swap(owner.tenant_id, sid, 1) is False  # as its swap notice arrives: nothing held here
        deadline = time.monotonic() + 30
        while serving_pod.version(owner.tenant_id, sid) is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert serving_pod.version(owner.tenant_id, sid) == 1  # loaded in the background, no request made
        assert worker.loaded() == []
    finally:
        await serving_pod.stop()


async def test_the_registry_follows_item_and_config_changes(served, gql, owner):
    sid = await shop(gql, owner.admin, "changes", users=10, items=20)
    changes = []
    registry = ModelRegistry(vectors=served.runtime.vectors, models_dir=served.runtime.models_dir, config_ttl_s=0,
                             catalogue_refresh_s=0, on_change=lambda: changes.append(1))
    engine = await registry.get(owner.tenant_id, sid)
    assert engine.model is None and len(engine.catalogue) == 20  # untrained: served from the catalogue alone
    assert len(changes) == 1  # a loaded item view: the process settles its heap
    await registry.refresh()
    assert len(changes) == 1  # nothing changed, nothing to settle
    await registry.get(owner.tenant_id, sid)  # used again: its items are checked on the next refresh
    await gql.data(UPSERT, {"s": sid, "items": [{"id": "late", "title": "Late arrival"}]}, key=owner.admin)
    await registry.refresh()
    refreshed = await registry.get(owner.tenant_id, sid)
    assert "late" in refreshed.catalogue.index and len(refreshed.catalogue) == 21
    assert len(changes) == 2
    update = "mutation($id: ID!, $input: UpdateScenarioInput!) { updateScenario(id: $id, input: $input) { id } }"
    config = {"fallback": {"minItems": 7}}
    await gql.data(update, {"id": sid, "input": {"config": config}}, key=owner.admin)
    rebuilt = await registry.get(owner.tenant_id, sid)
    assert rebuilt is not refreshed and rebuilt.config["fallback"]["minItems"] == 7
    other = await new_tenant(served, "registry-outsider")
    with pytest.raises(NotFound):
        await registry.get(other.tenant_id, sid)


async def test_item_views_follow_the_items_version_without_scanning_the_items(served, gql, owner, monkeypatch):
    sid = await shop(gql, owner.admin, "versions", users=10, items=20)
    registry = ModelRegistry(vectors=None, models_dir=served.runtime.models_dir, catalogue_refresh_s=0,
                             versions=served.runtime.cache)
    scans = []
    real = serving._fingerprint
    mine = asyncio.current_task()  # this registry refreshes inline; the served process's own refreshes in its tasks

    async def counted(*key):
        if asyncio.current_task() is mine:
            scans.append(key)
        return await real(*key)

    monkeypatch.setattr(serving, "_fingerprint", counted)
    assert len((await registry.get(owner.tenant_id, sid)).catalogue) == 20
    scans.clear()
    for _ in range(3):
        await registry.get(owner.tenant_id, sid)
        await registry.refresh()
    assert scans == []  # the items version did not move: no aggregate over the items
    await gql.data(UPSERT, {"s": sid, "items": [{"id": "fresh", "title": "Fresh"}]}, key=owner.admin)
    await registry.get(owner.tenant_id, sid)
    await registry.refresh()
    assert len(scans) == 1  # then it looked, once: the reload reads its fingerprint from the items it loads
    assert "fresh" in (await registry.get(owner.tenant_id, sid)).catalogue.index


async def test_a_store_outage_is_retried_by_the_worker(served, gql, owner, monkeypatch):
    sid = await shop(gql, owner.admin, "flaky", users=10, items=20)
    original, calls = TrainingService._store_vectors, []

    async def flaky(self, version, data, embeddings):
        calls.append(version.version)
        if len(calls) == 1:
            raise AutoReconnect("mongo stepped down")
        return await original(self, version, data, embeddings)

    monkeypatch.setattr(TrainingService, "_store_vectors", flaky)
    monkeypatch.setattr(worker_jobs, "BACKOFF_S", (0.2,))
    job = await train(gql, owner.admin, sid)
    assert job["status"] == "SUCCEEDED" and job["attempts"] == 2, job
    assert calls == [1, 2] and job["result"]["version"] == 2
    failed = await ModelVersion.find_one({"tenant_id": owner.tenant_id, "scenario_id": sid, "version": 1})
    assert failed.status == "FAILED" and "stepped down" in failed.error


async def test_the_last_try_fails_the_job_instead_of_retrying(served, gql, owner, monkeypatch):
    sid = await shop(gql, owner.admin, "outage", users=10, items=20)

    async def down(self, version, data, embeddings):
        raise AutoReconnect("mongo unreachable")

    monkeypatch.setattr(TrainingService, "_store_vectors", down)
    training = served.runtime.services.training
    job = await training.open_job(sid, tenant_id=owner.tenant_id)  # run here, not through the queue
    with pytest.raises(Retryable):
        await training.train(job.id, tenant_id=owner.tenant_id, scenario_id=sid, attempt=1, may_retry=True)
    queued = (await gql.data(JOB, {"id": job.id}, key=owner.admin))["job"]
    assert queued["status"] == "QUEUED" and queued["error"] == "retrying after: AutoReconnect: mongo unreachable"
    assert await training.train(job.id, tenant_id=owner.tenant_id, scenario_id=sid, attempt=2) is None
    final = (await gql.data(JOB, {"id": job.id}, key=owner.admin))["job"]
    assert final["status"] == "FAILED" and final["attempts"] == 2 and "mongo unreachable" in final["error"]
