"""System health (issue 13) on a real Redis and the embedded MongoDB: each tenant's consumer lag, stuck consumer,
dead letters, jobs and serving models are its own, never another tenant's; the lag counted on Redis 6.2."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from redis.asyncio import Redis

from domain.health import ARQ_QUEUE, OK, HealthService
from domain.ids import new_id, utcnow
from domain.jobs import JobService
from domain.learning.versions import MODEL_KIND
from domain.realtime.backlog import read_tenant_backlog
from domain.realtime.deadletters import Burial, DeadLetters
from domain.realtime.keys import FIELD, GROUP, HEARTBEAT, STREAMS, stream_key
from models.documents import Job, ModelVersion, Scenario


@pytest.fixture
async def redis(redis_url) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    await client.flushdb()
    await client.set(HEARTBEAT, "consumer-1", px=60_000)
    yield client
    await client.aclose()


async def add(redis: Redis, tenant: str, *, age_s: float, n: int, delivered: int = 0) -> None:
    """Append n entries received age_s ago to the tenant's stream; deliver `delivered` of them, never acknowledged."""
    await redis.sadd(STREAMS, tenant)
    ms = int((time.time() - age_s) * 1000)
    for seq in range(n):
        await redis.xadd(stream_key(tenant), {FIELD: "x"}, id=f"{ms}-{seq}")
    await redis.xgroup_create(stream_key(tenant), GROUP, id="0")
    if delivered:
        await redis.xreadgroup(GROUP, "stuck", {stream_key(tenant): ">"}, count=delivered)


async def jobs_of(redis: Redis, tenant: str, *, queued: int, lost: int, running: int, failed: int,
                  failed_long_ago: int = 0) -> None:
    """Create the tenant's job records: queued ones in arq's queue, lost ones (QUEUED, not in it), and the rest."""
    jobs = JobService()

    async def one(n: int) -> Job:
        return await jobs.create("train", tenant_id=tenant, scenario_id=f"sc_{n}_{new_id('x')}")

    for n in range(queued):
        await redis.zadd(ARQ_QUEUE, {(await one(n)).id: time.time() * 1000})
    for n in range(lost):
        await one(n)
    for n in range(running):
        await jobs.mark_running((await one(n)).id, tenant_id=tenant, attempt=1)
    for n in range(failed + failed_long_ago):
        job = await one(n)
        await jobs.fail(job.id, tenant_id=tenant, error="boom")
        if n >= failed:
            await Job.get_pymongo_collection().update_one(
                {"_id": job.id}, {"$set": {"finished_at": utcnow() - timedelta(days=2)}})
    # A QUEUED record older than arq keeps a job: abandoned, counted nowhere.
    old = await one(99)
    await Job.get_pymongo_collection().update_one({"_id": old.id},
                                                  {"$set": {"created_at": utcnow() - timedelta(days=2)}})
    await redis.zadd(ARQ_QUEUE, {old.id: 0})


async def scenario_of(tenant: str, name: str, champions: list[tuple[int, float]]) -> str:
    """Create a scenario with champion versions (version, hours since trained; the last one promoted last)."""
    now = utcnow()
    sid = new_id("sc")
    await Scenario(id=sid, tenant_id=tenant, name=name, template="CUSTOM", config={}, created_at=now,
                   updated_at=now).insert()
    for n, (version, hours) in enumerate(champions):
        trained = now - timedelta(hours=hours)
        await ModelVersion(id=new_id("mv"), tenant_id=tenant, scenario_id=sid, kind=MODEL_KIND, version=version,
                           status="READY", aliases=["champion"], created_at=trained, trained_at=trained,
                           activated_at=now - timedelta(minutes=10 - n), artifact="x").insert()
    await ModelVersion(id=new_id("mv"), tenant_id=tenant, scenario_id=sid, kind=MODEL_KIND, version=99,
                       status="READY", aliases=["challenger"], created_at=now, trained_at=now).insert()
    return sid


async def test_system_health_each_tenant_sees_its_own_figures_only(served, redis):
    mine, theirs, empty = new_id("tn"), new_id("tn"), new_id("tn")
    await add(redis, mine, age_s=120, n=5, delivered=2)  # 3 undelivered + 2 pending, waiting for 2 minutes
    await add(redis, theirs, age_s=0, n=40)  # a large fresh backlog of another tenant
    dead = DeadLetters(redis)
    await dead.bury([Burial(raw="not json", error="bad"), Burial(raw="[1]", error="bad")], tenant_id=mine)
    await dead.bury([Burial(raw=f"x{n}", error="bad") for n in range(7)], tenant_id=theirs)
    await jobs_of(redis, mine, queued=1, lost=1, running=1, failed=1, failed_long_ago=1)
    await jobs_of(redis, theirs, queued=3, lost=0, running=2, failed=4)
    served_sid = await scenario_of(mine, "feed", [(1, 48.0), (2, 3.0)])  # v2 promoted last
    untrained_sid = await scenario_of(mine, "shop", [])
    await scenario_of(theirs, "their feed", [(7, 1.0)])
    health = HealthService(redis=redis, vectors=None, dead_letters=dead, stall_s=30)

    report = await health.check(tenant_id=mine)
    assert report.unavailable == ()
    assert [(s.name, s.state) for s in report.stores] == [("mongodb", OK), ("redis", OK), ("vectors", OK)]
    assert report.status == OK
    assert (report.consumer_lag, report.consumer_stuck, report.consumer_state) == (5, True, "stalled")
    assert report.dead_letters == 2
    assert (report.queue_depth, report.running_jobs, report.failed_jobs) == (1, 1, 1)
    by_id = {s.scenario_id: s for s in report.scenarios}
    assert set(by_id) == {served_sid, untrained_sid}
    feed = by_id[served_sid]
    assert (feed.name, feed.model_version) == ("feed", 2)
    assert 3 * 3600 - 5 < feed.model_age_s < 3 * 3600 + 60
    assert abs((report.checked_at - feed.model_trained_at).total_seconds() - feed.model_age_s) < 1e-3
    assert by_id[untrained_sid].model_version is None and by_id[untrained_sid].model_age_s is None

    other = await health.check(tenant_id=theirs)
    assert (other.consumer_lag, other.consumer_stuck, other.dead_letters) == (40, False, 7)
    assert (other.queue_depth, other.running_jobs, other.failed_jobs) == (3, 2, 4)
    assert [(s.name, s.model_version) for s in other.scenarios] == [("their feed", 7)]

    nothing = await health.check(tenant_id=empty)
    assert (nothing.consumer_lag, nothing.consumer_stuck, nothing.dead_letters, nothing.queue_depth,
            nothing.running_jobs, nothing.failed_jobs, nothing.scenarios) == (0, False, 0, 0, 0, 0, ())


async def test_system_health_a_tenant_whose_entries_wait_without_a_consumer_is_stuck(served, redis):
    tenant = new_id("tn")
    await redis.delete(HEARTBEAT)
    await add(redis, tenant, age_s=10, n=2)
    report = await HealthService(redis=redis, vectors=None).check(tenant_id=tenant)
    assert (report.consumer_lag, report.consumer_stuck, report.consumer_state) == (2, True, "absent")


async def test_system_health_lag_is_counted_past_the_cursor_up_to_the_limit(redis):
    tenant = new_id("tn")
    await add(redis, tenant, age_s=1, n=30, delivered=10)
    await redis.xack(stream_key(tenant), GROUP, *[mid for mid, _ in await redis.xrange(stream_key(tenant), count=4)])
    found = await read_tenant_backlog(redis, tenant_id=tenant, count_limit=1000)
    assert (found.length, found.lag, found.pending) == (30, 20, 6)
    assert (await read_tenant_backlog(redis, tenant_id=tenant, count_limit=5)).lag == 5
    assert (await read_tenant_backlog(redis, tenant_id=new_id("tn"))).lag == 0  # no stream at all
