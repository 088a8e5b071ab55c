"""The domain services wired over one set of stores; built once by the app factory (and by the CLI)."""

from __future__ import annotations

from dataclasses import dataclass

from domain.catalogue import CatalogueService
from domain.events import EventService
from domain.jobs import JobQueue, JobService
from domain.learning.service import LearningConfig, TrainingService
from domain.privacy import PrivacyService
from domain.profiles import ProfileService
from domain.recommend.service import EngineSource, RecommendationService
from domain.scenarios.service import ScenarioService
from domain.tenancy import TenancyService
from models.cache import Cache
from models.vectors import VectorStore


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

    @classmethod
    def build(
        cls, *, cache: Cache, vectors: VectorStore | None, engines: EngineSource | None = None,
        queue: JobQueue | None = None, learning: LearningConfig | None = None,
    ) -> Services:
        """Wire every service over the given stores (MongoDB is reached through Beanie); jobs are submitted to
        `queue` and trained as `learning` says (without them, submitting or training is refused)."""
        scenarios = ScenarioService(cache)
        jobs = JobService(queue)
        catalogue = CatalogueService(cache, scenarios)
        profiles = ProfileService(cache)
        return cls(
            tenancy=TenancyService(),
            scenarios=scenarios,
            catalogue=catalogue,
            profiles=profiles,
            events=EventService(cache, scenarios, catalogue, profiles),
            privacy=PrivacyService(cache, vectors, scenarios, profiles),
            recommendations=RecommendationService(cache, scenarios, profiles, engines),
            jobs=jobs,
            training=TrainingService(jobs, scenarios, vectors=vectors, config=learning),
        )
