"""Live metrics: the window maths, the sums over the consumer's hashes (on a real redis-server), the pub/sub feed
and stream, and the Prometheus gauges. Hashes are written with the contract's own key and field functions."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
from redis import asyncio as aioredis

from domain.errors import Unavailable
from domain.realtime import contracts as c
from domain.realtime.live import LiveMetrics, MetricsFeed, tenant_of
from domain.realtime.snapshots import (
    Counters, MetricsWindow, SnapshotReader, SnapshotRequest, plan_window, summarise,
)
from graph.metrics import LiveMetricsExporter, Metrics
from models.cache import InMemoryCache
from models.embedded.process import free_port
from models.embedded.servers import start_redis

# 2026-11-25 12:34:56 UTC: 34 minutes and 56 seconds into an hour.
NOW = datetime(2026, 11, 25, 12, 34, 56, tzinfo=UTC).timestamp()
MINUTE = int(NOW) // 60
HOUR = int(NOW) // 3600


@pytest.fixture
async def client(redis_url) -> AsyncIterator[aioredis.Redis]:
    redis = aioredis.from_url(redis_url, socket_timeout=1.0)
    await redis.flushdb()
    yield redis
    await redis.aclose()


# --- windows -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("window, buckets", [
    (MetricsWindow.MINUTE, 2), (MetricsWindow.FIVE_MINUTES, 6), (MetricsWindow.HOUR, 61),
])
def test_short_windows_read_the_minutes_from_the_one_current_window_seconds_ago(window, buckets):
    plan = plan_window(window, NOW)
    assert plan.hours == ()
    assert plan.minutes == tuple(range(MINUTE - buckets + 1, MINUTE + 1))
    assert plan.start == (int(NOW) - window.seconds) // 60 * 60
    assert NOW - window.seconds - 60 < plan.start <= NOW - window.seconds


def test_day_reads_whole_hours_by_hour_and_both_edges_by_minute_each_minute_once():
    plan = plan_window(MetricsWindow.DAY, NOW)
    assert plan.hours == tuple(range(HOUR - 23, HOUR))  # yesterday's 13:00 .. today's 11:00, all complete
    assert plan.minutes[0] == MINUTE - 1440 and plan.minutes[-1] == MINUTE
    covered = list(plan.minutes) + [m for h in plan.hours for m in range(h * 60, h * 60 + 60)]
    assert sorted(covered) == list(range(MINUTE - 1440, MINUTE + 1))  # no gap, no double count


def test_day_starting_on_an_hour_boundary_has_no_leading_minutes():
    on_the_hour = HOUR * 3600 + 5.0  # five seconds into the hour
    plan = plan_window(MetricsWindow.DAY, on_the_hour)
    assert plan.hours == tuple(range(HOUR - 24, HOUR))
    assert plan.minutes == (HOUR * 60,)


# --- sums ----------------------------------------------------------------------------------------------------


def test_summarise_adds_totals_and_breakdowns_and_derives_rates():
    first = {
        c.IMPRESSIONS: "40", c.CLICKS: "4", c.INTERACTIONS: "10", c.ATTRIBUTED: "6", c.WATCHES: "2",
        c.WATCH_SECONDS: "50.5", c.COMPLETIONS: "2", c.COMPLETION_SUM: "1.5", c.CONVERSIONS: "1",
        c.by_source(c.IMPRESSIONS, "als"): "30", c.by_source(c.CLICKS, "als"): "3",
        c.by_variant(c.IMPRESSIONS, "B"): "40", c.by_variant(c.CLICKS, "B"): "4",
    }
    second = {
        b"impressions": b"60", b"clicks": b"1", b"interactions": b"5", b"watches": b"1", b"watch_seconds": b"10",
        c.by_source(c.IMPRESSIONS, "popular").encode(): b"60", c.by_source(c.CLICKS, "popular").encode(): b"1",
        b"no_such_counter": b"7", b"clicks|bogus:x": b"9", b"clicks|src:": b"9",
    }
    totals, by_source, by_variant = summarise([first, second, {}])
    assert totals == Counters(impressions=100, clicks=5, interactions=15, watch_seconds=60.5, watches=3,
                              completion_sum=1.5, completions=2, conversions=1, attributed=6)
    assert totals.ctr == pytest.approx(0.05)
    assert totals.interaction_rate == pytest.approx(0.06)
    assert totals.avg_watch_seconds == pytest.approx(60.5 / 3)
    assert totals.completion_rate == pytest.approx(0.75)
    assert totals.conversion_rate == pytest.approx(0.01)
    assert [(b.name, b.counters.impressions, b.counters.clicks) for b in by_source] == [
        ("popular", 60, 1), ("als", 30, 3),
    ]
    assert by_source[1].counters.ctr == pytest.approx(0.1)
    assert [(b.name, b.counters.impressions) for b in by_variant] == [("B", 40)]


def test_rates_are_zero_without_denominators():
    empty = Counters(clicks=3, conversions=1)
    rates = (empty.ctr, empty.interaction_rate, empty.avg_watch_seconds, empty.completion_rate, empty.conversion_rate)
    assert rates == (0, 0, 0, 0, 0)


# --- reading Redis -------------------------------------------------------------------------------------------


async def _write(client: aioredis.Redis, key: str, fields: dict[str, float]) -> None:
    await client.hset(key, mapping=fields)


async def test_reader_sums_the_window_minutes_of_one_scenario_only(client):
    t, s = "t1", "s1"
    await _write(client, c.minute_key(t, s, MINUTE), {c.IMPRESSIONS: 10, c.CLICKS: 2, c.by_source(c.CLICKS, "als"): 2})
    await _write(client, c.minute_key(t, s, MINUTE - 1), {c.IMPRESSIONS: 5, c.CLICKS: 1})
    await _write(client, c.minute_key(t, s, MINUTE - 5), {c.IMPRESSIONS: 100})  # outside a MINUTE window
    await _write(client, c.minute_key(t, "other", MINUTE), {c.IMPRESSIONS: 1000})
    await _write(client, c.minute_key("t2", s, MINUTE), {c.IMPRESSIONS: 1000})
    reader = SnapshotReader(client)

    minute = await reader.read(tenant_id=t, scenario_id=s, window=MetricsWindow.MINUTE, now=NOW)
    assert (minute.totals.impressions, minute.totals.clicks) == (15, 3)
    assert minute.totals.ctr == pytest.approx(0.2)
    assert [(b.name, b.counters.clicks) for b in minute.by_source] == [("als", 2)]
    assert minute.window_start == datetime.fromtimestamp((MINUTE - 1) * 60, tz=UTC)
    assert minute.window_end == datetime.fromtimestamp(NOW, tz=UTC)

    five = await reader.read(tenant_id=t, scenario_id=s, window=MetricsWindow.FIVE_MINUTES, now=NOW)
    assert five.totals.impressions == 115


async def test_day_reads_hour_hashes_for_whole_hours_not_their_minutes(client):
    t, s = "t1", "s1"
    full_hour = HOUR - 3
    await _write(client, c.hour_key(t, s, full_hour), {c.IMPRESSIONS: 500, c.CONVERSIONS: 5})
    # The consumer also wrote this hour's minutes; summing both would count them twice.
    await _write(client, c.minute_key(t, s, full_hour * 60 + 7), {c.IMPRESSIONS: 500, c.CONVERSIONS: 5})
    await _write(client, c.hour_key(t, s, HOUR), {c.IMPRESSIONS: 9999})  # the current hour: read by minutes
    await _write(client, c.minute_key(t, s, MINUTE), {c.IMPRESSIONS: 20})
    await _write(client, c.minute_key(t, s, MINUTE - 1440), {c.IMPRESSIONS: 3})  # the leading edge minute
    await _write(client, c.hour_key(t, s, HOUR - 25), {c.IMPRESSIONS: 7777})  # before the window
    day = await SnapshotReader(client).read(tenant_id=t, scenario_id=s, window=MetricsWindow.DAY, now=NOW)
    assert day.totals.impressions == 523
    assert day.totals.conversion_rate == pytest.approx(5 / 523)


async def test_read_many_shares_one_pipeline_and_keeps_request_order(client):
    await _write(client, c.minute_key("t1", "a", MINUTE), {c.CLICKS: 1})
    await _write(client, c.minute_key("t1", "b", MINUTE - 30), {c.CLICKS: 2})
    requests = [SnapshotRequest("t1", "b", MetricsWindow.HOUR), SnapshotRequest("t1", "a", MetricsWindow.MINUTE),
                SnapshotRequest("t1", "b", MetricsWindow.MINUTE)]
    snapshots = await SnapshotReader(client).read_many(requests, now=NOW)
    assert [(x.scenario_id, x.window, x.totals.clicks) for x in snapshots] == [
        ("b", MetricsWindow.HOUR, 2), ("a", MetricsWindow.MINUTE, 1), ("b", MetricsWindow.MINUTE, 0),
    ]


async def test_unreachable_redis_is_unavailable_not_a_hang():
    dead = aioredis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_timeout=0.2, socket_connect_timeout=0.2)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(SnapshotReader(dead).read(tenant_id="t", scenario_id="s"), 5)
    live = LiveMetrics(dead)
    with pytest.raises(Unavailable):
        await asyncio.wait_for(anext(live.stream(tenant_id="t", scenario_id="s")), 10)
    await dead.aclose()


async def test_in_memory_cache_has_no_live_metrics():
    live = LiveMetrics.over(InMemoryCache())
    assert not live.available and live.recent() == []
    with pytest.raises(Unavailable):
        await live.snapshot(tenant_id="t", scenario_id="s")


# --- feed and stream -----------------------------------------------------------------------------------------


def test_tenant_of_parses_only_metrics_channels():
    assert tenant_of(c.metrics_channel("t_42")) == "t_42"
    assert tenant_of("t:{t_42}:other") is None and tenant_of(c.metrics_channel("")) is None


async def _until(predicate, timeout: float = 3.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_feed_wakes_only_the_named_scenario_and_remembers_recent_ones(client):
    feed = MetricsFeed(client)
    try:
        async with feed.listen("t1", "s1") as mine, feed.listen("t1", "s2") as other:
            await client.publish(c.metrics_channel("t1"), "s1")
            await asyncio.wait_for(mine.wait(), 3)
            assert not other._moved.is_set()
            await client.publish(c.metrics_channel("t2"), "s1")  # same scenario id, another tenant
            await _until(lambda: ("t2", "s1") in feed.recent())
            assert not other._moved.is_set()
            assert feed.recent() == [("t2", "s1"), ("t1", "s1")]
            assert feed.listeners() == 2
        assert feed.listeners() == 0
    finally:
        await feed.close()


def test_recent_is_bounded_and_forgets_silent_scenarios():
    feed = MetricsFeed(None, recent_ttl_s=10, max_recent=3)  # type: ignore[arg-type]
    for i in range(5):
        feed.heard("t", f"s{i}", now=100.0 + i)
    assert feed.recent(now=105.0) == [("t", "s4"), ("t", "s3"), ("t", "s2")]
    assert feed.recent(now=113.5) == [("t", "s4")]


async def test_stream_sends_at_once_then_one_coalesced_snapshot_per_burst_and_none_when_idle(client):
    live = LiveMetrics(client, min_interval_s=0.3)
    stream = live.stream(tenant_id="t1", scenario_id="s1", window=MetricsWindow.MINUTE)
    try:
        first = await asyncio.wait_for(anext(stream), 3)
        assert first.totals.impressions == 0
        key = c.minute_key("t1", "s1", int(time.time()) // 60)  # a MINUTE window also holds the minute before
        for _ in range(5):  # a burst of batches
            await client.hincrby(key, c.IMPRESSIONS, 2)
            await client.publish(c.metrics_channel("t1"), "s1")
        second = await asyncio.wait_for(anext(stream), 3)
        assert second.totals.impressions == 10
        with pytest.raises(TimeoutError):  # the burst gave one snapshot; idle gives none
            await asyncio.wait_for(asyncio.shield(nxt := asyncio.ensure_future(anext(stream))), 0.8)
        await client.hincrby(key, c.CLICKS, 1)
        await client.publish(c.metrics_channel("t1"), "s1")
        third = await asyncio.wait_for(nxt, 3)
        assert (third.totals.impressions, third.totals.clicks) == (10, 1)
    finally:
        await stream.aclose()
        assert live.feed.listeners() == 0
        await live.close()


# --- Prometheus ----------------------------------------------------------------------------------------------


async def test_exporter_sets_gauges_for_recent_scenarios_and_drops_silent_ones(client):
    metrics = Metrics()
    exporter = LiveMetricsExporter(metrics)
    live = LiveMetrics(client)
    await _write(client, c.minute_key("t1", "s1", int(time.time()) // 60), {c.IMPRESSIONS: 8, c.CLICKS: 2})
    live.feed.heard("t1", "s1")
    await exporter.refresh(live)
    text = metrics.render().decode()
    assert 'recograph_live_impressions{scenario="s1",tenant="t1",window="minute"} 8.0' in text
    assert 'recograph_live_ctr{scenario="s1",tenant="t1",window="hour"} 0.25' in text
    assert "recograph_live_metrics_listeners 0.0" in text
    exporter.update([])
    assert 'scenario="s1"' not in metrics.render().decode()


async def test_a_stream_whose_redis_dies_ends_with_an_error_not_a_hang(tmp_path):
    handle = await start_redis(tmp_path, tmp_path / "redis.log", persist=False)
    redis = aioredis.from_url(handle.url, socket_timeout=1.0, socket_connect_timeout=0.5)
    live = LiveMetrics(redis)
    stream = live.stream(tenant_id="t1", scenario_id="s1")
    try:
        await asyncio.wait_for(anext(stream), 3)
        await handle.stop()
        with pytest.raises(Unavailable):
            await asyncio.wait_for(anext(stream), 10)
    finally:
        await stream.aclose()
        await live.close()
        await redis.aclose()
        await handle.stop()
