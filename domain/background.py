"""Background work by kind: submit a job (one active per kind and scenario), cancel one, fan a kind out to every
scenario (what the schedules do), and run one attempt of the kinds other than TRAIN.

Each run method is what one arq function calls; it wraps the work in JobService.run, which records RUNNING,
progress, the outcome and the attempt count, and enforces the kind's time limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

from domain.errors import DomainError, NotFound, Unavailable
from domain.jobs import JOB_FUNCTIONS, JobKind, JobService, Report
from domain.learning.service import LearningConfig, TrainingService
from domain.maintenance import CleanupPolicy, MaintenanceService
from domain.precompute import CandidatePolicy, CandidateService
from domain.recommend.service import RecommendationService
from domain.scenarios.service import ScenarioService
from domain.tenancy import TenancyService
from models.cache import Cache
from models.documents import Job

log = structlog.get_logger()

Progress = Callable[[float], Awaitable[None]]
DEFAULT_LIMITS_S: Mapping[str, float] = {
    JobKind.SIMILARITY: 900.0, JobKind.PROFILES: 1800.0, JobKind.CANDIDATES: 1800.0, JobKind.CLEANUP: 900.0,
}
NO_REBUILDER = "profile rebuild is not available in this process (no real-time service to replay events)"


class ProfileRebuilder(Protocol):
    async def rebuild(self, *, tenant_id: str, scenario_id: str, progress: Progress) -> int:
        """Rebuild the scenario's user profiles from its stored events; return how many were replayed."""
        ...


@dataclass(frozen=True)
class JobPolicy:
    """Time limits of the kinds other than TRAIN (whose limit is the training's), and what they work on."""

    time_limits_s: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_LIMITS_S))
    candidates: CandidatePolicy = field(default_factory=CandidatePolicy)
    cleanup: CleanupPolicy = field(default_factory=CleanupPolicy)


@dataclass(frozen=True)
class FanOut:
    """What one schedule tick did: jobs queued, scenarios whose job of that kind was still active, refusals."""

    submitted: list[str]
    already_active: list[str]
    refused: list[str]


class BackgroundJobs:
    """Submit, cancel and run background jobs of every kind, scoped by tenant."""

    def __init__(
        self, jobs: JobService, scenarios: ScenarioService, tenancy: TenancyService, training: TrainingService,
        candidates: CandidateService, maintenance: MaintenanceService, policy: JobPolicy | None = None,
    ) -> None:
        self._jobs = jobs
        self._scenarios = scenarios
        self._tenancy = tenancy
        self._training = training
        self._candidates = candidates
        self._maintenance = maintenance
        self._policy = policy or JobPolicy()

    @classmethod
    def wire(
        cls, jobs: JobService, scenarios: ScenarioService, training: TrainingService,
        recommendations: RecommendationService, *, cache: Cache, learning: LearningConfig | None,
        policy: JobPolicy | None,
    ) -> BackgroundJobs:
        """Build the service and the ones it runs over the given stores."""
        policy = policy or JobPolicy()
        models_dir = learning.models_dir if learning is not None else None
        return cls(
            jobs, scenarios, TenancyService(), training,
            CandidateService(recommendations, scenarios, policy.candidates),
            MaintenanceService(cache, models_dir=models_dir, policy=policy.cleanup), policy,
        )

    def time_limit_s(self, kind: JobKind) -> float | None:
        """Return how long one attempt of `kind` may run."""
        if kind in (JobKind.TRAIN, JobKind.SIMILARITY):
            return self._training.time_limit_s(kind.value)
        return self._policy.time_limits_s.get(kind, DEFAULT_LIMITS_S[kind])

    async def submit(self, kind: JobKind | str, scenario_id: str, *, tenant_id: str) -> Job:
        """Queue `kind` for the scenario, or return the job of that kind already queued or running for it."""
        kind = JobKind(kind)
        if kind is JobKind.TRAIN:
            return await self._training.submit(scenario_id, tenant_id=tenant_id)
        await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
        if kind is JobKind.SIMILARITY and self.time_limit_s(kind) is None:
            raise Unavailable("training is not available in this process")
        return await self._jobs.submit(kind.value, JOB_FUNCTIONS[kind], tenant_id=tenant_id, scenario_id=scenario_id,
                                       time_limit_s=self.time_limit_s(kind))

    async def cancel(self, job_id: str, *, tenant_id: str) -> Job:
        """Cancel a QUEUED or RUNNING job (its worker stops it); NotFound or BadInput (finished) otherwise."""
        return await self._jobs.cancel_or_raise(job_id, tenant_id=tenant_id)

    async def fan_out(self, kind: JobKind | str) -> FanOut:
        """Submit `kind` for every scenario of every tenant; a scenario whose job is still active gets no second."""
        kind = JobKind(kind)
        done = FanOut(submitted=[], already_active=[], refused=[])
        for tenant in await self._tenancy.list_tenants():
            for scenario_id in await self._scenarios.ids(tenant_id=tenant.id):
                await self._submit_one(kind, scenario_id, tenant.id, done)
        log.info("jobs.fanned_out", kind=kind.value, submitted=len(done.submitted),
                 already_active=len(done.already_active), refused=len(done.refused))
        return done

    async def _submit_one(self, kind: JobKind, scenario_id: str, tenant_id: str, done: FanOut) -> None:
        if await self._jobs.active_for(kind.value, scenario_id, tenant_id=tenant_id) is not None:
            done.already_active.append(scenario_id)
            return
        try:
            job = await self.submit(kind, scenario_id, tenant_id=tenant_id)
        except DomainError as exc:  # one scenario's refusal (deleted meanwhile, queue down) does not stop the rest
            log.warning("jobs.fan_out_refused", kind=kind.value, scenario_id=scenario_id, error=exc.message)
            done.refused.append(scenario_id)
            return
        done.submitted.append(job.id)

    async def refresh_similarity(self, job_id: str, *, tenant_id: str, scenario_id: str, attempt: int,
                                 may_retry: bool) -> dict[str, Any] | None:
        """Run a SIMILARITY attempt: refit item-CF and content embeddings over the served catalogue, swap them in."""
        return await self._training.refresh_similarity(job_id, tenant_id=tenant_id, scenario_id=scenario_id,
                                                       attempt=attempt, may_retry=may_retry)

    async def rebuild_profiles(self, job_id: str, *, tenant_id: str, scenario_id: str, attempt: int, may_retry: bool,
                               rebuilder: ProfileRebuilder | None) -> dict[str, Any] | None:
        """Run a PROFILES attempt: replay the scenario's events from MongoDB into its users' profiles."""
        async def work(report: Report) -> dict[str, Any]:
            if rebuilder is None:
                raise Unavailable(NO_REBUILDER)
            await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)

            async def progress(fraction: float) -> None:
                await report(fraction, "replaying events")

            replayed = await rebuilder.rebuild(tenant_id=tenant_id, scenario_id=scenario_id, progress=progress)
            return {"eventsReplayed": int(replayed)}

        return await self._jobs.run(job_id, tenant_id=tenant_id, attempt=attempt, may_retry=may_retry, work=work,
                                    expected=(NotFound,))

    async def precompute_candidates(self, job_id: str, *, tenant_id: str, scenario_id: str, attempt: int,
                                    may_retry: bool) -> dict[str, Any] | None:
        """Run a CANDIDATES attempt: warm the cached answers of the scenario's recently active users."""
        async def work(report: Report) -> dict[str, Any]:
            return await self._candidates.warm(tenant_id=tenant_id, scenario_id=scenario_id, report=report)

        return await self._jobs.run(job_id, tenant_id=tenant_id, attempt=attempt, may_retry=may_retry, work=work)

    async def cleanup(self, job_id: str, *, tenant_id: str, scenario_id: str, attempt: int,
                      may_retry: bool) -> dict[str, Any] | None:
        """Run a CLEANUP attempt: old artifacts, job records, expired interactions and orphan Redis keys."""
        async def work(report: Report) -> dict[str, Any]:
            return await self._maintenance.cleanup(tenant_id=tenant_id, scenario_id=scenario_id, report=report)

        return await self._jobs.run(job_id, tenant_id=tenant_id, attempt=attempt, may_retry=may_retry, work=work)
