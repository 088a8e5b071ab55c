"""Job kinds on the embedded MongoDB: one attempt's lifecycle (JobService.run), cancellation, the `jobs` page, the
thin arq functions of every kind, the schedules and their fan-out, and the job metrics."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from types import SimpleNamespace

import pytest
from arq import Retry
from prometheus_client import CollectorRegistry
from pymongo.errors import AutoReconnect

from domain.background import BackgroundJobs, JobPolicy
from domain.errors import BadInput, NotFound, Unavailable
from domain.ids import new_id, utcnow
from domain.jobs import JOB_FUNCTIONS, JobKind, JobService, JobStatus, Retryable
from domain.learning.service import LearningConfig, TrainingService
from domain.learning.tower_spaces import SYNC_FUNCTION
from domain.maintenance import MaintenanceService
from domain.precompute import CandidatePolicy, CandidateService, active_users
from domain.scenarios.service import ScenarioService
from models.cache import InMemoryCache
from models.documents import Interaction, Tenant
from models.settings import JobsSettings, Settings, TrainingSettings
from tests.unit.test_jobs import RecordingQueue
from workers import jobs as worker_jobs
from workers.cron import SCHEDULES, cron_jobs, fan_out
from workers.metrics import JobMetrics
from workers.settings import in_process_worker, job_functions


@pytest.fixture
async def queue(served) -> RecordingQueue:  # `served` initialises Beanie on the embedded MongoDB
    return RecordingQueue()


@pytest.fixture
async def jobs(queue) -> JobService:
    return JobService(queue, progress_interval_s=0.0)


@pytest.fixture
def scenarios() -> ScenarioService:
    return ScenarioService(InMemoryCache())


@pytest.fixture
def tenants() -> list[str]:
    """Tenants the fan-out sees (never the session's others: their scenarios are not this test's to queue)."""
    return []


@pytest.fixture
def background(jobs, scenarios, tenants, tmp_path) -> BackgroundJobs:
    async def list_tenants():
        return [SimpleNamespace(id=t) for t in tenants]

    training = TrainingService(jobs, scenarios, vectors=None, config=LearningConfig(models_dir=tmp_path))
    recommendations = SimpleNamespace()
    return BackgroundJobs(
        jobs, scenarios, SimpleNamespace(list_tenants=list_tenants), training,
        CandidateService(recommendations, scenarios), MaintenanceService(InMemoryCache(), models_dir=tmp_path),
        JobPolicy(time_limits_s={"cleanup": 42.0}),
    )


async def scenario(scenarios: ScenarioService, tenant_id: str, name: str = "feed") -> str:
    return (await scenarios.create(tenant_id=tenant_id, name=name, template="VLOG", config=None)).id


async def queued(jobs: JobService, kind: str = "cleanup", *, time_limit_s: float | None = None) -> tuple[str, str]:
    t = new_id("tn")
    job = await jobs.submit(kind, JOB_FUNCTIONS[JobKind(kind)], tenant_id=t, scenario_id="sc_1",
                            time_limit_s=time_limit_s)
    return t, job.id


# --- one attempt --------------------------------------------------------------------------------------------------


async def test_an_attempt_records_running_progress_and_its_result(jobs):
    t, job_id = await queued(jobs)
    seen = []

    async def work(report):
        seen.append((await jobs.get(job_id, tenant_id=t)).status)
        await report(0.5, "halfway")
        seen.append((await jobs.get(job_id, tenant_id=t)).progress)
        return {"removed": 3}

    assert await jobs.run(job_id, tenant_id=t, attempt=1, may_retry=True, work=work) == {"removed": 3}
    done = await jobs.get(job_id, tenant_id=t)
    assert seen == [JobStatus.RUNNING, 0.5]
    assert done.status == JobStatus.SUCCEEDED and done.result == {"removed": 3} and done.attempts == 1
    assert done.progress == 1.0 and done.duration_s is not None and not done.active


async def test_a_failing_attempt_fails_the_job_with_its_message(jobs):
    t, job_id = await queued(jobs)

    async def work(report):
        raise ValueError("bad row")

    assert await jobs.run(job_id, tenant_id=t, attempt=1, may_retry=True, work=work) is None
    failed = await jobs.get(job_id, tenant_id=t)
    assert failed.status == JobStatus.FAILED and failed.error == "ValueError: bad row"


async def test_a_store_outage_requeues_until_the_last_try(jobs):
    t, job_id = await queued(jobs)

    async def work(report):
        raise AutoReconnect("primary stepped down")

    with pytest.raises(Retryable):
        await jobs.run(job_id, tenant_id=t, attempt=1, may_retry=True, work=work)
    back = await jobs.get(job_id, tenant_id=t)
    assert back.status == JobStatus.QUEUED and back.active and "stepped down" in back.error
    assert await jobs.run(job_id, tenant_id=t, attempt=2, may_retry=False, work=work) is None
    final = await jobs.get(job_id, tenant_id=t)
    assert final.status == JobStatus.FAILED and final.attempts == 2


async def test_a_timeout_inside_the_work_is_not_mistaken_for_the_job_limit(jobs):
    t, job_id = await queued(jobs, time_limit_s=30)

    async def work(report):
        raise TimeoutError("socket read timed out")

    assert await jobs.run(job_id, tenant_id=t, attempt=1, may_retry=True, work=work) is None
    assert (await jobs.get(job_id, tenant_id=t)).error == "TimeoutError: socket read timed out"


async def test_an_attempt_past_its_time_limit_is_stopped_and_failed(jobs):
    t, job_id = await queued(jobs, time_limit_s=0.2)
    stopped = asyncio.Event()

    async def work(report):
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise
        return {}

    assert await jobs.run(job_id, tenant_id=t, attempt=1, may_retry=True, work=work) is None
    failed = await jobs.get(job_id, tenant_id=t)
    assert stopped.is_set() and failed.status == JobStatus.FAILED and "0.2 s limit" in failed.error


async def test_an_interrupted_worker_puts_the_job_back_for_the_next_one(jobs):
    t, job_id = await queued(jobs)

    async def work(report):
        await asyncio.sleep(30)
        return {}

    task = asyncio.create_task(jobs.run(job_id, tenant_id=t, attempt=1, may_retry=True, work=work))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    back = await jobs.get(job_id, tenant_id=t)
    assert back.status == JobStatus.QUEUED and back.active and "interrupted" in back.error


async def test_observers_hear_each_attempts_kind_and_outcome(jobs):
    heard = []
    stop = jobs.watch(lambda kind, outcome, seconds: heard.append((kind, outcome, seconds >= 0)))
    t, ok = await queued(jobs, "candidates")

    async def fine(report):
        return {}

    async def broken(report):
        raise RuntimeError("no")

    await jobs.run(ok, tenant_id=t, attempt=1, may_retry=True, work=fine)
    t2, bad = await queued(jobs, "cleanup")
    await jobs.run(bad, tenant_id=t2, attempt=1, may_retry=True, work=broken)
    stop()
    t3, unheard = await queued(jobs, "cleanup")
    await jobs.run(unheard, tenant_id=t3, attempt=1, may_retry=True, work=fine)
    assert heard == [("candidates", "succeeded", True), ("cleanup", "failed", True)]


def test_job_metrics_count_failures_and_time_attempts_by_kind_and_outcome():
    registry = CollectorRegistry()
    metrics = JobMetrics(registry)
    metrics.observe("train", "succeeded", 12.0)
    metrics.observe("train", "failed", 1.0)
    metrics.observe("cleanup", "retried", 0.3)
    sample = registry.get_sample_value
    assert sample("recograph_job_duration_seconds_count", {"kind": "train", "outcome": "succeeded"}) == 1
    assert sample("recograph_job_duration_seconds_sum", {"kind": "train", "outcome": "succeeded"}) == 12.0
    assert sample("recograph_job_failures_total", {"kind": "train", "outcome": "failed"}) == 1
    assert sample("recograph_job_failures_total", {"kind": "cleanup", "outcome": "retried"}) == 1
    assert sample("recograph_job_failures_total", {"kind": "train", "outcome": "succeeded"}) is None


# --- cancellation ---------------------------------------------------------------------------------------------


async def test_cancelling_a_queued_job_means_it_never_runs(jobs, queue):
    t, job_id = await queued(jobs)
    cancelled = await jobs.cancel_or_raise(job_id, tenant_id=t)
    assert cancelled.status == JobStatus.CANCELLED and not cancelled.active and queue.aborted == [job_id]
    ran = []

    async def work(report):
        ran.append(1)
        return {}

    assert await jobs.run(job_id, tenant_id=t, attempt=1, may_retry=True, work=work) is None and ran == []


async def test_cancelling_a_running_job_aborts_it_and_it_stays_cancelled(jobs, queue):
    t, job_id = await queued(jobs)
    started = asyncio.Event()

    async def work(report):
        started.set()
        await asyncio.sleep(30)
        return {"late": True}

    heard = []
    jobs.watch(lambda kind, outcome, seconds: heard.append(outcome))
    task = asyncio.create_task(jobs.run(job_id, tenant_id=t, attempt=1, may_retry=True, work=work))
    await started.wait()
    cancelled = await jobs.cancel_or_raise(job_id, tenant_id=t)
    assert cancelled.status == JobStatus.CANCELLED and queue.aborted == [job_id]
    task.cancel()  # what arq does on the abort
    with pytest.raises(asyncio.CancelledError):
        await task
    final = await jobs.get(job_id, tenant_id=t)
    assert final.status == JobStatus.CANCELLED and not final.active and final.finished_at is not None
    assert await jobs.succeed(job_id, tenant_id=t, result={}) is None  # a late success does not overwrite it
    assert heard == ["cancelled"]


async def test_a_finished_job_cannot_be_cancelled_and_a_missing_one_is_not_found(jobs):
    t, job_id = await queued(jobs)
    await jobs.fail(job_id, tenant_id=t, error="x")
    with pytest.raises(BadInput) as finished:
        await jobs.cancel_or_raise(job_id, tenant_id=t)
    assert finished.value.field == "id" and "FAILED" in finished.value.message
    with pytest.raises(NotFound):
        await jobs.cancel_or_raise(job_id, tenant_id=new_id("tn"))  # another tenant's looks missing


# --- the jobs page --------------------------------------------------------------------------------------------


async def test_jobs_page_newest_first_with_filters_and_cursors(jobs):
    t = new_id("tn")
    made = []
    for kind, sid in (("train", "sc_a"), ("cleanup", "sc_a"), ("cleanup", "sc_b"), ("profiles", "sc_b")):
        made.append(await jobs.submit(kind, JOB_FUNCTIONS[JobKind(kind)], tenant_id=t, scenario_id=sid))
        await asyncio.sleep(0.002)
    await jobs.fail(made[0].id, tenant_id=t, error="x")
    newest = [j.id for j in reversed(made)]
    first = await jobs.page(tenant_id=t, first=3, after=None, max_first=200)
    assert [j.id for j in first.nodes] == newest[:3] and first.has_next and await first.total() == 4
    rest = await jobs.page(tenant_id=t, first=3, after=first.cursors[-1], max_first=200)
    assert [j.id for j in rest.nodes] == newest[3:] and not rest.has_next
    assert [j.id for j in (await jobs.page(tenant_id=t, first=10, after=None, max_first=200, kind="cleanup")).nodes] \
        == [made[2].id, made[1].id]
    assert [j.id for j in (await jobs.page(tenant_id=t, first=10, after=None, max_first=200, scenario_id="sc_b",
                                          status="QUEUED")).nodes] == [made[3].id, made[2].id]
    assert [j.id for j in (await jobs.page(tenant_id=t, first=10, after=None, max_first=200,
                                          status="FAILED")).nodes] == [made[0].id]
    assert (await jobs.page(tenant_id=new_id("tn"), first=10, after=None, max_first=200)).nodes == []
    with pytest.raises(BadInput):
        await jobs.page(tenant_id=t, first=201, after=None, max_first=200)


# --- submitting kinds, and the schedules ---------------------------------------------------------------------


async def test_each_kind_is_queued_under_its_function_with_its_time_limit(background, scenarios, queue):
    t = new_id("tn")
    sid = await scenario(scenarios, t)
    for kind in JobKind:
        job = await background.submit(kind, sid, tenant_id=t)
        assert job.kind == kind.value and job.status == JobStatus.QUEUED
        assert queue.queued[-1] == (JOB_FUNCTIONS[kind], job.id, (t, sid, job.id))
    assert len({q[1] for q in queue.queued}) == len(JobKind)
    cleanup = await background.submit("cleanup", sid, tenant_id=t)
    assert cleanup.time_limit_s == 42.0 and len(queue.queued) == len(JobKind)  # the active one, not a second
    with pytest.raises(NotFound):
        await background.submit("cleanup", sid, tenant_id=new_id("tn"))


def test_the_schedules_run_at_the_issues_times():
    by_name = {job.name: job for job in cron_jobs()}
    assert set(by_name) == {f"cron:{kind.value}" for kind in JobKind}
    assert by_name["cron:similarity"].hour is None and by_name["cron:similarity"].minute == 30  # hourly
    assert by_name["cron:profiles"].hour == set(range(0, 24, 2))  # every 2 h
    assert by_name["cron:candidates"].hour == {0, 4, 8, 12, 16, 20}  # every 4 h
    assert (by_name["cron:train"].hour, by_name["cron:train"].minute) == (3, 0)  # daily 03:00
    assert (by_name["cron:cleanup"].hour, by_name["cron:cleanup"].minute) == (4, 0)  # daily 04:00
    assert all(job.unique for job in by_name.values())  # one run per tick however many workers
    assert set(SCHEDULES) == set(JobKind)


async def test_a_schedule_tick_queues_one_job_per_scenario_and_none_while_active(
    background, scenarios, tenants, jobs, queue
):
    one, two = new_id("tn"), new_id("tn")
    tenants.extend([one, two])
    sids = [await scenario(scenarios, one, "a"), await scenario(scenarios, one, "b"), await scenario(scenarios, two)]
    ctx = {"services": SimpleNamespace(background=background)}
    first = await fan_out(ctx, JobKind.CLEANUP)
    assert first == {"submitted": 3, "alreadyActive": 0, "refused": 0}
    assert sorted(q[2][1] for q in queue.queued) == sorted(sids)
    assert all(q[0] == "maintenance.cleanup" for q in queue.queued)
    again = await fan_out(ctx, JobKind.CLEANUP)  # the previous tick's jobs are still queued
    assert again == {"submitted": 0, "alreadyActive": 3, "refused": 0} and len(queue.queued) == 3
    done = queue.queued[0]
    await jobs.succeed(done[1], tenant_id=done[2][0])
    third = await fan_out(ctx, JobKind.CLEANUP)
    assert third == {"submitted": 1, "alreadyActive": 2, "refused": 0} and queue.queued[-1][2][1] == done[2][1]
    other = await fan_out(ctx, JobKind.PROFILES)  # another kind has its own lock
    assert other["submitted"] == 3


# --- the thin arq functions ------------------------------------------------------------------------------------


class Recorder:
    """Stands in for the domain services: records each call and answers or raises as told."""

    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, tuple, dict]] = []
        self.error = error

    def __getattr__(self, name: str):
        async def call(*args, **kwargs):
            self.calls.append((name, args, kwargs))
            if self.error is not None:
                raise self.error
            return {"called": name}

        return call


@pytest.mark.parametrize(("kind", "service", "method"), [
    (JobKind.TRAIN, "training", "train"),
    (JobKind.SIMILARITY, "background", "refresh_similarity"),
    (JobKind.PROFILES, "background", "rebuild_profiles"),
    (JobKind.CANDIDATES, "background", "precompute_candidates"),
    (JobKind.CLEANUP, "background", "cleanup"),
])
async def test_each_job_calls_its_one_service_method_and_retries_with_backoff(kind, service, method):
    recorder, realtime = Recorder(), object()
    services = SimpleNamespace(**{service: recorder, "realtime": realtime})
    function = worker_jobs.JOBS[kind]
    ctx = {"services": services, "max_tries": 3, "tries": {JOB_FUNCTIONS[kind]: 4}, "job_try": 3}
    assert await function(ctx, "t_1", "sc_1", "job_1") == {"called": method}
    [(name, args, kwargs)] = recorder.calls
    assert name == method and args == ("job_1",)
    assert kwargs["tenant_id"] == "t_1" and kwargs["scenario_id"] == "sc_1"
    assert kwargs["attempt"] == 3 and kwargs["may_retry"] is True  # 3 < this function's 4 tries
    if kind is JobKind.PROFILES:
        assert kwargs["rebuilder"] is realtime
    services = SimpleNamespace(**{service: Recorder(Retryable("redis away")), "realtime": realtime})
    with pytest.raises(Retry) as retry:
        await function({**ctx, "services": services, "job_try": 2}, "t_1", "sc_1", "job_1")
    assert retry.value.defer_score == worker_jobs.backoff_s(2) * 1000


async def test_profiles_without_a_realtime_service_fail_the_job_clearly(background, scenarios, jobs):
    t = new_id("tn")
    sid = await scenario(scenarios, t)
    job = await background.submit("profiles", sid, tenant_id=t)
    ctx = {"services": SimpleNamespace(background=background), "max_tries": 3}
    assert await worker_jobs.rebuild_profiles(ctx, t, sid, job.id) is None
    failed = await jobs.get(job.id, tenant_id=t)
    assert failed.status == JobStatus.FAILED and "profile rebuild is not available" in failed.error


async def test_profiles_replay_through_the_realtime_rebuild_with_progress(background, scenarios, jobs):
    t = new_id("tn")
    sid = await scenario(scenarios, t)
    job = await background.submit("profiles", sid, tenant_id=t)
    calls = []

    class Realtime:
        async def rebuild(self, *, tenant_id, scenario_id, progress):
            await progress(0.5)
            calls.append((tenant_id, scenario_id, (await jobs.get(job.id, tenant_id=t)).progress))
            return 1234

    ctx = {"services": SimpleNamespace(background=background, realtime=Realtime()), "max_tries": 3}
    assert await worker_jobs.rebuild_profiles(ctx, t, sid, job.id) == {"eventsReplayed": 1234}
    assert calls == [(t, sid, 0.5)]
    assert (await jobs.get(job.id, tenant_id=t)).status == JobStatus.SUCCEEDED


async def events(tenant_id: str, sid: str, rows: list[tuple[str, float]]) -> None:
    """Store one VIEW per (user, hours before now)."""
    now = utcnow()
    await Interaction.insert_many([
        Interaction(id=new_id("ev"), tenant_id=tenant_id, scenario_id=sid, user_id=user, item_id="i1", type="VIEW",
                    ts=now - timedelta(hours=hours), event_id=new_id("e"), received_at=now)
        for user, hours in rows
    ])


async def test_active_users_are_those_near_the_scenarios_newest_event(scenarios):
    t = new_id("tn")
    sid = await scenario(scenarios, t)
    await events(t, sid, [("old", 100.0), ("recent", 30.0), ("newest", 10.0), ("recent", 12.0)])
    await events(t, "sc_other", [("elsewhere", 10.0)])
    assert await active_users(tenant_id=t, scenario_id=sid, hours=24, limit=10) == ["newest", "recent"]
    assert await active_users(tenant_id=t, scenario_id=sid, hours=24, limit=1) == ["newest"]
    assert await active_users(tenant_id=t, scenario_id=sid, hours=1000, limit=10) == ["newest", "recent", "old"]
    assert await active_users(tenant_id=new_id("tn"), scenario_id=sid, hours=24, limit=10) == []


async def test_candidates_warm_each_active_user_with_bounded_concurrency(scenarios):
    t = new_id("tn")
    sid = await scenario(scenarios, t)
    await events(t, sid, [(f"u{i}", 1.0 + i / 100) for i in range(9)])
    running, peak, asked = 0, 0, []

    class Recommendations:
        async def recommend(self, **kwargs):
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            await asyncio.sleep(0.01)
            running -= 1
            asked.append((kwargs["tenant_id"], kwargs["scenario_id"], kwargs["user_id"]))
            if kwargs["user_id"] == "u5":
                raise BadInput("user refused")

    progress = []

    async def report(fraction, stage):
        progress.append(fraction)

    service = CandidateService(Recommendations(), scenarios, CandidatePolicy(concurrency=3))
    result = await service.warm(tenant_id=t, scenario_id=sid, report=report)
    assert result == {"activeUsers": 9, "warmed": 8, "failed": 1}
    assert sorted(u for _, _, u in asked) == [f"u{i}" for i in range(9)] and {a[:2] for a in asked} == {(t, sid)}
    assert peak == 3 and progress[-1] == pytest.approx(1.0) and progress == sorted(progress)


async def test_candidates_without_an_engine_fail_once_with_a_clear_error(scenarios):
    t = new_id("tn")
    sid = await scenario(scenarios, t)
    await events(t, sid, [("a", 1.0), ("b", 2.0)])

    class NoEngine:
        calls = 0

        async def recommend(self, **kwargs):
            NoEngine.calls += 1
            raise Unavailable("this process runs no recommendation engine")

    with pytest.raises(Unavailable) as refused:
        await CandidateService(NoEngine(), scenarios).warm(tenant_id=t, scenario_id=sid, report=_ignore)
    assert "needs a recommendation engine in the worker" in refused.value.message and NoEngine.calls == 1


async def _ignore(fraction: float, stage: str) -> None:
    return None


# --- worker settings --------------------------------------------------------------------------------------------


def test_every_kind_is_registered_with_its_limit_and_tries():
    training = TrainingSettings(train_time_limit_s=100, job_max_tries=5)
    jobs = JobsSettings(similarity_time_limit_s=11, profiles_time_limit_s=22, candidates_time_limit_s=33,
                        cleanup_time_limit_s=44, max_tries=2, timeout_margin_s=7, item_vectors_timeout_s=55)
    functions = {f.name: f for f in job_functions(training, jobs)}
    expected = {"scenarios.train": 100, "scenarios.similarity": 11, "profiles.rebuild": 22,
                "candidates.precompute": 33, "maintenance.cleanup": 44}
    assert {name: f.timeout_s - 7 for name, f in functions.items() if name != SYNC_FUNCTION} == expected
    assert functions[SYNC_FUNCTION].timeout_s == 55  # the item-vector job: not a recorded kind
    assert functions["scenarios.train"].max_tries == 5
    assert {f.max_tries for name, f in functions.items() if name != "scenarios.train"} == {2}


async def test_the_in_process_worker_aborts_on_request_and_runs_the_schedules_unless_disabled():
    base = Settings()
    services = SimpleNamespace()
    worker = in_process_worker(services, redis_url="redis://127.0.0.1:1/0", settings=base)
    assert worker.allow_abort_jobs and set(worker.functions) >= {f"cron:{k.value}" for k in JobKind}
    quiet = base.model_copy(update={"jobs": base.jobs.model_copy(update={"cron": False})})
    worker = in_process_worker(services, redis_url="redis://127.0.0.1:1/0", settings=quiet)
    assert not any(name.startswith("cron:") for name in worker.functions)
    assert worker.ctx["tries"]["maintenance.cleanup"] == base.jobs.max_tries


async def test_tenants_listing_is_what_the_schedules_walk(served):
    """The real fan-out walks TenancyService.list_tenants: a tenant created now is in it."""
    tenant, _ = await served.runtime.services.tenancy.create_tenant(f"cron-{new_id('x')}")
    listed = {t.id for t in await served.runtime.services.tenancy.list_tenants()}
    assert tenant.id in listed and await Tenant.find_one({"_id": tenant.id}) is not None
