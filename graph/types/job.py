"""Job type: background work (training) with its status, progress and outcome."""

from __future__ import annotations

import enum
from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from models.documents import Job as JobDoc


@strawberry.enum(description="Where a job is in its life.")
class JobStatus(enum.Enum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@strawberry.type(description="Background work, e.g. training a scenario's models.")
class Job:
    id: strawberry.ID
    kind: str = strawberry.field(description="What the job does, e.g. `train`.")
    scenario_id: strawberry.ID | None
    status: JobStatus
    progress: float = strawberry.field(description="From 0 to 1; 1 once SUCCEEDED.")
    stage: str | None = strawberry.field(description="What the job is doing now, in words.")
    attempts: int = strawberry.field(description="Attempts started (a job whose stores failed briefly is retried).")
    error: str | None = strawberry.field(description="Why it FAILED, or why the last attempt is being retried.")
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    duration_seconds: float | None = strawberry.field(description="From first start to finish.")
    time_limit_seconds: float | None = strawberry.field(description="An attempt running longer is stopped.")
    result: JSON | None = strawberry.field(description="What a SUCCEEDED job produced (e.g. the model version).")

    @classmethod
    def from_domain(cls, doc: JobDoc) -> Job:
        """Convert a stored job."""
        return cls(
            id=strawberry.ID(doc.id), kind=doc.kind,
            scenario_id=strawberry.ID(doc.scenario_id) if doc.scenario_id else None, status=JobStatus(doc.status),
            progress=doc.progress, stage=doc.stage, attempts=doc.attempts, error=doc.error,
            created_at=doc.created_at, started_at=doc.started_at, finished_at=doc.finished_at,
            duration_seconds=doc.duration_s, time_limit_seconds=doc.time_limit_s, result=doc.result,
        )
