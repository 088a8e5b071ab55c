"""System health types: each store's state, the tenant's consumer and jobs, and each scenario's serving model."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain.health import ScenarioServing as ScenarioServingData
from domain.health import StoreHealth as StoreHealthData
from domain.health import SystemHealth as SystemHealthData


@strawberry.type(description="One store (`mongodb`, `redis`, `vectors`) as a 1 s probe found it.")
class StoreHealth:
    name: str
    state: str = strawberry.field(description="`ok`; `degraded`: it answers, but its circuit breaker is not closed, "
                                  "it was slower than 500 ms, or (Redis) it uses over 90% of its maxmemory; `down`: "
                                  "it failed or did not answer within 1 s.")
    latency_ms: float | None = strawberry.field(description="The ping's round trip in milliseconds (null: down).")
    detail: str | None = strawberry.field(description="Why it is not `ok` (the kind of failure, never its text).")

    @classmethod
    def from_domain(cls, store: StoreHealthData) -> StoreHealth:
        """Convert a store's health."""
        return cls(name=store.name, state=store.state, latency_ms=store.latency_ms, detail=store.detail)


@strawberry.type(description="A scenario and the version of its model that serves it (its `champion`).")
class ScenarioServing:
    scenario_id: strawberry.ID
    name: str
    model_version: int | None = strawberry.field(description="The serving version's number (null: none trained).")
    model_trained_at: datetime | None = strawberry.field(description="When its artifact was complete.")
    model_age_seconds: float | None = strawberry.field(description="Seconds since then.")

    @classmethod
    def from_domain(cls, serving: ScenarioServingData) -> ScenarioServing:
        """Convert a scenario's serving model."""
        return cls(scenario_id=strawberry.ID(serving.scenario_id), name=serving.name,
                   model_version=serving.model_version, model_trained_at=serving.model_trained_at,
                   model_age_seconds=serving.model_age_s)


@strawberry.type(description="The stores' state and your tenant's real-time consumer, dead letters, jobs and "
                 "serving models. A store that is down is reported `down`, never as an error: the figures it holds "
                 "are named in `unavailable`.")
class SystemHealth:
    status: str = strawberry.field(description="The worst store's state: `ok`, `degraded` or `down`.")
    checked_at: datetime
    stores: list[StoreHealth] = strawberry.field(description="`mongodb`, `redis`, `vectors`.")
    consumer_lag: int = strawberry.field(
        description="Your events (and served pages) accepted but not yet applied: not yet delivered to the consumer, "
        "or delivered and not acknowledged (counted up to 10,000 on Redis 6.2).")
    consumer_stuck: bool = strawberry.field(
        description="Whether your oldest waiting event waited longer than the stall limit (30 s by default), or "
        "events wait and no consumer runs.")
    consumer_state: str = strawberry.field(
        description="`ok`, `stalled`, `absent` (events wait and no consumer runs) or `unknown` (Redis unreadable).")
    dead_letters: int = strawberry.field(description="Your dead letters (see `deadLetters`).")
    queue_depth: int = strawberry.field(description="Your jobs in the job queue (arq), not started yet.")
    running_jobs: int = strawberry.field(description="Your jobs running now.")
    failed_jobs: int = strawberry.field(description="Your jobs that failed in the last 24 hours.")
    scenarios: list[ScenarioServing] = strawberry.field(description="Your scenarios, oldest first (at most 500).")
    unavailable: list[str] = strawberry.field(
        description="Figures that could not be read in full because their store failed or was slow (e.g. "
        "`consumerLag`, `queueDepth`, `scenarios`); they read 0, false or empty, or, for `queueDepth`, your queued "
        "job records.")

    @classmethod
    def from_domain(cls, health: SystemHealthData) -> SystemHealth:
        """Convert a health report."""
        return cls(
            status=health.status, checked_at=health.checked_at,
            stores=[StoreHealth.from_domain(s) for s in health.stores], consumer_lag=health.consumer_lag,
            consumer_stuck=health.consumer_stuck, consumer_state=health.consumer_state,
            dead_letters=health.dead_letters, queue_depth=health.queue_depth, running_jobs=health.running_jobs,
            failed_jobs=health.failed_jobs, scenarios=[ScenarioServing.from_domain(s) for s in health.scenarios],
            unavailable=list(health.unavailable),
        )
