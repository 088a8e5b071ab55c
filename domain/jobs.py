"""Jobs: what background work was asked for, how far it got and how it ended, recorded in MongoDB.

A job is created QUEUED and handed to the queue (arq) under its own id, so enqueueing twice runs it once. The same
work on the same target never runs twice at once: while a job is QUEUED or RUNNING it is `active`, and a unique
index over active jobs' keys makes a second submission find and return the first.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import structlog
from pymongo import ReturnDocument
from pymongo.errors import DuplicateKeyError, PyMongoError
from redis.exceptions import RedisError

from domain.errors import Unavailable
from domain.ids import new_id, utcnow
from models.documents import Job

log = structlog.get_logger()

# A queued job older than this was lost with its queue (arq drops jobs a day after they were due).
QUEUED_TTL = timedelta(days=1)
# A running job is abandoned when it outlives its time limit by this much (its process died).
RUNNING_GRACE = timedelta(minutes=5)


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


class JobQueue(Protocol):
    async def enqueue(self, function: str, job_id: str, args: Sequence[Any]) -> None:
        """Queue `function(*args)` under job_id; a second call with the same id queues nothing."""
        ...


class ArqQueue:
    """JobQueue on an arq Redis pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def enqueue(self, function: str, job_id: str, args: Sequence[Any]) -> None:
        """Queue the job under our job id (arq refuses a duplicate id)."""
        await self._pool.enqueue_job(function, *args, _job_id=job_id)


def job_key(kind: str, target: str | None) -> str:
    """Return the idempotency key of `kind` work on a target."""
    return f"{kind}:{target or '*'}"


class JobService:
    """Job records scoped by tenant, and submission to the queue."""

    def __init__(self, queue: JobQueue | None = None, *, progress_interval_s: float = 0.5) -> None:
        self._queue = queue
        self._interval = progress_interval_s
        self._last_write: dict[str, tuple[float, str | None]] = {}  # job id -> when and which stage was written

    async def submit(
        self, kind: str, function: str, *, tenant_id: str, scenario_id: str | None, time_limit_s: float | None = None,
    ) -> Job:
        """Return the active job of this kind for the target, or create one and queue `function` for it."""
        if (active := await self.active_for(kind, scenario_id, tenant_id=tenant_id)) is not None:
            return active
        try:
            job = await self.create(kind, tenant_id=tenant_id, scenario_id=scenario_id, time_limit_s=time_limit_s)
        except DuplicateKeyError:
            # Another caller created it between our look and our insert: theirs is the one.
            if (active := await self.active_for(kind, scenario_id, tenant_id=tenant_id)) is not None:
                return active
            raise
        await self._enqueue(job, function)
        return job

    async def _enqueue(self, job: Job, function: str) -> None:
        if self._queue is None:
            await self.fail(job.id, tenant_id=job.tenant_id, error="no job queue is configured")
            raise Unavailable("background jobs are not available in this process")
        try:
            await self._queue.enqueue(function, job.id, (job.tenant_id, job.scenario_id, job.id))
        except (RedisError, OSError) as exc:
            await self.fail(job.id, tenant_id=job.tenant_id, error=f"could not queue the job: {exc}")
            raise Unavailable("the job queue cannot be reached; try again") from exc

    async def create(
        self, kind: str, *, tenant_id: str, scenario_id: str | None, time_limit_s: float | None = None
    ) -> Job:
        """Insert a QUEUED job (raises DuplicateKeyError while one with the same key is active)."""
        job = Job(
            id=new_id("job"), tenant_id=tenant_id, kind=kind, scenario_id=scenario_id, status=JobStatus.QUEUED,
            key=job_key(kind, scenario_id), active=True, time_limit_s=time_limit_s, created_at=utcnow(),
        )
        await job.insert()
        return job

    async def get(self, job_id: str, *, tenant_id: str) -> Job | None:
        """Return the tenant's job, or None (another tenant's looks missing)."""
        return await Job.find_one({"_id": job_id, "tenant_id": tenant_id})

    async def list(
        self, *, tenant_id: str, limit: int = 20, kind: str | None = None, scenario_id: str | None = None
    ) -> list[Job]:
        """Return the tenant's most recent jobs, newest first."""
        query: dict[str, Any] = {"tenant_id": tenant_id}
        if kind is not None:
            query["kind"] = kind
        if scenario_id is not None:
            query["scenario_id"] = scenario_id
        return await Job.find(query).sort([("created_at", -1)]).limit(limit).to_list()

    async def active_for(self, kind: str, scenario_id: str | None, *, tenant_id: str) -> Job | None:
        """Return the QUEUED or RUNNING job of this kind for the target; an abandoned one is failed first."""
        job = await Job.find_one({"tenant_id": tenant_id, "key": job_key(kind, scenario_id), "active": True})
        if job is None or not _abandoned(job, utcnow()):
            return job
        log.warning("job.abandoned", job_id=job.id, tenant_id=tenant_id, status=job.status)
        await self.fail(job.id, tenant_id=tenant_id, error="abandoned: its worker stopped without finishing it")
        return None

    async def mark_running(self, job_id: str, *, tenant_id: str, attempt: int) -> Job | None:
        """Move an active job to RUNNING for this attempt; return None when it was cancelled or finished."""
        now = utcnow()
        job = await self._update(
            job_id, tenant_id, {"$set": {"status": JobStatus.RUNNING, "attempts": attempt, "stage": "starting"}},
            only_active=True,
        )
        if job is not None and job.started_at is None:
            job = await self._update(job_id, tenant_id, {"$set": {"started_at": now}})
        return job

    async def progress(self, job_id: str, *, tenant_id: str, fraction: float, stage: str | None = None) -> None:
        """Record progress (0..1): a new stage at once, otherwise at most once per interval (the rest is dropped)."""
        now = time.monotonic()
        last_at, last_stage = self._last_write.get(job_id, (0.0, None))
        if now - last_at < self._interval and stage in (None, last_stage):
            return
        self._last_write[job_id] = (now, stage if stage is not None else last_stage)
        changes: dict[str, Any] = {"progress": min(max(float(fraction), 0.0), 1.0)}
        if stage is not None:
            changes["stage"] = stage
        try:
            await Job.get_pymongo_collection().update_one(
                {"_id": job_id, "tenant_id": tenant_id, "status": JobStatus.RUNNING}, {"$set": changes}
            )
        except PyMongoError as exc:
            log.warning("job.progress_not_recorded", job_id=job_id, error=str(exc))  # progress is advisory

    async def succeed(self, job_id: str, *, tenant_id: str, result: Mapping[str, Any] | None = None) -> Job | None:
        """Mark the job SUCCEEDED with its result."""
        return await self._finish(job_id, tenant_id, JobStatus.SUCCEEDED, progress=1.0, stage="done", error=None,
                                  result=dict(result or {}))

    async def fail(self, job_id: str, *, tenant_id: str, error: str) -> Job | None:
        """Mark the job FAILED with the error."""
        return await self._finish(job_id, tenant_id, JobStatus.FAILED, error=error[:2000])

    async def cancel(self, job_id: str, *, tenant_id: str) -> Job | None:
        """Cancel a job that has not started; return it, or None when it is not QUEUED."""
        job = await self.get(job_id, tenant_id=tenant_id)
        if job is None or job.status != JobStatus.QUEUED:
            return None
        return await self._finish(job_id, tenant_id, JobStatus.CANCELLED, only_status=JobStatus.QUEUED)

    async def requeue(self, job_id: str, *, tenant_id: str, error: str) -> Job | None:
        """Put a job back to QUEUED after a failed attempt that will be retried, noting why."""
        return await self._update(
            job_id, tenant_id, {"$set": {"status": JobStatus.QUEUED, "error": error[:2000], "stage": "retrying"}},
            only_active=True,
        )

    async def _finish(self, job_id: str, tenant_id: str, status: JobStatus, *, only_status: str | None = None,
                      **fields: Any) -> Job | None:
        job = await self.get(job_id, tenant_id=tenant_id)
        if job is None:
            return None
        now = utcnow()
        changes = {"status": status, "active": False, "finished_at": now, **fields}
        if job.started_at is not None:
            changes["duration_s"] = round((now - _aware(job.started_at, now)).total_seconds(), 3)
        self._last_write.pop(job_id, None)
        query: dict[str, Any] = {"_id": job_id, "tenant_id": tenant_id}
        if only_status is not None:
            query["status"] = only_status
        return await self._apply(query, {"$set": changes})

    async def _update(
        self, job_id: str, tenant_id: str, update: dict[str, Any], *, only_active: bool = False
    ) -> Job | None:
        query: dict[str, Any] = {"_id": job_id, "tenant_id": tenant_id}
        if only_active:
            query["active"] = True
        return await self._apply(query, update)

    @staticmethod
    async def _apply(query: dict[str, Any], update: dict[str, Any]) -> Job | None:
        doc = await Job.get_pymongo_collection().find_one_and_update(
            query, update, return_document=ReturnDocument.AFTER
        )
        return Job.model_validate(doc) if doc else None


def _aware(value: datetime, like: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=like.tzinfo)


def _abandoned(job: Job, now: datetime) -> bool:
    """Return whether an active job can no longer finish (its queue entry or its process is gone)."""
    if job.status == JobStatus.QUEUED:
        return now - _aware(job.created_at, now) > QUEUED_TTL
    if job.status == JobStatus.RUNNING and job.started_at is not None and job.time_limit_s:
        return now - _aware(job.started_at, now) > timedelta(seconds=job.time_limit_s) + RUNNING_GRACE
    return False
