"""Issue 10 item 8, operators' surfaces, over HTTP and websockets: /metrics behind its token, the admin audit log
(tenant-scoped), revoked keys' subscriptions closing with 4403, and one jobProgress poll per job."""

from __future__ import annotations

import asyncio
import time
import uuid

import httpx
import pytest
from gql import gql as document

from domain.audit import arguments_digest
from domain.ids import utcnow
from models.documents import ApiKey, AuditEntry
from tests.conftest import METRICS_AUTH, new_tenant
from tests.e2e.test_access import CREATE_SCENARIO, DELETE_USER, ROTATE_KEY, codes
from tests.e2e.test_subscriptions import JOB, METRICS, _close_frame, _next, session

AUDIT = """query($first: Int, $after: String) { auditLog(first: $first, after: $after) {
  totalCount edges { cursor node { id keyId operation argumentsSha256 outcome at } } pageInfo { hasNextPage endCursor }
} }"""
CREATE_KEY = "mutation($scope: ApiKeyScope!) { createApiKey(scope: $scope) { key { id } } }"
RECORD = """mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted } }"""


async def test_operators_surfaces_metrics_need_the_token(served):
    async with httpx.AsyncClient() as client:
        refused = await client.get(f"{served.url}/metrics")
        wrong = await client.get(f"{served.url}/metrics", headers={"Authorization": "Bearer not-it"})
        allowed = await client.get(f"{served.url}/metrics", headers=METRICS_AUTH)
    assert refused.status_code == 401 and wrong.status_code == 401
    assert "t_" not in refused.text
    assert allowed.status_code == 200 and "recograph_http_requests_total" in allowed.text


async def _audit(gql, key: str, **variables) -> dict:
    return (await gql.data(AUDIT, variables, key=key))["auditLog"]


async def test_operators_surfaces_admin_mutations_are_audited_for_their_tenant_only(served, gql):
    mine, theirs = await new_tenant(served, "audited"), await new_tenant(served, "audit-stranger")
    await gql.data(CREATE_SCENARIO, {"input": {"name": "feed", "template": "CUSTOM"}}, key=mine.admin)
    await gql.data(CREATE_KEY, {"scope": "PUBLIC"}, key=mine.admin)
    assert codes(await gql(ROTATE_KEY, {"id": "k_missing"}, key=mine.admin)) == ["NOT_FOUND"]
    await gql.data(DELETE_USER, {"u": "user-secret-7"}, key=mine.admin)
    await gql.data(RECORD, {"e": []}, key=mine.public)  # not an admin key: not audited
    log = await _audit(gql, mine.admin, first=10)
    entries = [e["node"] for e in log["edges"]]
    assert [(e["operation"], e["outcome"]) for e in entries] == [
        ("deleteUserData", "ok"), ("rotateApiKey", "NOT_FOUND"), ("createApiKey", "ok"), ("createScenario", "ok"),
    ]
    assert log["totalCount"] == 4 and not log["pageInfo"]["hasNextPage"]
    admin_key_id = (await served.runtime.services.tenancy.authenticate(mine.admin)).key_id
    assert {e["keyId"] for e in entries} == {admin_key_id}
    assert entries[2]["argumentsSha256"] == arguments_digest({"scope": "PUBLIC"})
    assert entries[0]["argumentsSha256"] == arguments_digest({"userId": "user-secret-7"})  # variables substituted
    stored = await AuditEntry.get_pymongo_collection().find({"tenant_id": mine.tenant_id}).to_list(None)
    assert "user-secret-7" not in repr(stored)  # arguments only as a digest
    # Pages, newest first.
    page = await _audit(gql, mine.admin, first=2)
    rest = await _audit(gql, mine.admin, first=2, after=page["pageInfo"]["endCursor"])
    assert [e["node"]["id"] for e in page["edges"] + rest["edges"]] == [e["id"] for e in entries]
    # Another tenant sees none of it; other scopes see nothing at all.
    assert (await _audit(gql, theirs.admin, first=10))["totalCount"] == 0
    assert codes(await gql(AUDIT, {}, key=mine.gateway)) == ["FORBIDDEN"]
    assert codes(await gql(AUDIT, {}, key=mine.public)) == ["FORBIDDEN"]


async def _key(served, tenant_id: str) -> tuple[str, str]:
    from domain.tenancy import Scope

    new = await served.runtime.services.tenancy.create_key(Scope.ADMIN, tenant_id=tenant_id)
    return new.key.id, new.secret


async def _closed_within(stream, seconds: float) -> tuple[int, str] | None:
    started = time.monotonic()
    with pytest.raises(Exception) as ended:  # noqa: PT011 - gql raises its own wrappers of the close
        while True:
            await asyncio.wait_for(anext(stream), seconds - (time.monotonic() - started))
    assert time.monotonic() - started < seconds
    return _close_frame(ended.value)


@pytest.mark.parametrize("how", ["revoked here", "revoked elsewhere, notice lost", "expired"])
async def test_operators_surfaces_a_revoked_keys_subscriptions_close_4403_within_10s(served, gql, how):
    keys = await new_tenant(served, f"revoked-{uuid.uuid4().hex[:6]}")
    scenario = (await gql.data(CREATE_SCENARIO, {"input": {"name": "live", "template": "VLOG"}}, key=keys.admin))
    key_id, secret = await _key(served, keys.tenant_id)
    async with session(served, secret) as ws:
        stream = ws.subscribe(document(METRICS), variable_values={"s": scenario["createScenario"]["id"]})
        await _next(stream)
        if how == "revoked here":
            assert await served.runtime.services.tenancy.revoke_key(key_id, tenant_id=keys.tenant_id)
        elif how == "expired":
            await ApiKey.get_pymongo_collection().update_one({"_id": key_id}, {"$set": {"expires_at": utcnow()}})
        else:  # another process revoked it and its notice never arrived: the periodic re-check finds it
            await ApiKey.get_pymongo_collection().update_one({"_id": key_id}, {"$set": {"revoked_at": utcnow()}})
        code = await _closed_within(stream, 10.0)
    assert code is not None and code[0] == 4403


async def test_operators_surfaces_job_progress_subscribers_share_one_poll(served):
    keys = await new_tenant(served, f"watched-{uuid.uuid4().hex[:6]}")
    jobs, watch = served.runtime.services.jobs, served.runtime.services.job_watch
    job = await jobs.create("cleanup", tenant_id=keys.tenant_id, scenario_id=f"watch-{uuid.uuid4().hex[:8]}")
    async with session(served, keys.admin) as a, session(served, keys.gateway) as b, \
            session(served, keys.admin) as c:
        streams = [ws.subscribe(document(JOB), variable_values={"id": job.id}) for ws in (a, b, c)]
        for stream in streams:
            assert (await _next(stream))["jobProgress"]["status"] == "QUEUED"
        before = watch.reads
        await asyncio.sleep(2.0)  # four poll intervals
        polled = watch.reads - before
        await jobs.mark_running(job.id, tenant_id=keys.tenant_id, attempt=1)
        for stream in streams:
            assert (await _next(stream))["jobProgress"]["status"] == "RUNNING"
        await jobs.succeed(job.id, tenant_id=keys.tenant_id, result={})
        for stream in streams:
            assert (await _next(stream))["jobProgress"]["status"] == "SUCCEEDED"
    assert 2 <= polled <= 6  # one loop: about four reads; one per subscriber would be about twelve
