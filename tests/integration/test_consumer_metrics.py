"""Consumer metrics from Redis: each tenant stream's length, lag and pending entries, bounded in tenants, read on
a real redis-server (6.2: the lag past the group's cursor is counted, up to a bound)."""

from __future__ import annotations

from types import SimpleNamespace

from prometheus_client.parser import text_string_to_metric_families
from redis import asyncio as aioredis

from domain.realtime.backlog import LAG_COUNT_LIMIT, read_backlog
from domain.realtime.keys import FIELD, GROUP, HEARTBEAT, STREAMS, stream_key
from graph.metrics import Metrics
from tests.conftest import free_port


def sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return s.value
    return None


async def stream(redis: aioredis.Redis, tenant: str, entries: int, *, delivered: int = 0, acked: int = 0,
                 group: bool = True) -> None:
    """Add entries to a tenant's stream; a consumer reads `delivered` of them and acknowledges `acked`."""
    key = stream_key(tenant)
    await redis.sadd(STREAMS, tenant)
    ids = [await redis.xadd(key, {FIELD: f"e{n}"}) for n in range(entries)]
    if group:
        await redis.xgroup_create(key, GROUP, id="0")
    if delivered:
        await redis.xreadgroup(GROUP, "c1", {key: ">"}, count=delivered)
    if acked:
        await redis.xack(key, GROUP, *ids[:acked])


async def test_the_backlog_counts_lag_and_pending_per_tenant(redis):
    await stream(redis, "busy", 10, delivered=6, acked=2)
    await stream(redis, "idle", 3, delivered=3, acked=3)
    await stream(redis, "nogroup", 4, group=False)
    await stream(redis, "flood", LAG_COUNT_LIMIT + 20)
    await redis.sadd(STREAMS, "empty")  # registered, no stream yet
    backlog = await read_backlog(redis)
    rows = {r.tenant_id: r for r in backlog.tenants}
    assert backlog.streams == 5 and not backlog.consumer_alive
    assert (rows["busy"].length, rows["busy"].lag, rows["busy"].pending, rows["busy"].consumers) == (10, 4, 4, 1)
    assert (rows["idle"].lag, rows["idle"].pending, rows["idle"].lag_seconds) == (0, 0, 0.0)
    assert (rows["nogroup"].length, rows["nogroup"].lag) == (4, 4)
    assert rows["flood"].lag == LAG_COUNT_LIMIT  # counted up to the bound
    assert rows["empty"].length == 0
    await redis.set(HEARTBEAT, "c1", px=5000)
    bounded = await read_backlog(redis, max_tenants=2)
    assert len(bounded.tenants) == 2 and bounded.streams == 5 and bounded.consumer_alive


async def test_metrics_export_the_backlog_on_scrape_and_drop_tenants_gone(redis):
    await stream(redis, "busy", 10, delivered=6, acked=2)
    metrics = Metrics()
    text = (await metrics.scrape(SimpleNamespace(runtime=SimpleNamespace(cache=SimpleNamespace(client=redis)))))
    text = text.decode()
    assert sample(text, "recograph_consumer_pending", tenant="busy") == 4
    assert sample(text, "recograph_consumer_lag", tenant="busy") == 4
    assert sample(text, "recograph_consumer_stream_length", tenant="busy") == 10
    assert sample(text, "recograph_consumer_streams") == 1
    assert sample(text, "recograph_consumer_backlog_up") == 1
    assert sample(text, "recograph_consumer_read_total") is not None  # this process's counters, 0 without one
    await redis.srem(STREAMS, "busy")
    await metrics.consumer.refresh(redis)
    assert sample(metrics.render().decode(), "recograph_consumer_pending", tenant="busy") is None


async def test_a_scrape_still_answers_when_redis_is_down():
    gone = aioredis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.2)
    text = (await Metrics().scrape(SimpleNamespace(runtime=SimpleNamespace(cache=SimpleNamespace(client=gone)))))
    assert sample(text.decode(), "recograph_consumer_backlog_up") == 0
    assert sample(text.decode(), "recograph_consumers_running") is not None
    await gone.aclose()
