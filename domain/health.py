"""System health as a tenant's admin sees it: each store's state and latency, the tenant's events waiting for the
consumer and its dead letters, its jobs, and the model each of its scenarios serves.

Every probe runs at once and each is bounded (`timeout_s`, 1 s): a store that fails or does not answer in time is
reported `down` with why, and the figures read from it are named in `unavailable` (they read 0, or as far as they
got) instead of failing the whole report. A store that answers is `degraded` when its circuit breaker is not closed
(serving calls to it still fail fast), when it took longer than `slow_ms`, or, for Redis, above 90% of its
`maxmemory`. Pings go past the breakers, so the report says whether the store itself answers.

Tenancy: every figure but the stores' state is the tenant's own. `consumerLag` counts its stream's entries accepted
and not yet applied (not yet delivered to the consumer group, or delivered and not acknowledged; counted up to
LAG_COUNT_LIMIT on Redis 6.2, which does not count them itself); `consumerStuck` says whether its own oldest waiting
entry waited longer than `stall_s` (or entries wait and no consumer runs); arq's queue holds every tenant's jobs, and
only this tenant's queued job ids are looked up in it. Error texts never leave: a detail names the kind of failure,
and the log has the rest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Generic, TypeVar

import structlog
from redis import asyncio as aioredis

from domain.errors import Unavailable
from domain.ids import utcnow
from domain.jobs import JobStatus, abandoned
from domain.learning.versions import CHAMPION, MODEL_KIND
from domain.realtime.backlog import read_tenant_backlog
from domain.realtime.deadletters import DeadLetters
from domain.realtime.readiness import STALL_S, consumer_readiness
from models.breaker import BreakerState, CircuitBreaker
from models.documents import Job, ModelVersion, Scenario
from models.redis_guard import GuardedRedis, RedisCircuitOpen
from models.redis_memory import memory_use
from models.vectors import VectorStore
from models.vectors.guarded import GuardedVectorStore, VectorStoreUnavailable

log = structlog.get_logger()

T = TypeVar("T")

PROBE_TIMEOUT_S = 1.0  # each probe's bound: a store slower than this is reported down
SLOW_MS = 500.0  # a store that answers slower than this is degraded
LAG_COUNT_LIMIT = 10_000  # entries past the group's cursor counted on Redis 6.2
MAX_SCENARIOS = 500  # scenarios reported, oldest first
MAX_ACTIVE_JOBS = 1000  # queued and running jobs read (one per kind and target at most: far fewer in practice)
FAILED_WINDOW = timedelta(hours=24)
ARQ_QUEUE = "arq:queue"  # arq's queue (arq.constants.default_queue_name): a sorted set of job ids, due time as score
OK, DEGRADED, DOWN = "ok", "degraded", "down"
_RANK = {OK: 0, DEGRADED: 1, DOWN: 2}


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """One store: `state` is ok, degraded or down; `detail` says why when it is not ok."""

    name: str
    state: str
    latency_ms: float | None = None  # the ping's round trip (None: no answer)
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class ScenarioServing:
    """A scenario and the version of its model that serves it (None: no model trained yet)."""

    scenario_id: str
    name: str
    model_version: int | None = None
    model_trained_at: datetime | None = None
    model_age_s: float | None = None


@dataclass(frozen=True, slots=True)
class SystemHealth:
    """What `systemHealth` reports for one tenant."""

    status: str  # the worst store's state
    checked_at: datetime
    stores: tuple[StoreHealth, ...]
    consumer_lag: int
    consumer_stuck: bool
    consumer_state: str  # ok, stalled, absent (entries wait and no consumer runs) or unknown (Redis unreadable)
    dead_letters: int
    queue_depth: int
    running_jobs: int
    failed_jobs: int
    scenarios: tuple[ScenarioServing, ...]
    unavailable: tuple[str, ...]  # figures that could not be read in full


@dataclass(frozen=True, slots=True)
class JobRecords:
    """The tenant's job records: QUEUED ones (ids), RUNNING ones, and those that FAILED in the last FAILED_WINDOW;
    active jobs whose worker died without finishing them are left out."""

    queued_ids: tuple[str, ...]
    running: int
    failed: int


@dataclass(frozen=True, slots=True)
class _Outcome(Generic[T]):
    value: T | None
    error: str | None
    seconds: float


class HealthService:
    """Probe the stores and read one tenant's figures, every probe at once and each within `timeout_s`."""

    def __init__(
        self, *, redis: aioredis.Redis | None, vectors: VectorStore | None,
        breakers: Mapping[str, CircuitBreaker] | None = None, dead_letters: DeadLetters | None = None,
        stall_s: float = STALL_S, timeout_s: float = PROBE_TIMEOUT_S, slow_ms: float = SLOW_MS,
    ) -> None:
        self._r = redis
        self._vectors = vectors
        self._breakers = dict(breakers or {})
        self._dead = dead_letters
        self._stall_s, self._timeout_s, self._slow_ms = stall_s, timeout_s, slow_ms

    async def check(self, *, tenant_id: str) -> SystemHealth:
        """Return the stores' state and the tenant's figures; never raises for a store that is down."""
        now = utcnow()
        probes: dict[str, Callable[[], Awaitable[Any]]] = {
            "mongodb": _ping_mongo, "redis": self._ping_redis, "vectors": self._ping_vectors,
            "memory": self._memory_high, "consumerLag": lambda: self._backlog(tenant_id),
            "consumerStuck": lambda: self._consumer(tenant_id), "deadLetters": lambda: self._dead_letters(tenant_id),
            "scenarios": lambda: serving(tenant_id, now),
        }
        *found, (records, queue) = await asyncio.gather(
            *(self._bounded(name, probe) for name, probe in probes.items()), self._jobs(tenant_id, now))
        outcomes = dict(zip(probes, found, strict=True))
        stores = self._stores(outcomes)
        unavailable = [name for name in ("consumerLag", "consumerStuck", "deadLetters") if outcomes[name].error]
        jobs = records.value or JobRecords((), 0, 0)
        if records.error is not None:
            unavailable += ["queueDepth", "runningJobs", "failedJobs"]
        elif queue.error is not None:
            unavailable.append("queueDepth")
        if outcomes["scenarios"].error is not None:
            unavailable.append("scenarios")
        consumer = outcomes["consumerStuck"].value
        return SystemHealth(
            status=max((s.state for s in stores), key=_RANK.__getitem__), checked_at=now, stores=stores,
            consumer_lag=outcomes["consumerLag"].value or 0, consumer_stuck=consumer not in (None, "ok"),
            consumer_state=consumer or "unknown", dead_letters=outcomes["deadLetters"].value or 0,
            queue_depth=queue.value if queue.value is not None else len(jobs.queued_ids),
            running_jobs=jobs.running, failed_jobs=jobs.failed, scenarios=outcomes["scenarios"].value or (),
            unavailable=tuple(unavailable),
        )

    def _stores(self, outcomes: Mapping[str, _Outcome]) -> tuple[StoreHealth, ...]:
        memory = outcomes["memory"]
        concern = "memory above 90% of maxmemory: writes may soon be refused" if memory.value else None
        stores = []
        for name in ("mongodb", "redis", "vectors"):
            probe = outcomes[name]
            if name == "vectors" and self._vectors is None:
                stores.append(StoreHealth(name, OK, None, "not opened by this process: it searches the models' "
                                                          "embeddings in memory"))
                continue
            breaker = self._breakers.get(name)
            stores.append(judge_store(name, error=probe.error, seconds=probe.seconds, slow_ms=self._slow_ms,
                                      breaker=breaker.state if breaker is not None else None,
                                      concern=concern if name == "redis" else None))
        return tuple(stores)

    async def _bounded(self, name: str, probe: Callable[[], Awaitable[T]]) -> _Outcome[T]:
        """Run a probe within timeout_s; return its value or why it failed, and how long it took."""
        began = time.perf_counter()
        try:
            value = await asyncio.wait_for(probe(), self._timeout_s)
        except TimeoutError:
            error = f"no answer within {self._timeout_s:g} s"
        except Exception as exc:  # noqa: BLE001 - whatever failed is reported, never raised
            log.warning("health.probe_failed", probe=name, error=repr(exc))
            error = _describe(exc)
        else:
            return _Outcome(value, None, time.perf_counter() - began)
        return _Outcome(None, error, time.perf_counter() - began)

    async def _ping_redis(self) -> bool:
        client = self._redis()
        ping = client.unguarded_ping if isinstance(client, GuardedRedis) else client.ping
        if not await ping():
            raise ConnectionError("Redis does not answer a ping")
        return True

    async def _ping_vectors(self) -> bool:
        if self._vectors is None:
            return True
        store = self._vectors.store if isinstance(self._vectors, GuardedVectorStore) else self._vectors
        if not await store.ping():
            raise ConnectionError("the vector store does not answer a ping")
        return True

    async def _memory_high(self) -> bool:
        return (await memory_use(self._redis())).high

    async def _backlog(self, tenant_id: str) -> int:
        found = await read_tenant_backlog(self._redis(), tenant_id=tenant_id, count_limit=LAG_COUNT_LIMIT)
        return found.lag + found.pending

    async def _consumer(self, tenant_id: str) -> str:
        return (await consumer_readiness(self._redis(), stall_s=self._stall_s, tenant_ids=[tenant_id])).status

    async def _dead_letters(self, tenant_id: str) -> int:
        if self._dead is None:
            raise ConnectionError("dead letters live in Redis, which this process does not use")
        return await self._dead.count(tenant_id=tenant_id)

    async def _jobs(self, tenant_id: str, now: datetime) -> tuple[_Outcome[JobRecords], _Outcome[int]]:
        """Read the tenant's job records, then look its queued ones up in arq's queue (each read bounded)."""
        records = await self._bounded("jobs", lambda: job_records(tenant_id, now))
        if records.value is None:
            return records, _Outcome(None, records.error, 0.0)
        queued = list(records.value.queued_ids)
        return records, await self._bounded("queueDepth", lambda: self._in_arq_queue(queued))

    async def _in_arq_queue(self, job_ids: list[str]) -> int:
        """Return how many of the job ids arq's queue holds (ZMSCORE: the queue is read for these ids only)."""
        if not job_ids:
            return 0
        scores = await self._redis().zmscore(ARQ_QUEUE, job_ids)
        return sum(score is not None for score in scores)

    def _redis(self) -> aioredis.Redis:
        if self._r is None:
            raise ConnectionError("this process has no Redis client")
        return self._r


async def job_records(tenant_id: str, now: datetime) -> JobRecords:
    """Return the tenant's queued and running jobs, and how many failed in the FAILED_WINDOW before now."""
    active, failed = await asyncio.gather(
        Job.find({"tenant_id": tenant_id, "active": True}).limit(MAX_ACTIVE_JOBS).to_list(),
        Job.get_pymongo_collection().count_documents(
            {"tenant_id": tenant_id, "status": JobStatus.FAILED, "finished_at": {"$gte": now - FAILED_WINDOW}}),
    )
    live = [job for job in active if not abandoned(job, now)]
    return JobRecords(queued_ids=tuple(job.id for job in live if job.status == JobStatus.QUEUED),
                      running=sum(job.status == JobStatus.RUNNING for job in live), failed=int(failed))


async def _ping_mongo() -> bool:
    await Job.get_pymongo_collection().database.command("ping")
    return True


async def serving(tenant_id: str, now: datetime) -> tuple[ScenarioServing, ...]:
    """Return the tenant's scenarios, oldest first (at most MAX_SCENARIOS), each with its champion model version."""
    scenarios = await Scenario.get_pymongo_collection().find(
        {"tenant_id": tenant_id}, {"_id": 1, "name": 1}).sort("_id").limit(MAX_SCENARIOS).to_list(None)
    champions = await ModelVersion.get_pymongo_collection().find(
        {"tenant_id": tenant_id, "kind": MODEL_KIND, "aliases": CHAMPION,
         "scenario_id": {"$in": [s["_id"] for s in scenarios]}},
        {"scenario_id": 1, "version": 1, "trained_at": 1, "created_at": 1, "activated_at": 1},
    ).to_list(None)
    # While a promotion is half-written two versions may hold the alias: the one promoted last serves.
    champions.sort(key=lambda d: d.get("activated_at") or d["created_at"])
    by_scenario = {d["scenario_id"]: d for d in champions}
    return tuple(_serving(s, by_scenario.get(s["_id"]), now) for s in scenarios)


def _serving(scenario: Mapping[str, Any], champion: Mapping[str, Any] | None, now: datetime) -> ScenarioServing:
    if champion is None:
        return ScenarioServing(scenario_id=scenario["_id"], name=scenario["name"])
    trained = champion.get("trained_at") or champion["created_at"]
    return ScenarioServing(scenario_id=scenario["_id"], name=scenario["name"], model_version=int(champion["version"]),
                           model_trained_at=trained, model_age_s=max((now - trained).total_seconds(), 0.0))


def judge_store(
    name: str, *, error: str | None, seconds: float, breaker: BreakerState | None = None, concern: str | None = None,
    slow_ms: float = SLOW_MS,
) -> StoreHealth:
    """Return a store's state: down when its probe failed, degraded when it answered but its breaker is not closed,
    it was slower than slow_ms or it has a concern, ok otherwise."""
    open_breaker = breaker is not None and breaker is not BreakerState.CLOSED
    if error is not None:
        detail = f"{error}; circuit breaker {breaker.label}" if open_breaker and breaker is not None else error
        return StoreHealth(name, DOWN, None, detail)
    latency_ms = round(seconds * 1000, 3)
    problems = []
    if open_breaker and breaker is not None:
        problems.append(f"circuit breaker {breaker.label}: serving calls fail fast until its probe finds the store "
                        f"answering")
    if latency_ms > slow_ms:
        problems.append(f"slow: answered in {latency_ms:.0f} ms")
    if concern:
        problems.append(concern)
    return StoreHealth(name, DEGRADED if problems else OK, latency_ms, "; ".join(problems) or None)


def _describe(exc: BaseException) -> str:
    """Say what kind of failure a probe met, without its text (addresses and server messages stay in the log)."""
    cause = exc.__cause__ if isinstance(exc, Unavailable) and exc.__cause__ is not None else exc
    if isinstance(cause, (RedisCircuitOpen, VectorStoreUnavailable)):
        return "not asked: its circuit breaker is open"
    if isinstance(cause, TimeoutError):
        return "timed out"
    return f"unreachable ({type(cause).__name__})"
