"""System health (issue 13) on fakes and small servers: how a store's state is judged, a Redis that never answers
reported down within the probe's bound while every probe runs at once, breakers, and the admin-only resolver."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from types import SimpleNamespace

import pytest
from graphql import build_schema
from redis.asyncio import Redis

from domain.errors import Forbidden, Unavailable
from domain.health import DEGRADED, DOWN, OK, HealthService, judge_store
from domain.ids import new_id
from domain.jobs import JobService
from domain.realtime.deadletters import DeadLetters
from domain.tenancy import Principal, Scope
from graph.schema import schema
from models.breaker import BreakerState
from models.vectors.fake import InMemoryVectorStore
from models.vectors.guarded import guard
from resolvers.context import RequestContext
from resolvers.health import system_health


@pytest.mark.parametrize(("kwargs", "state", "detail"), [
    ({"error": None, "seconds": 0.002}, OK, None),
    ({"error": None, "seconds": 0.002, "breaker": BreakerState.CLOSED}, OK, None),
    ({"error": None, "seconds": 0.002, "breaker": BreakerState.OPEN}, DEGRADED, "circuit breaker open"),
    ({"error": None, "seconds": 0.002, "breaker": BreakerState.HALF_OPEN}, DEGRADED, "circuit breaker half-open"),
    ({"error": None, "seconds": 0.7}, DEGRADED, "slow: answered in 700 ms"),
    ({"error": None, "seconds": 0.002, "concern": "memory high"}, DEGRADED, "memory high"),
    ({"error": "no answer within 1 s", "seconds": 1.0}, DOWN, "no answer within 1 s"),
    ({"error": "unreachable (ConnectionError)", "seconds": 0.0, "breaker": BreakerState.OPEN}, DOWN,
     "unreachable (ConnectionError); circuit breaker open"),
])
def test_system_health_judges_a_store_from_its_probe_and_breaker(kwargs, state, detail):
    store = judge_store("redis", **kwargs)
    assert store.state == state
    assert (store.detail is None) if detail is None else detail in store.detail
    assert (store.latency_ms is None) == (state == DOWN)


@pytest.fixture
async def black_hole() -> AsyncIterator[int]:
    """A TCP port that accepts connections and never answers (a Redis that hangs)."""
    held: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)
        await reader.read()

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in held:
        writer.close()
    server.close()


async def test_system_health_a_hanging_redis_is_down_within_the_bound_and_probes_run_at_once(served, black_hole):
    redis = Redis(host="127.0.0.1", port=black_hole)
    health = HealthService(redis=redis, vectors=InMemoryVectorStore(), dead_letters=DeadLetters(redis), timeout_s=0.5)
    tenant = new_id("tn")
    await JobService().create("cleanup", tenant_id=tenant, scenario_id=None)  # QUEUED: looked up in arq's queue
    began = time.monotonic()
    try:
        report = await health.check(tenant_id=tenant)
    finally:
        await redis.aclose()
    elapsed = time.monotonic() - began
    # Six Redis reads hang for 0.5 s each: one after the other they would take 3 s or more.
    assert elapsed < 1.6, elapsed
    stores = {s.name: s for s in report.stores}
    assert stores["redis"].state == DOWN and stores["redis"].detail == "no answer within 0.5 s"
    assert stores["mongodb"].state in (OK, DEGRADED) and stores["vectors"].state == OK
    assert report.status == DOWN
    assert set(report.unavailable) == {"consumerLag", "consumerStuck", "deadLetters", "queueDepth"}
    assert report.consumer_state == "unknown" and not report.consumer_stuck
    assert (report.consumer_lag, report.dead_letters) == (0, 0)
    assert report.queue_depth == 1  # the queue could not be read: the QUEUED record counts
    assert report.scenarios == ()  # MongoDB answered: a new tenant has none, and they are not unavailable


class SilentVectors(InMemoryVectorStore):
    async def ping(self) -> bool:
        return False


async def test_system_health_vectors_behind_an_open_breaker_are_degraded_and_silent_ones_down(served):
    guarded = guard(InMemoryVectorStore(), failures=1, cooldown_s=60)

    async def refused() -> None:
        raise OSError("connection refused")

    with pytest.raises(OSError):
        await guarded.breaker.call(refused)
    assert guarded.breaker.state is BreakerState.OPEN
    report = await HealthService(redis=None, vectors=guarded, breakers={"vectors": guarded.breaker}).check(
        tenant_id=new_id("tn"))
    vectors = next(s for s in report.stores if s.name == "vectors")
    assert vectors.state == DEGRADED and "circuit breaker open" in vectors.detail  # the store itself answers
    assert vectors.latency_ms is not None

    report = await HealthService(redis=None, vectors=SilentVectors()).check(tenant_id=new_id("tn"))
    vectors = next(s for s in report.stores if s.name == "vectors")
    assert (vectors.state, vectors.detail) == (DOWN, "unreachable (ConnectionError)")
    await guarded.close()


async def test_system_health_without_a_vector_store_in_the_process_reports_it_ok(served):
    report = await HealthService(redis=None, vectors=None).check(tenant_id=new_id("tn"))
    vectors = next(s for s in report.stores if s.name == "vectors")
    assert vectors.state == OK and "not opened by this process" in vectors.detail


class Recorded:
    def __init__(self) -> None:
        self.tenants: list[str] = []

    async def check(self, *, tenant_id: str) -> str:
        self.tenants.append(tenant_id)
        return "report"


def _ctx(scope: Scope | None, health=None) -> RequestContext:
    principal = None if scope is None else Principal(tenant_id="t_mine", scope=scope, key_id="k1")
    return RequestContext(services=SimpleNamespace(health=health), principal=principal, loaders=None, log=None,
                          request_id="r1")


@pytest.mark.parametrize("scope", [Scope.PUBLIC, Scope.GATEWAY])
async def test_system_health_is_for_admin_keys_only(scope):
    health = Recorded()
    with pytest.raises(Forbidden):
        await system_health(_ctx(scope, health))
    assert health.tenants == []


async def test_system_health_reads_the_keys_tenant_only():
    health = Recorded()
    assert await system_health(_ctx(Scope.ADMIN, health)) == "report"
    assert health.tenants == ["t_mine"]
    with pytest.raises(Unavailable):
        await system_health(_ctx(Scope.ADMIN, None))


CONTRACT = """
scalar DateTime
type StoreHealth { name: String! state: String! latencyMs: Float detail: String }
type ScenarioServing { scenarioId: ID! name: String! modelVersion: Int modelTrainedAt: DateTime modelAgeSeconds: Float }
type SystemHealth {
  status: String! checkedAt: DateTime! stores: [StoreHealth!]! consumerLag: Int! consumerStuck: Boolean!
  deadLetters: Int! queueDepth: Int! runningJobs: Int! failedJobs: Int! scenarios: [ScenarioServing!]!
}
type Query { systemHealth: SystemHealth! }
"""


def test_system_health_keeps_the_dashboards_contract():
    served = schema._schema
    for name, wanted in build_schema(CONTRACT).type_map.items():
        if name.startswith("__") or not hasattr(wanted, "fields"):
            continue
        found = served.type_map[name]
        for field, spec in wanted.fields.items():
            assert str(found.fields[field].type) == str(spec.type), f"{name}.{field}"
            assert not found.fields[field].args, f"{name}.{field}"
