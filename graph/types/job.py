"""Job types: background work (training, similarity, profiles, candidates, cleanup) with its status, progress and
outcome, and the connection `jobs` returns."""

from __future__ import annotations

import enum
from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from domain.scenarios.service import Page
from graph.types.common import PageInfo, total_count
from graph.types.scenario import Scenario
from models.documents import Job as JobDoc
from resolvers.scenarios import get_scenario


@strawberry.enum(description="Where a job is in its life.")
class JobStatus(enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@strawberry.enum(description="What a job does; each kind also runs on a schedule for every scenario.")
class JobKind(enum.Enum):
    TRAIN = strawberry.enum_value("train", description="Train every model the scenario uses (daily 03:00 UTC).")
    SIMILARITY = strawberry.enum_value(
        "similarity", description="Refit item-CF neighbours and content vectors from current data (hourly).")
    PROFILES = strawberry.enum_value(
        "profiles", description="Rebuild user profiles by replaying stored events (every 2 h).")
    CANDIDATES = strawberry.enum_value(
        "candidates", description="Warm the cached recommendations of recently active users (every 4 h).")
    CLEANUP = strawberry.enum_value(
        "cleanup", description="Delete old model artifacts, job records, expired interactions, orphan keys (daily "
        "04:00 UTC).")


@strawberry.type(description="Background work on a scenario, e.g. training its models.")
class Job:
    id: strawberry.ID
    kind: JobKind
    scenario_id: strawberry.ID | None
    status: JobStatus
    progress: float = strawberry.field(description="From 0 to 1; 1 once SUCCEEDED.")
    stage: str | None = strawberry.field(description="What the job is doing now, in words.")
    attempts: int = strawberry.field(description="Attempts started (a job whose stores failed briefly, or whose "
                                     "worker died, is retried).")
    error: str | None = strawberry.field(description="Why it FAILED, or why the last attempt is being retried.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None = strawberry.field(description="From first start to finish.")
    time_limit_seconds: float | None = strawberry.field(description="An attempt running longer is stopped.")
    result: JSON | None = strawberry.field(description="What a SUCCEEDED job produced (e.g. the model version).")

    @strawberry.field(description="The scenario the job works on (null once deleted).")
    async def scenario(self, info: strawberry.Info) -> Scenario | None:
        doc = await get_scenario(info.context, id=self.scenario_id) if self.scenario_id else None
        return Scenario.from_domain(doc) if doc else None

    @classmethod
    def from_domain(cls, doc: JobDoc) -> Job:
        """Convert a stored job."""
        return cls(
            id=strawberry.ID(doc.id), kind=JobKind(doc.kind),
            scenario_id=strawberry.ID(doc.scenario_id) if doc.scenario_id else None, status=JobStatus(doc.status),
            progress=doc.progress, stage=doc.stage, attempts=doc.attempts, error=doc.error,
            created_at=doc.created_at, started_at=doc.started_at, finished_at=doc.finished_at,
            duration_seconds=doc.duration_s, time_limit_seconds=doc.time_limit_s, result=doc.result,
        )


@strawberry.type
class JobEdge:
    node: Job
    cursor: str


@strawberry.type(description="A page of jobs, newest first.")
class JobConnection:
    edges: list[JobEdge]
    page_info: PageInfo
    page: strawberry.Private[Page]

    @strawberry.field(description="How many match, across all pages (counted on request).")
    async def total_count(self) -> int:
        return await total_count(self.page)

    @classmethod
    def from_domain(cls, page: Page) -> JobConnection:
        """Convert a page of jobs."""
        edges = [JobEdge(node=Job.from_domain(n), cursor=c) for n, c in zip(page.nodes, page.cursors, strict=True)]
        info = PageInfo(has_next_page=page.has_next, end_cursor=page.cursors[-1] if edges else None)
        return cls(edges=edges, page_info=info, page=page)
