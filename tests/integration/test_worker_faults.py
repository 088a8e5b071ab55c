"""Fault: the worker is killed in the middle of a job. arq runs the job again on another worker (its next try), the
job ends SUCCEEDED after two attempts, and its result is applied once: one champion model version, never two."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from arq.constants import in_progress_key_prefix

from domain.jobs import JOB_FUNCTIONS, JobKind, JobStatus
from models.documents import Job, ModelVersion
from tests.conftest import new_tenant
from tests.e2e.test_training import shop

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


async def start_worker(served, models: Path, queue: str, log: Path, hang: tuple[str, Path] | None = None):
    """Start a worker process in its own process group (its training child goes with it when killed)."""
    args = [served.runtime.servers.mongo_url, served.settings.mongo.database, served.runtime.servers.redis_url,
            str(models), queue]
    if hang is not None:
        args += ["--hang", hang[0], str(hang[1])]
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.integration.worker_child", *args, cwd=ROOT, start_new_session=True,
        stdout=log.open("ab"), stderr=asyncio.subprocess.STDOUT,
    )


def kill_hard(process) -> None:
    """SIGKILL the worker's whole process group: no handler runs, nothing is cleaned up."""
    os.killpg(process.pid, signal.SIGKILL)


async def wait_for(predicate, timeout_s: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; worker log:\n{log.read_text()[-4000:]}")


@pytest.fixture(scope="module")
async def owner(served):
    return await new_tenant(served, "worker-faults")


@pytest.mark.parametrize("point", ["activated", "fitted"])
async def test_a_worker_killed_mid_job_is_retried_and_applies_its_result_once(served, gql, owner, tmp_path, point):
    sid = await shop(gql, owner.admin, f"killed-{point}", users=12, items=20)
    jobs = served.runtime.services.jobs
    job = await jobs.create(JobKind.TRAIN.value, tenant_id=owner.tenant_id, scenario_id=sid, time_limit_s=120)
    queue = f"faults-{point}"
    await served.runtime.arq.enqueue_job(JOB_FUNCTIONS[JobKind.TRAIN], owner.tenant_id, sid, job.id, _job_id=job.id,
                                         _queue_name=queue)
    models, marker, log = tmp_path / "models", tmp_path / "hung", tmp_path / "worker.log"
    first = await start_worker(served, models, queue, log, hang=(point, marker))
    try:
        await wait_for(lambda: asyncio.sleep(0, marker.exists()), 90, f"the first worker to reach {point}", log)
    finally:
        kill_hard(first)
        await first.wait()
    stuck = await jobs.get(job.id, tenant_id=owner.tenant_id)
    assert stuck.status == JobStatus.RUNNING and stuck.attempts == 1  # what the dead worker left
    # arq keeps a started job from other workers for its largest timeout + 10 s (40 min here); once that hold
    # lapses the job, still in the queue, is any worker's next try. Fast-forward the hold rather than wait it out.
    hold = in_progress_key_prefix + job.id
    assert await served.runtime.arq.pttl(hold) > 30 * 60 * 1000
    await served.runtime.arq.pexpire(hold, 50)
    second = await start_worker(served, models, queue, log)
    try:
        async def done() -> bool:
            return (await jobs.get(job.id, tenant_id=owner.tenant_id)).status not in ("QUEUED", "RUNNING")

        await wait_for(done, 90, "the job to be finished by the second worker", log)
    finally:
        second.terminate()
        await second.wait()
    final = await jobs.get(job.id, tenant_id=owner.tenant_id)
    assert final.status == JobStatus.SUCCEEDED and final.attempts == 2, final
    built = await ModelVersion.find({"tenant_id": owner.tenant_id, "scenario_id": sid}).sort("version").to_list()
    assert [v.aliases for v in built if v.aliases] == [["champion"]]  # applied once
    assert all(v.job_id == job.id for v in built)
    if point == "activated":  # the retry found the version its job had already activated
        assert [(v.version, v.status) for v in built] == [(1, "READY")]
        assert final.result["alreadyApplied"] is True and final.result["version"] == 1
    else:  # the half-built version was abandoned and built again once
        assert [(v.version, v.status) for v in built] == [(1, "FAILED"), (2, "READY")]
        assert "abandoned" in built[0].error and built[0].artifact is None
        assert final.result["version"] == 2 and (models / built[1].artifact).is_dir()
    assert await Job.find({"tenant_id": owner.tenant_id, "scenario_id": sid}).count() == 1
