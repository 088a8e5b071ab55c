"""Jobs: JobService on the embedded MongoDB (lifecycle, idempotent submission, throttled progress, tenant isolation),
the thin arq job with its retries, and the worker settings."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace

import pytest
from arq import Retry
from redis.exceptions import ConnectionError as RedisConnectionError
from typer.testing import CliRunner

from domain.errors import Unavailable
from domain.ids import new_id, utcnow
from domain.jobs import JobService, JobStatus
from domain.learning.service import Retryable
from graph.cli import app as cli
from models.documents import Job
from models.settings import JobsSettings, Settings, TrainingSettings
from models.vectors import searches_in_memory
from workers.jobs import backoff_s, train_scenario
from workers.settings import WorkerSettings, missing_urls, standalone_worker


class RecordingQueue:
    """A JobQueue that records what was queued (and can be made unreachable)."""

    def __init__(self) -> None:
        self.queued: list[tuple[str, str, tuple]] = []
        self.aborted: list[str] = []
        self.down = False

    async def enqueue(self, function: str, job_id: str, args) -> None:
        if self.down:
            raise RedisConnectionError("queue is down")
        await asyncio.sleep(0)  # let concurrent submissions interleave
        self.queued.append((function, job_id, tuple(args)))

    async def abort(self, job_id: str) -> None:
        self.aborted.append(job_id)


@pytest.fixture
async def queue(served) -> RecordingQueue:  # `served` initialises Beanie on the embedded MongoDB
    return RecordingQueue()


@pytest.fixture
async def jobs(queue) -> JobService:
    return JobService(queue, progress_interval_s=0.2)


def tenant() -> str:
    return new_id("tn")


async def test_submit_creates_a_queued_job_and_queues_it_under_its_id(jobs, queue):
    t = tenant()
    job = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1", time_limit_s=60)
    assert job.status == JobStatus.QUEUED and job.active and job.progress == 0 and job.attempts == 0
    assert queue.queued == [("scenarios.train", job.id, (t, "sc_1", job.id))]
    stored = await jobs.get(job.id, tenant_id=t)
    assert stored is not None and stored.time_limit_s == 60 and stored.key == "train:sc_1"


async def test_the_same_work_is_never_queued_twice_at_once(jobs, queue):
    t = tenant()
    first = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    again = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    assert again.id == first.id
    await jobs.mark_running(first.id, tenant_id=t, attempt=1)
    running = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    assert running.id == first.id and running.status == JobStatus.RUNNING
    other = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_2")
    assert other.id != first.id
    assert [q[1] for q in queue.queued] == [first.id, other.id]


async def test_concurrent_submissions_share_one_job(jobs, queue):
    t = tenant()
    submitted = await asyncio.gather(
        *(jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1") for _ in range(6))
    )
    assert len({job.id for job in submitted}) == 1
    assert len(queue.queued) == 1


async def test_a_finished_job_lets_the_next_one_start(jobs):
    t = tenant()
    first = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    await jobs.mark_running(first.id, tenant_id=t, attempt=1)
    done = await jobs.succeed(first.id, tenant_id=t, result={"version": 1})
    assert done.status == JobStatus.SUCCEEDED and done.progress == 1 and not done.active
    assert done.result == {"version": 1} and done.duration_s is not None and done.finished_at is not None
    second = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    assert second.id != first.id and second.status == JobStatus.QUEUED


async def test_another_tenants_job_is_invisible_and_does_not_block(jobs):
    mine, theirs = tenant(), tenant()
    job = await jobs.submit("train", "scenarios.train", tenant_id=mine, scenario_id="sc_1")
    assert await jobs.get(job.id, tenant_id=theirs) is None
    assert await jobs.mark_running(job.id, tenant_id=theirs, attempt=1) is None
    assert await jobs.fail(job.id, tenant_id=theirs, error="x") is None
    assert (await jobs.get(job.id, tenant_id=mine)).status == JobStatus.QUEUED
    their_job = await jobs.submit("train", "scenarios.train", tenant_id=theirs, scenario_id="sc_1")
    assert their_job.id != job.id
    assert [j.id for j in await jobs.list(tenant_id=theirs)] == [their_job.id]


async def test_running_counts_attempts_and_keeps_the_first_start(jobs):
    t = tenant()
    job = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    first = await jobs.mark_running(job.id, tenant_id=t, attempt=1)
    assert first.status == JobStatus.RUNNING and first.attempts == 1 and first.started_at is not None
    back = await jobs.requeue(job.id, tenant_id=t, error="retrying after: mongo away")
    assert back.status == JobStatus.QUEUED and back.active and back.error == "retrying after: mongo away"
    second = await jobs.mark_running(job.id, tenant_id=t, attempt=2)
    assert second.attempts == 2 and second.started_at == first.started_at
    done = await jobs.succeed(job.id, tenant_id=t)
    assert done.error is None


async def test_failed_and_cancelled_jobs_do_not_run(jobs):
    t = tenant()
    failing = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    failed = await jobs.fail(failing.id, tenant_id=t, error="ValueError: no data")
    assert failed.status == JobStatus.FAILED and failed.error == "ValueError: no data" and not failed.active
    assert await jobs.mark_running(failing.id, tenant_id=t, attempt=1) is None
    queued = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    cancelled = await jobs.cancel(queued.id, tenant_id=t)
    assert cancelled.status == JobStatus.CANCELLED and not cancelled.active
    assert await jobs.mark_running(queued.id, tenant_id=t, attempt=1) is None
    assert await jobs.cancel(queued.id, tenant_id=t) is None  # a finished job cannot be cancelled


async def test_progress_is_throttled_but_a_new_stage_is_written_at_once(jobs):
    t = tenant()
    job = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    await jobs.mark_running(job.id, tenant_id=t, attempt=1)
    for step in range(1, 11):
        await jobs.progress(job.id, tenant_id=t, fraction=step / 20, stage="loading")
    stored = await jobs.get(job.id, tenant_id=t)
    assert stored.progress == 0.05 and stored.stage == "loading"  # the rest fell within the interval
    await jobs.progress(job.id, tenant_id=t, fraction=0.6, stage="training")
    await jobs.progress(job.id, tenant_id=t, fraction=0.7, stage="training")
    stored = await jobs.get(job.id, tenant_id=t)
    assert stored.progress == 0.6 and stored.stage == "training"
    await asyncio.sleep(0.25)
    await jobs.progress(job.id, tenant_id=t, fraction=1.5)
    stored = await jobs.get(job.id, tenant_id=t)
    assert stored.progress == 1.0 and stored.stage == "training"


async def test_a_job_whose_worker_died_is_abandoned(jobs):
    t = tenant()
    job = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1", time_limit_s=60)
    await jobs.mark_running(job.id, tenant_id=t, attempt=1)
    long_ago = utcnow() - timedelta(hours=1)
    await Job.get_pymongo_collection().update_one({"_id": job.id}, {"$set": {"started_at": long_ago}})
    assert await jobs.active_for("train", "sc_1", tenant_id=t) is None
    abandoned = await jobs.get(job.id, tenant_id=t)
    assert abandoned.status == JobStatus.FAILED and "abandoned" in abandoned.error
    fresh = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    assert fresh.id != job.id


async def test_an_unreachable_queue_fails_the_job_and_says_so(jobs, queue):
    t = tenant()
    queue.down = True
    with pytest.raises(Unavailable):
        await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")
    [job] = await jobs.list(tenant_id=t)
    assert job.status == JobStatus.FAILED and "could not queue" in job.error
    queue.down = False
    assert (await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_1")).id != job.id


async def test_list_is_newest_first_and_filters(jobs):
    t = tenant()
    a = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_a")
    await asyncio.sleep(0.005)
    b = await jobs.submit("train", "scenarios.train", tenant_id=t, scenario_id="sc_b")
    assert [j.id for j in await jobs.list(tenant_id=t)] == [b.id, a.id]
    assert [j.id for j in await jobs.list(tenant_id=t, scenario_id="sc_a")] == [a.id]


async def test_the_train_job_retries_a_store_outage_with_backoff_until_the_last_try():
    calls = []

    class Training:
        async def train(self, job_id, *, tenant_id, scenario_id, attempt, may_retry):
            calls.append((job_id, tenant_id, scenario_id, attempt, may_retry))
            raise Retryable("redis away")

    ctx = {"services": SimpleNamespace(training=Training()), "max_tries": 3, "job_try": 2}
    with pytest.raises(Retry) as retry:
        await train_scenario(ctx, "t_1", "sc_1", "job_1")
    assert retry.value.defer_score == backoff_s(2) * 1000 == 30_000
    assert calls == [("job_1", "t_1", "sc_1", 2, True)]
    calls.clear()

    class LastTry:
        async def train(self, job_id, *, tenant_id, scenario_id, attempt, may_retry):
            calls.append(may_retry)
            return None

    ctx = {"services": SimpleNamespace(training=LastTry()), "max_tries": 3, "job_try": 3}
    assert await train_scenario(ctx, "t_1", "sc_1", "job_1") is None and calls == [False]


def test_worker_settings_register_the_train_job_with_the_configured_limits():  # see test_job_kinds for the rest
    settings = Settings().model_copy(update={
        "training": TrainingSettings(train_time_limit_s=120, job_max_tries=5),
        "redis": Settings().redis.model_copy(update={"url": "redis://127.0.0.1:1/0"}),
    })
    worker = standalone_worker(settings)  # builds only: it connects when it runs
    job = worker.functions["scenarios.train"]
    assert job.timeout_s == 120 + settings.jobs.timeout_margin_s and job.max_tries == 5
    assert WorkerSettings.functions[0].name == "scenarios.train" and WorkerSettings.on_startup is not None
    assert WorkerSettings.allow_abort_jobs and worker.allow_abort_jobs  # cancelJob stops a running job
    assert backoff_s(1) < backoff_s(2) < backoff_s(3) and backoff_s(99) == backoff_s(4)


def test_short_job_limits_shorten_the_lease_after_which_a_dead_workers_job_runs_again():
    limits = {f"{kind}_time_limit_s": 3 for kind in ("similarity", "profiles", "candidates", "cleanup")}
    jobs = JobsSettings(**limits, timeout_margin_s=1, item_vectors_timeout_s=2, cron=False)
    settings = Settings().model_copy(update={
        "training": TrainingSettings(train_time_limit_s=6), "jobs": jobs,
        "redis": Settings().redis.model_copy(update={"url": "redis://127.0.0.1:1/0"}),
    })
    worker = standalone_worker(settings)
    assert worker.functions["scenarios.train"].timeout_s == 7 and worker.functions["items.vectors"].timeout_s == 2
    # arq keeps a started job's in-progress key this long: the longest timeout plus 10 s
    assert worker.in_progress_timeout_s == 17
    # the schedules' ticks run up to 300 s, so with schedules on a dead worker's job waits at least that
    scheduled = settings.model_copy(update={"jobs": jobs.model_copy(update={"cron": True})})
    assert standalone_worker(scheduled).in_progress_timeout_s == 300 + 10
    default = standalone_worker(settings.model_copy(update={"training": TrainingSettings(), "jobs": JobsSettings()}))
    assert default.in_progress_timeout_s == 1800 + 600 + 10


def _with_urls(mongo: str | None, redis: str | None, qdrant: str | None) -> Settings:
    base = Settings()
    urls = {"mongo": mongo, "redis": redis, "qdrant": qdrant}
    return base.model_copy(update={name: getattr(base, name).model_copy(update={"url": url})
                                   for name, url in urls.items()})


def test_a_separate_worker_is_refused_in_embedded_mode():
    env = {"MONGODB_URL": "", "REDIS_URL": "", "QDRANT_URL": ""}
    result = CliRunner().invoke(cli, ["worker"], env=env)
    assert result.exit_code == 1 and "separate worker needs MONGODB_URL, REDIS_URL" in result.output, result.output
    assert missing_urls(_with_urls(None, None, None)) == ["MONGODB_URL", "REDIS_URL"]
    assert missing_urls(_with_urls("mongodb://db/", None, "http://q:6333")) == ["REDIS_URL"]


def test_shared_servers_without_a_vector_server_search_embeddings_in_memory():
    mongo, redis, qdrant = "mongodb://db:27017/", "redis://cache:6379/0", "http://qdrant:6333"
    # A worker needs no QDRANT_URL: no process opens a vector store then, so no host keeps a shard of its own.
    assert missing_urls(_with_urls(mongo, redis, None)) == []
    assert searches_in_memory(_with_urls(mongo, redis, None))
    assert not searches_in_memory(_with_urls(mongo, redis, qdrant))  # the Qdrant server
    assert not searches_in_memory(_with_urls(None, None, None))  # one machine: embedded shards in serve
    assert not searches_in_memory(_with_urls(mongo, None, None))  # Redis embedded: one machine too
