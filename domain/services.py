"""The domain services wired over one set of stores; built once by the app factory (and by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass, field

from domain.analytics.service import AnalyticsService
from domain.audit import AuditLog
from domain.background import BackgroundJobs, JobPolicy
from domain.catalogue import CatalogueService
from domain.events import EventService
from domain.experiments.outcomes import ExperimentOutcomes
from domain.experiments.results import ResultsService
from domain.experiments.routing import ExperimentRouter
from domain.experiments.service import ExperimentService
from domain.health import HealthService
from domain.hotcache import Invalidations
from domain.jobs import JobQueue, JobService
from domain.jobwatch import JobWatch
from domain.learning.registry import ModelVersionService
from domain.learning.service import LearningConfig, TrainingService
from domain.learning.tower_spaces import TowerSpaces
from domain.privacy import PrivacyService
from domain.profiles import ProfileService
from domain.ratelimit import RateLimits, RatePolicy
from domain.realtime.apply import REQUEST_TTL_S
from domain.realtime.impressions import impression_sink
from domain.realtime.live import LiveMetrics
from domain.realtime.readiness import STALL_S
from domain.realtime.returning import ReturningUsers
from domain.realtime.service import RealtimeService
from domain.realtime.stream import EventStream
from domain.recommend.service import EngineSource, RecommendationService
from domain.scenarios.service import ScenarioService
from domain.tenancy import TenancyService
from models.cache import USER_STATE_TTL_S, Cache, RedisCache
from models.channel import Channel
from models.vectors import VectorStore

INVALIDATIONS = "recograph:invalidations"  # the Redis channel of `Invalidations`


@dataclass(frozen=True)
class Services:
    tenancy: TenancyService
    scenarios: ScenarioService
    catalogue: CatalogueService
    profiles: ProfileService
    events: EventService
    privacy: PrivacyService
    recommendations: RecommendationService
    jobs: JobService
    training: TrainingService
    background: BackgroundJobs  # every job kind: submit, cancel, schedule fan-out, runs
    experiments: ExperimentService
    experiment_results: ResultsService  # results on demand, and the minute's refresh of running experiments
    model_versions: ModelVersionService  # the model registry: list, promote, roll back
    analytics: AnalyticsService  # series and statistics from the rollups, and the rollup passes
    experiment_router: ExperimentRouter | None = None  # which arm serves a user (serving processes)
    live: LiveMetrics | None = None  # live metrics snapshots and streams (need Redis)
    realtime: RealtimeService | None = None  # the event stream's consumer, catch-up and rebuilds (need Redis)
    invalidations: Invalidations | None = None  # cached entries other processes changed (serving processes listen)
    rate_limits: RateLimits = field(default_factory=lambda: RateLimits(None))  # per key and tenant, shared in Redis
    audit: AuditLog = field(default_factory=AuditLog)  # admin mutations, written by the GraphQL audit extension
    job_watch: JobWatch = field(default_factory=JobWatch)  # one poll per job however many follow it
    returning: ReturningUsers | None = None  # rebuilds returning users' expired state (serving processes run it)
    towers: TowerSpaces | None = None  # two-tower item vectors in the store: written, kept current, dropped
    health: HealthService | None = None  # the stores' state and a tenant's figures (`systemHealth`)

    @classmethod
    def build(
        cls, *, cache: Cache, vectors: VectorStore | None, engines: EngineSource | None = None,
        queue: JobQueue | None = None, learning: LearningConfig | None = None, jobs_policy: JobPolicy | None = None,
        windowed_listing: bool = False, rate_policy: RatePolicy | None = None, attribution_s: int = REQUEST_TTL_S,
        consumer_stall_s: float = STALL_S,
    ) -> Services:
        """Wire every service over the given stores (MongoDB is reached through Beanie); jobs are submitted to
        `queue` and trained as `learning` says (without them, submitting or training is refused);
        `windowed_listing` when MongoDB sorts every match before limiting (`models.mongo.sorts_every_match`);
        requests are limited as `rate_policy` says (default: `RatePolicy()`); events are attributed to a served
        page for `attribution_s` after it was served; the consumer counts as stuck on a tenant whose oldest waiting
        event is older than `consumer_stall_s`."""
        redis = cache.client if isinstance(cache, RedisCache) else None
        invalidations = Invalidations(Channel(redis, INVALIDATIONS) if redis is not None else None)
        scenarios = ScenarioService(cache, invalidations=invalidations)
        jobs = JobService(queue)
        catalogue = CatalogueService(cache, scenarios, windowed_listing=windowed_listing, invalidations=invalidations)
        profiles = ProfileService(cache, redis)
        towers = TowerSpaces(vectors, scenarios, models_dir=learning.models_dir if learning else None, queue=queue)
        catalogue.on_written(towers.request_sync)  # the item-vector job gives new items their vectors
        scenarios.on_delete(towers.drop_scenario)
        analytics = AnalyticsService(scenarios)
        scenarios.on_delete(analytics.drop_scenario)
        training = TrainingService(jobs, scenarios, vectors=vectors, config=learning, towers=towers)
        user_ttl_s = cache.user_ttl_s if isinstance(cache, RedisCache) else USER_STATE_TTL_S
        realtime = (RealtimeService(redis, catalogue, scenarios, user_ttl_s=user_ttl_s, attribution_s=attribution_s)
                    if redis is not None else None)
        returning = (ReturningUsers(redis, realtime.processor, user_ttl_s=user_ttl_s)
                     if redis is not None and realtime is not None else None)
        outcomes = ExperimentOutcomes(redis)
        router = ExperimentRouter(outcomes if redis is not None else None, invalidations=invalidations)

        async def experiments_changed(tenant_id: str, scenario_id: str) -> None:
            # Our own notices do not come back to us: drop this process's copy, then tell the others.
            router.forget(tenant_id, [scenario_id])
            await invalidations.publish("experiments", tenant_id, [scenario_id])

        results = ResultsService(outcomes, on_weights=experiments_changed)
        experiments = ExperimentService(scenarios, invalidations=invalidations, outcomes=outcomes, results=results)
        experiments.on_change(router.forget)  # this process's own changes reach its router at once
        return cls(
            tenancy=TenancyService(invalidations),
            scenarios=scenarios,
            catalogue=catalogue,
            profiles=profiles,
            events=EventService(cache, scenarios, catalogue,
                                EventStream(redis, user_ttl_s=user_ttl_s) if redis is not None else None,
                                returning=returning),
            privacy=PrivacyService(cache, vectors, scenarios, profiles, learning=learning, realtime=realtime,
                                   outcomes=outcomes, analytics=analytics),
            recommendations=RecommendationService(
                cache, scenarios, profiles, engines, impressions=impression_sink(redis) if redis is not None else None,
                returning=returning, router=router,
            ),
            jobs=jobs,
            training=training,
            # Warming answers is not showing them: its own RecommendationService, with no impression sink.
            background=BackgroundJobs.wire(jobs, scenarios, training, RecommendationService(cache, scenarios, profiles,
                                           engines), cache=cache, learning=learning, policy=jobs_policy),
            experiments=experiments,
            experiment_results=results,
            model_versions=ModelVersionService(scenarios, learning=learning),
            analytics=analytics,
            experiment_router=router,
            live=LiveMetrics.over(cache),
            realtime=realtime,
            invalidations=invalidations,
            rate_limits=RateLimits.over(redis, rate_policy or RatePolicy()),
            returning=returning,
            towers=towers,
            health=HealthService(
                redis=redis, vectors=vectors, dead_letters=realtime.dead_letters if realtime is not None else None,
                breakers={b.name: b for b in (getattr(cache, "breaker", None), getattr(vectors, "breaker", None))
                          if b is not None},
                stall_s=consumer_stall_s,
            ),
        )
