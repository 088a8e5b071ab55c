"""Jobs: what background work was asked for, how far it got and how it ended, recorded in MongoDB.

A job is created QUEUED and handed to the queue (arq) under its own id, so enqueueing twice runs it once. The same
work on the same target never runs twice at once: while a job is QUEUED or RUNNING it is `active`, and a unique
index over active jobs' keys makes a second submission find and return the first.

`JobService.run` is one attempt of any kind: RUNNING, the work under the job's time limit, then SUCCEEDED or FAILED
(a store outage puts it back to QUEUED for arq's next try). `cancel` ends a QUEUED or RUNNING job as CANCELLED and
asks the queue to abort it; a late outcome of the aborted attempt never overwrites that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Protocol

import structlog
from pymongo import ReturnDocument
from pymongo.errors import ConnectionFailure, DuplicateKeyError, PyMongoError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from domain.errors import BadInput, DomainError, NotFound, Unavailable
from domain.ids import check_first, decode_cursor, encode_cursor, new_id, utcnow
from domain.scenarios.service import Page
from models.documents import Job

log = structlog.get_logger()

# A queued job older than this was lost with its queue (arq drops jobs a day after they were due).
QUEUED_TTL = timedelta(days=1)
# A running job is abandoned when it outlives its time limit by this much (its process died).
RUNNING_GRACE = timedelta(minutes=5)


# Errors of a store that may be back in a moment: the attempt is retried (with backoff) instead of failing the job.
TRANSIENT: tuple[type[BaseException], ...] = (
    ConnectionFailure, RedisConnectionError, RedisTimeoutError, BrokenProcessPool,
)
ABORTED_SET = "arq:abort"  # arq's sorted set of job ids to abort (arq.constants.abort_jobs_ss)
Report = Callable[[float, str], Awaitable[None]]
Work = Callable[[Report], Awaitable[dict[str, Any]]]
JobObserver = Callable[[str, str, float], None]  # (kind, outcome, seconds) of each finished attempt


class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


FINISHED = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})


class JobKind(StrEnum):
    """What a job does; each kind is one arq function calling one domain service method."""

    TRAIN = "train"  # (re)train every model the scenario uses
    SIMILARITY = "similarity"  # recompute item-CF neighbours and content vectors over the served catalogue
    PROFILES = "profiles"  # rebuild user profiles by replaying the scenario's events
    CANDIDATES = "candidates"  # warm the cached answers of recently active users
    CLEANUP = "cleanup"  # drop what outlived its use: old artifacts, job records, interactions, orphan keys


JOB_FUNCTIONS: dict[JobKind, str] = {
    JobKind.TRAIN: "scenarios.train",
    JobKind.SIMILARITY: "scenarios.similarity",
    JobKind.PROFILES: "profiles.rebuild",
    JobKind.CANDIDATES: "candidates.precompute",
    JobKind.CLEANUP: "maintenance.cleanup",
}


class Retryable(Exception):
    """The attempt failed because a store or the training process was briefly unavailable; try again later."""


class JobQueue(Protocol):
    async def enqueue(self, function: str, job_id: str, args: Sequence[Any]) -> None:
        """Queue `function(*args)` under job_id; a second call with the same id queues nothing."""
        ...

    async def abort(self, job_id: str) -> None:
        """Ask the worker running (or about to run) job_id to stop it."""
        ...


class ArqQueue:
    """JobQueue on an arq Redis pool."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    async def enqueue(self, function: str, job_id: str, args: Sequence[Any]) -> None:
        """Queue the job under our job id (arq refuses a duplicate id)."""
        await self._pool.enqueue_job(function, *args, _job_id=job_id)

    async def abort(self, job_id: str) -> None:
        """Add the job to arq's abort set; a worker with allow_abort_jobs cancels its task within a poll."""
        await self._pool.zadd(ABORTED_SET, {job_id: int(time.time() * 1000)})


def job_key(kind: str, target: str | None) -> str:
    """Return the idempotency key of `kind` work on a target."""
    return f"{kind}:{target or '*'}"


class JobService:
    """Job records scoped by tenant, and submission to the queue."""

    def __init__(self, queue: JobQueue | None = None, *, progress_interval_s: float = 0.5) -> None:
        self._queue = queue
        self._interval = progress_interval_s
        self._last_write: dict[str, tuple[float, str | None]] = {}  # job id -> when and which stage was written
        self._observers: list[JobObserver] = []

    def watch(self, observer: JobObserver) -> Callable[[], None]:
        """Call observer(kind, outcome, seconds) after each attempt run here; return a function that stops it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

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

    async def page(
        self, *, tenant_id: str, first: int | None, after: str | None, max_first: int, status: str | None = None,
        kind: str | None = None, scenario_id: str | None = None,
    ) -> Page:
        """Return a page of the tenant's jobs, newest first (job ids sort by creation time)."""
        limit = check_first(first, maximum=max_first)
        query: dict[str, Any] = {"tenant_id": tenant_id}
        for name, value in (("status", status), ("kind", kind), ("scenario_id", scenario_id)):
            if value is not None:
                query[name] = value
        counted = dict(query)
        if (start := decode_cursor(after)) is not None:
            query["_id"] = {"$lt": start}
        docs = await Job.find(query).sort([("_id", -1)]).limit(limit + 1).to_list()
        nodes = docs[:limit]
        total = lambda: Job.get_pymongo_collection().count_documents(counted)  # noqa: E731
        return Page(nodes=nodes, cursors=[encode_cursor(j.id) for j in nodes], has_next=len(docs) > limit, total=total)

    async def active_for(self, kind: str, scenario_id: str | None, *, tenant_id: str) -> Job | None:
        """Return the QUEUED or RUNNING job of this kind for the target; an abandoned one is failed first."""
        job = await Job.find_one({"tenant_id": tenant_id, "key": job_key(kind, scenario_id), "active": True})
        if job is None or not abandoned(job, utcnow()):
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
        """Mark an active job SUCCEEDED with its result (a job cancelled meanwhile stays CANCELLED)."""
        return await self._finish(job_id, tenant_id, JobStatus.SUCCEEDED, only_active=True, progress=1.0,
                                  stage="done", error=None, result=dict(result or {}))

    async def fail(self, job_id: str, *, tenant_id: str, error: str) -> Job | None:
        """Mark an active job FAILED with the error (a job cancelled meanwhile stays CANCELLED)."""
        return await self._finish(job_id, tenant_id, JobStatus.FAILED, only_active=True, error=error[:2000])

    async def cancel(self, job_id: str, *, tenant_id: str) -> Job | None:
        """Cancel a QUEUED or RUNNING job and ask its worker to stop it; None when it is missing or finished."""
        job = await self.get(job_id, tenant_id=tenant_id)
        if job is None or job.status in FINISHED:
            return None
        cancelled = await self._finish(job_id, tenant_id, JobStatus.CANCELLED, only_active=True)
        if cancelled is not None and self._queue is not None:
            try:
                await self._queue.abort(job_id)  # a queued one is skipped anyway: it is no longer active
            except (RedisError, OSError) as exc:
                log.warning("job.abort_not_sent", job_id=job_id, error=str(exc))
        return cancelled

    async def cancel_or_raise(self, job_id: str, *, tenant_id: str) -> Job:
        """Cancel the job; NotFound when missing, BadInput naming `id` when it already finished."""
        if (cancelled := await self.cancel(job_id, tenant_id=tenant_id)) is not None:
            return cancelled
        job = await self.get(job_id, tenant_id=tenant_id)
        if job is None:
            raise NotFound(f"no job {job_id}", field="id")
        raise BadInput(f"job {job_id} already finished ({job.status}); only a QUEUED or RUNNING job can be cancelled",
                       field="id")

    async def run(
        self, job_id: str, *, tenant_id: str, attempt: int, may_retry: bool, work: Work,
        transient: tuple[type[BaseException], ...] = TRANSIENT, expected: tuple[type[BaseException], ...] = (),
    ) -> dict[str, Any] | None:
        """Run one attempt of a job: RUNNING, `work(report)` within the time limit, then SUCCEEDED or FAILED.

        Returns the result, or None when the job failed or was not to run (cancelled, finished). Raises Retryable
        (after putting the job back to QUEUED) when a store was briefly unavailable and `may_retry`; an interrupted
        worker also puts it back to QUEUED, so the next worker runs it again (a cancelled job stays CANCELLED).
        """
        job = await self.mark_running(job_id, tenant_id=tenant_id, attempt=attempt)
        if job is None:
            log.info("job.skipped", job_id=job_id, tenant_id=tenant_id, reason="cancelled or finished")
            return None
        bound = log.bind(job_id=job_id, tenant_id=tenant_id, kind=job.kind, scenario_id=job.scenario_id)
        started = time.perf_counter()
        outcome = "failed"
        try:
            result = await self._attempt(job, work)
            outcome = "succeeded"
        except asyncio.CancelledError:  # cancelJob (the record is CANCELLED already) or the worker stopping
            back = await self.requeue(job_id, tenant_id=tenant_id, error="interrupted: the worker stopped")
            outcome = "interrupted" if back is not None else "cancelled"
            raise
        except transient as exc:
            outcome = "retried" if may_retry else "failed"
            return await self._transient(job, exc, may_retry, bound)
        except Exception as exc:  # noqa: BLE001 - any failure ends the job with its message; serving is untouched
            unexpected = not isinstance(exc, (*expected, DomainError))
            bound.warning("job.failed", error=error_message(exc), exc_info=unexpected)
            await self.fail(job_id, tenant_id=tenant_id, error=error_message(exc))
            return None
        finally:
            self._observe(job.kind, outcome, time.perf_counter() - started)
        await self.succeed(job_id, tenant_id=tenant_id, result=result)
        bound.info("job.succeeded", seconds=round(time.perf_counter() - started, 3))
        return result

    async def _attempt(self, job: Job, work: Work) -> dict[str, Any]:
        async def report(fraction: float, stage: str) -> None:
            await self.progress(job.id, tenant_id=job.tenant_id, fraction=fraction, stage=stage)

        if not job.time_limit_s:
            return await work(report)
        limit = asyncio.timeout(job.time_limit_s)
        try:
            async with limit:
                return await work(report)
        except TimeoutError:
            if not limit.expired():
                raise  # the work's own timeout, not the job's
            raise JobTimeout(f"the job ran longer than its {job.time_limit_s:g} s limit") from None

    async def _transient(self, job: Job, exc: BaseException, may_retry: bool, bound: Any) -> None:
        if not may_retry:
            bound.warning("job.failed", error=error_message(exc))
            await self.fail(job.id, tenant_id=job.tenant_id, error=error_message(exc))
            return None
        bound.warning("job.retrying", error=error_message(exc))
        await self.requeue(job.id, tenant_id=job.tenant_id, error=f"retrying after: {error_message(exc)}")
        raise Retryable(error_message(exc)) from exc

    def _observe(self, kind: str, outcome: str, seconds: float) -> None:
        for observer in list(self._observers):
            try:
                observer(kind, outcome, seconds)
            except Exception:  # noqa: BLE001 - metrics never fail a job
                log.exception("job.observer_failed", kind=kind)

    async def requeue(self, job_id: str, *, tenant_id: str, error: str) -> Job | None:
        """Put a job back to QUEUED after a failed attempt that will be retried, noting why."""
        return await self._update(
            job_id, tenant_id, {"$set": {"status": JobStatus.QUEUED, "error": error[:2000], "stage": "retrying"}},
            only_active=True,
        )

    async def _finish(self, job_id: str, tenant_id: str, status: JobStatus, *, only_active: bool = False,
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
        if only_active:
            query["active"] = True
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


class JobTimeout(Exception):
    """The attempt ran past the job's time limit and was stopped."""


def error_message(exc: BaseException) -> str:
    """Return how a job error reads: our own errors as they are, others prefixed with their type."""
    text = str(exc) or type(exc).__name__
    return text if isinstance(exc, (DomainError, Retryable, JobTimeout)) else f"{type(exc).__name__}: {text}"


def _aware(value: datetime, like: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=like.tzinfo)


def abandoned(job: Job, now: datetime) -> bool:
    """Return whether an active job can no longer finish (its queue entry or its process is gone)."""
    if job.status == JobStatus.QUEUED:
        return now - _aware(job.created_at, now) > QUEUED_TTL
    if job.status == JobStatus.RUNNING and job.started_at is not None and job.time_limit_s:
        return now - _aware(job.started_at, now) > timedelta(seconds=job.time_limit_s) + RUNNING_GRACE
    return False
