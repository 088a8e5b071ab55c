"""Issue 10 item 8, operators' surfaces, on small apps and fakes: who may read /metrics, the metrics port, the audit
extension's digests and outcomes, and one jobProgress poll per job."""

from __future__ import annotations

import asyncio
import hashlib
import json
from types import SimpleNamespace

import httpx
import pytest
import strawberry
from litestar import Litestar
from litestar.testing import AsyncTestClient

from domain.errors import NotFound
from domain.jobwatch import JobWatch
from domain.tenancy import Principal, Scope
from graph.audit import AuditExtension
from graph.metrics import Metrics
from graph.metrics_access import metrics_port, metrics_route
from tests.conftest import free_port

SECRET_TENANT = "t_0123456789abcdef"


def _metrics() -> Metrics:
    metrics = Metrics()
    metrics.record_operation("Probe", "query", failed=False, seconds=0.001)
    metrics.read_gauge("live_clicks", "Clicks.", ("tenant", "scenario", "window")).labels(
        SECRET_TENANT, "sc_1", "hour").set(3)
    metrics.read_gauge("consumer_lag", "Lag.", ("tenant",)).labels(SECRET_TENANT).set(1)
    return metrics


async def test_operators_surfaces_metrics_without_a_token_show_no_tenant_to_anyone():
    app = Litestar(route_handlers=[metrics_route(_metrics(), None)])
    async with AsyncTestClient(app) as client:
        scrape = await client.get("/metrics")
    assert scrape.status_code == 200
    assert 'recograph_graphql_operations_total{operation="Probe",status="ok",type="query"} 1.0' in scrape.text
    assert SECRET_TENANT not in scrape.text and "sc_1" not in scrape.text


@pytest.mark.parametrize("authorization, status", [
    (None, 401), ("Bearer wrong", 401), ("Basic s3cret", 401), ("Bearer s3cret", 200),
])
async def test_operators_surfaces_metrics_behind_a_token(authorization, status):
    app = Litestar(route_handlers=[metrics_route(_metrics(), "s3cret")])
    async with AsyncTestClient(app) as client:
        scrape = await client.get("/metrics", headers={"Authorization": authorization} if authorization else {})
    assert scrape.status_code == status
    assert (SECRET_TENANT in scrape.text) is (status == 200)  # the token holder sees every series
    if status == 401:
        assert scrape.headers["www-authenticate"] == "Bearer"


async def test_operators_surfaces_metrics_port_serves_every_series_on_loopback():
    port = free_port()
    app = Litestar(route_handlers=[metrics_route(_metrics(), None)], lifespan=[metrics_port(_metrics(), port)])
    async with AsyncTestClient(app), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        scrape = await client.get("/metrics")
        missing = await client.get("/other")
    assert scrape.status_code == 200 and SECRET_TENANT in scrape.text
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    assert missing.status_code == 404


# --- audit extension -------------------------------------------------------------------------------------------


class Audit:
    def __init__(self) -> None:
        self.entries: list[dict] = []

    async def record(self, **entry) -> None:
        self.entries.append(entry)


@strawberry.type
class Query:
    hello: str = "world"


@strawberry.type
class Mutation:
    @strawberry.mutation
    def rename(self, name: str, tags: list[str] | None = None) -> str:
        return name

    @strawberry.mutation
    def fail(self, id: strawberry.ID) -> str:
        raise NotFound(f"no {id}", field="id")


SCHEMA = strawberry.Schema(Query, Mutation, extensions=[AuditExtension])


def _ctx(scope: Scope) -> SimpleNamespace:
    principal = Principal(tenant_id="t1", scope=scope, key_id="k1")
    return SimpleNamespace(principal=principal, services=SimpleNamespace(audit=Audit()))


def _digest(arguments: dict) -> str:
    return hashlib.sha256(json.dumps(arguments, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


async def test_operators_surfaces_audit_writes_each_admin_mutation_field_with_digest_and_outcome():
    ctx = _ctx(Scope.ADMIN)
    document = """mutation M($n: String!) { first: rename(name: $n, tags: ["a", "b"]) ...More fail(id: "x9") }
                  fragment More on Mutation { rename(name: "plain") }"""
    await SCHEMA.execute(document, variable_values={"n": "user-42"}, context_value=ctx)
    entries = ctx.services.audit.entries
    assert [(e["operation"], e["outcome"]) for e in entries] == [
        ("rename", "ok"), ("rename", "ok"), ("fail", "NOT_FOUND"),
    ]
    assert entries[0]["arguments"] == {"name": "user-42", "tags": ["a", "b"]}  # the log keeps only their digest
    assert all(e["tenant_id"] == "t1" and e["key_id"] == "k1" for e in entries)


@pytest.mark.parametrize("scope, document", [
    (Scope.PUBLIC, 'mutation { rename(name: "x") }'),  # not an admin key
    (Scope.ADMIN, "{ hello }"),  # not a mutation
])
async def test_operators_surfaces_audit_skips_other_keys_and_queries(scope, document):
    ctx = _ctx(scope)
    await SCHEMA.execute(document, context_value=ctx)
    assert ctx.services.audit.entries == []


def test_operators_surfaces_audit_digest_is_canonical_json():
    from domain.audit import arguments_digest

    assert arguments_digest({"b": 1, "a": "é"}) == hashlib.sha256('{"a":"é","b":1}'.encode()).hexdigest()
    assert arguments_digest({"scope": "PUBLIC"}) == _digest({"scope": "PUBLIC"})


# --- jobProgress: one poll per job -----------------------------------------------------------------------------


class Jobs:
    """A job read that counts reads and moves the job forward on the third one."""

    def __init__(self) -> None:
        self.reads = 0

    async def get(self):
        self.reads += 1
        status = "RUNNING" if self.reads < 3 else "SUCCEEDED"
        return SimpleNamespace(id="j1", status=status, progress=0.5 if self.reads < 3 else 1.0, stage=None,
                               attempts=1, error=None)


async def _follow(watch: JobWatch, jobs: Jobs) -> list[str]:
    first = SimpleNamespace(id="j1", status="QUEUED", progress=0.0, stage=None, attempts=0, error=None)
    return [job.status async for job in watch.follow(first, jobs.get, tenant_id="t1")]


async def test_operators_surfaces_job_progress_followers_of_one_job_share_one_poll():
    watch, jobs = JobWatch(poll_s=0.01), Jobs()
    seen = await asyncio.gather(*[_follow(watch, jobs) for _ in range(5)])
    assert seen == [["RUNNING", "SUCCEEDED"]] * 5
    assert jobs.reads == 3  # one poll loop, not five
    assert watch._polls == {}  # the loop is gone with the job


async def test_operators_surfaces_job_progress_poll_stops_when_the_last_follower_leaves():
    watch = JobWatch(poll_s=0.01)
    reads = 0

    async def never_ends():
        nonlocal reads
        reads += 1
        return SimpleNamespace(id="j2", status="RUNNING", progress=reads / 1000, stage=None, attempts=1, error=None)

    first = SimpleNamespace(id="j2", status="RUNNING", progress=0.0, stage=None, attempts=1, error=None)
    stream = watch.follow(first, never_ends, tenant_id="t1")
    assert (await anext(stream)).status == "RUNNING"
    await stream.aclose()
    await asyncio.sleep(0.05)
    settled = reads
    await asyncio.sleep(0.05)
    assert reads == settled and watch._polls == {}
