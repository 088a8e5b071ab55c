"""Issue 13, `systemHealth` over HTTP: admin keys only, each tenant's own consumer lag, dead letters, jobs and
serving models, and a store that stops reported `down` with the rest of the report, never as an error."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

from domain.ids import new_id, utcnow
from domain.learning.versions import MODEL_KIND
from domain.realtime.deadletters import Burial
from models.documents import ModelVersion
from tests.conftest import new_tenant
from tests.e2e.test_access import codes
from tests.e2e.test_stream_faults import CREATE, RECORD, UPSERT, private_instance

HEALTH = """{ systemHealth { status checkedAt stores { name state latencyMs detail } consumerLag consumerStuck
  consumerState deadLetters queueDepth runningJobs failedJobs unavailable
  scenarios { scenarioId name modelVersion modelTrainedAt modelAgeSeconds } } }"""


async def _health(gql, key: str) -> dict:
    return (await gql.data(HEALTH, key=key))["systemHealth"]


async def _champion(tenant_id: str, scenario_id: str, version: int, trained_hours_ago: float) -> None:
    trained = utcnow() - timedelta(hours=trained_hours_ago)
    await ModelVersion(id=new_id("mv"), tenant_id=tenant_id, scenario_id=scenario_id, kind=MODEL_KIND,
                       version=version, status="READY", aliases=["champion"], created_at=trained, trained_at=trained,
                       activated_at=trained, applied_at=trained, artifact="unused").insert()


async def test_system_health_reports_the_admins_tenant_only(served, gql):
    mine, theirs = await new_tenant(served, "healthy"), await new_tenant(served, "health-stranger")
    sid = (await gql.data(CREATE, {"input": {"name": "feed", "template": "CUSTOM"}}, key=mine.admin))[
        "createScenario"]["id"]
    their_sid = (await gql.data(CREATE, {"input": {"name": "theirs", "template": "CUSTOM"}}, key=theirs.admin))[
        "createScenario"]["id"]
    await gql.data(UPSERT, {"s": sid, "items": [{"id": "a"}, {"id": "b"}]}, key=mine.admin)
    await _champion(mine.tenant_id, sid, 3, trained_hours_ago=2)
    await served.runtime.services.realtime.dead_letters.bury(
        [Burial(raw="not an entry", error="bad"), Burial(raw="[]", error="bad")], tenant_id=theirs.tenant_id)
    jobs = served.runtime.services.jobs
    failed = await jobs.create("cleanup", tenant_id=theirs.tenant_id, scenario_id=new_id("x"))
    await jobs.fail(failed.id, tenant_id=theirs.tenant_id, error="boom")
    events = [{"scenarioId": sid, "userId": f"u{n}", "itemId": "a", "type": "VIEW", "eventId": f"h{n}"}
              for n in range(20)]
    assert (await gql.data(RECORD, {"events": events}, key=mine.admin))["recordInteractions"]["accepted"] == 20

    deadline = time.monotonic() + 20
    while (report := await _health(gql, mine.admin))["consumerLag"]:  # the consumer applies them
        assert time.monotonic() < deadline, report
        await asyncio.sleep(0.1)
    assert {s["name"]: s["state"] for s in report["stores"]} == {"mongodb": "ok", "redis": "ok", "vectors": "ok"} \
        or report["status"] == "degraded"  # a shared 2-core machine may make a ping slow
    assert all(s["latencyMs"] is not None for s in report["stores"] if s["name"] != "vectors")
    print("\nsystemHealth stores: "
          + ", ".join(f"{s['name']} {s['state']} {s['latencyMs']} ms" for s in report["stores"]))
    assert report["unavailable"] == [] and not report["consumerStuck"] and report["consumerState"] == "ok"
    assert (report["deadLetters"], report["failedJobs"], report["queueDepth"], report["runningJobs"]) == (0, 0, 0, 0)
    [scenario] = report["scenarios"]
    assert (scenario["scenarioId"], scenario["name"], scenario["modelVersion"]) == (sid, "feed", 3)
    assert 2 * 3600 - 5 < scenario["modelAgeSeconds"] < 2 * 3600 + 120

    other = await _health(gql, theirs.admin)
    assert (other["deadLetters"], other["failedJobs"], other["consumerLag"]) == (2, 1, 0)
    assert [(s["scenarioId"], s["modelVersion"]) for s in other["scenarios"]] == [(their_sid, None)]
    assert codes(await gql(HEALTH, key=mine.public)) == ["FORBIDDEN"]
    assert codes(await gql(HEALTH, key=mine.gateway)) == ["FORBIDDEN"]
    assert codes(await gql(HEALTH)) == ["UNAUTHENTICATED"]


async def test_system_health_reports_stopped_stores_down_and_still_answers(served):
    async with private_instance(served, mongo_timeout_ms=2000) as (runtime, gql, _client, _url):
        keys = await new_tenant(type("S", (), {"runtime": runtime})(), "stopping")
        await gql.data(CREATE, {"input": {"name": "feed", "template": "CUSTOM"}}, key=keys.admin)
        assert (await _health(gql, keys.admin))["unavailable"] == []  # the key is now known to the process

        await runtime.servers.redis.stop()
        began = time.monotonic()
        body = await gql(HEALTH, key=keys.admin)
        redis_down_s = time.monotonic() - began
        assert "errors" not in body, body
        report = body["data"]["systemHealth"]
        stores = {s["name"]: s for s in report["stores"]}
        assert report["status"] == "down"
        assert stores["redis"]["state"] == "down" and stores["redis"]["latencyMs"] is None
        assert stores["redis"]["detail"] and "127.0.0.1" not in stores["redis"]["detail"]
        assert stores["mongodb"]["state"] in ("ok", "degraded")
        assert {"consumerLag", "consumerStuck", "deadLetters"} <= set(report["unavailable"])
        assert [s["name"] for s in report["scenarios"]] == ["feed"]  # MongoDB still answers

        await runtime.servers.mongo.stop()
        began = time.monotonic()
        body = await gql(HEALTH, key=keys.admin)  # authenticated from the process's cache of keys
        both_down_s = time.monotonic() - began
        assert "errors" not in body, body
        report = body["data"]["systemHealth"]
        stores = {s["name"]: s for s in report["stores"]}
        assert stores["mongodb"]["state"] == "down" and stores["mongodb"]["detail"]
        assert {"scenarios", "runningJobs", "failedJobs", "queueDepth"} <= set(report["unavailable"])
        assert report["scenarios"] == [] and report["status"] == "down"
    print(f"\nsystemHealth with Redis stopped: {redis_down_s * 1000:.0f} ms; with MongoDB stopped too: "
          f"{both_down_s * 1000:.0f} ms")
    assert redis_down_s < 3.0 and both_down_s < 3.0  # each probe is bounded by 1 s and they run at once
