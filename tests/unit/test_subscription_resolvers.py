"""Subscription resolvers and websocket authentication on fakes: scopes, tenancy, change detection, key precedence."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from strawberry.exceptions import ConnectionRejectionError

from domain.errors import Forbidden, NotFound, Unauthenticated, Unavailable
from domain.jobwatch import JobWatch
from domain.tenancy import Principal, Scope
from graph.context import WebSocketAuth, reauthenticate
from resolvers.context import RequestContext
from resolvers.metrics import metrics_snapshot
from resolvers.subscriptions import job_progress

ADMIN = Principal(tenant_id="t1", scope=Scope.ADMIN, key_id="k1")


class ScriptedJobs:
    """A JobService fake whose `get` returns the next state of a script (the last one repeats)."""

    def __init__(self, *states: tuple[str, float] | None) -> None:
        self.states = list(states)
        self.reads = 0

    async def get(self, job_id: str, *, tenant_id: str):
        state = self.states[min(self.reads, len(self.states) - 1)]
        self.reads += 1
        if state is None or tenant_id != "t1":
            return None
        status, progress = state
        return SimpleNamespace(id=job_id, status=status, progress=progress, stage=None, attempts=1, error=None)


class Scenarios:
    async def get_or_raise(self, scenario_id: str, *, tenant_id: str, field: str = "scenarioId"):
        if scenario_id != "mine":
            raise NotFound(f"no scenario {scenario_id}", field=field)


def context(principal: Principal | None = ADMIN, **services) -> RequestContext:
    return RequestContext(
        services=SimpleNamespace(**services), principal=principal, loaders=None, log=None, request_id="r1"
    )


async def _collect(stream) -> list[tuple[str, float]]:
    return [(job.status, job.progress) async for job in stream]


async def test_job_progress_yields_the_job_then_only_changes_until_it_ends():
    jobs = ScriptedJobs(("QUEUED", 0.0), ("QUEUED", 0.0), ("RUNNING", 0.1), ("RUNNING", 0.1), ("RUNNING", 0.5),
                        ("SUCCEEDED", 1.0), ("SUCCEEDED", 1.0))
    seen = await _collect(job_progress(context(jobs=jobs, job_watch=JobWatch(poll_s=0)), id="j1"))
    assert seen == [("QUEUED", 0.0), ("RUNNING", 0.1), ("RUNNING", 0.5), ("SUCCEEDED", 1.0)]
    assert jobs.reads == 6  # no read after the terminal state


async def test_job_progress_of_a_finished_job_yields_it_once():
    jobs = ScriptedJobs(("FAILED", 0.3))
    assert await _collect(job_progress(context(jobs=jobs, job_watch=JobWatch(poll_s=0)), id="j1")) == [("FAILED", 0.3)]


async def test_job_progress_ends_when_the_job_disappears():
    jobs = ScriptedJobs(("RUNNING", 0.2), None)
    assert await _collect(job_progress(context(jobs=jobs, job_watch=JobWatch(poll_s=0)), id="j1")) == [("RUNNING", 0.2)]


@pytest.mark.parametrize("principal, error", [
    (Principal(tenant_id="t2", scope=Scope.ADMIN, key_id="k2"), NotFound),  # another tenant's job
    (Principal(tenant_id="t1", scope=Scope.PUBLIC, key_id="k3"), Forbidden),
    (None, Unauthenticated),
])
async def test_job_progress_refuses_like_the_job_query(principal, error):
    with pytest.raises(error):
        await anext(job_progress(context(principal, jobs=ScriptedJobs(("QUEUED", 0.0))), id="j1"))


async def test_metrics_refuses_a_foreign_scenario_and_a_process_without_redis():
    with pytest.raises(NotFound):
        await metrics_snapshot(context(scenarios=Scenarios(), live=None), scenario_id="theirs", window=None)
    with pytest.raises(Unavailable):
        await metrics_snapshot(context(scenarios=Scenarios(), live=None), scenario_id="mine", window=None)
    with pytest.raises(Forbidden):
        public = Principal(tenant_id="t1", scope=Scope.PUBLIC, key_id="k3")
        await metrics_snapshot(context(public, scenarios=Scenarios(), live=None), scenario_id="mine", window=None)


class Tenancy:
    async def authenticate(self, secret: str | None) -> Principal | None:
        return {"good": ADMIN}.get(secret or "")


@pytest.mark.parametrize("header, params, tenant", [
    (ADMIN, {}, "t1"),  # the upgrade header's key stands when the payload names none
    (None, {"Authorization": "Bearer good"}, "t1"),
    (None, {"authorization": "bearer good"}, "t1"),  # names and scheme are case-insensitive
    (ADMIN, {"Authorization": "Bearer wrong"}, None),  # the payload's key wins, even a bad one
    (None, {"Authorization": "good"}, None),  # not a bearer value
    (None, {"Authorization": 42}, None),
])
async def test_the_connection_init_key_replaces_the_upgrade_headers(header, params, tenant):
    ctx = await reauthenticate(context(header, tenancy=Tenancy()), params)
    assert (ctx.principal.tenant_id if ctx.principal else None) == tenant
    if tenant is None:
        with pytest.raises(ConnectionRejectionError):
            await WebSocketAuth().on_ws_connect(ctx)
    else:
        await WebSocketAuth().on_ws_connect(ctx)
