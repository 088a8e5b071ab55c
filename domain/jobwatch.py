"""One poll per watched job: `jobProgress` subscribers of the same job share a loop that reads it and fans out.

N subscribers to one job cost one read per poll interval in this process, not N. The loop starts with the first
subscriber and stops with the last one, or when the job ends (or disappears).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog

from domain.jobs import JobStatus
from models.documents import Job

JOB_POLL_S = 0.5
TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
_END = None  # queued to subscribers when the job is gone

log = structlog.get_logger()
Read = Callable[[], Awaitable[Job | None]]


def _state(job: Job) -> tuple:
    return job.status, job.progress, job.stage, job.attempts, job.error


class _Poll:
    """The loop of one job and its subscribers' queues."""

    def __init__(self, read: Read, first: Job, poll_s: float) -> None:
        self.queues: set[asyncio.Queue[Job | None]] = set()
        self.latest = first
        self._read = read
        self._poll_s = poll_s
        self.task: asyncio.Task | None = None

    async def run(self) -> None:
        job = self.latest
        while JobStatus(job.status) not in TERMINAL and self.queues:
            await asyncio.sleep(self._poll_s)
            try:
                latest = await self._read()
            except Exception as exc:  # noqa: BLE001 - a store hiccup skips one poll, the subscribers keep waiting
                log.warning("jobwatch.poll_failed", job_id=job.id, error=repr(exc))
                continue
            if latest is None:  # removed while watched
                self._publish(_END)
                return
            if _state(latest) != _state(job):
                self.latest = latest
                self._publish(latest)
            job = latest
        self._publish(_END)

    def _publish(self, item: Job | None) -> None:
        for queue in self.queues:
            queue.put_nowait(item)


class JobWatch:
    """Shared polls of watched jobs, one per (tenant, job) in this process."""

    def __init__(self, *, poll_s: float = JOB_POLL_S) -> None:
        self._polls: dict[tuple[str, str], _Poll] = {}
        self._poll_s = poll_s
        self.reads = 0  # job reads done by the polls (a test counts them)

    async def follow(self, job: Job, read: Read, *, tenant_id: str) -> AsyncIterator[Job]:
        """Yield each later change of `job` (read with `read`) until it ends; subscribers of one job share a poll."""
        key = (tenant_id, job.id)
        poll = self._polls.get(key)
        if poll is None or poll.task is None or poll.task.done():
            poll = _Poll(self._counted(read), job, self._poll_s)
            self._polls[key] = poll
        queue: asyncio.Queue[Job | None] = asyncio.Queue()
        poll.queues.add(queue)
        if _state(poll.latest) != _state(job):
            queue.put_nowait(poll.latest)  # it changed between this subscriber's read and its joining
        if poll.task is None:
            poll.task = asyncio.create_task(poll.run(), name=f"recograph-job-poll-{job.id}")
            poll.task.add_done_callback(lambda _t, k=key, p=poll: self._drop(k, p))
        try:
            while (item := await queue.get()) is not _END:
                yield item
        finally:
            poll.queues.discard(queue)

    def _counted(self, read: Read) -> Read:
        async def counted() -> Job | None:
            self.reads += 1
            return await read()

        return counted

    def _drop(self, key: tuple[str, str], poll: _Poll) -> None:
        if self._polls.get(key) is poll:
            del self._polls[key]
