"""What serving delivers, on fakes: each `recommendations` page reaches the observers with how it was answered
(cached, computed, continued) and how long it took, a failing observer never fails an answer; the exporter's
latency histogram, page-quality gauges, model ages and SRM p-values, hidden from a scrape without the token; and
the metrics port beyond loopback asks for the token."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import httpx
import pytest
from litestar import Litestar
from litestar.testing import AsyncTestClient
from prometheus_client.parser import text_string_to_metric_families

from domain.realtime.pagestats import PageQuality
from domain.realtime.snapshots import MetricsWindow, SnapshotRequest
from domain.recommend.service import CACHED, COMPUTED, CONTINUED, PageServed
from graph.metrics import Metrics
from graph.metrics_access import TENANT_LABELS, metrics_port
from graph.quality_metrics import ServingExporter
from tests.conftest import free_port
from tests.unit.test_recommend_service import ask, model, parts  # noqa: F401 (fixtures)

NOW = datetime(2026, 12, 7, 12, tzinfo=UTC)


def samples(metrics: Metrics, *, hide: bool = False) -> dict[tuple[str, frozenset], float]:
    text = metrics.render(hide_labels=TENANT_LABELS if hide else ()).decode()
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


async def test_quality_observers_hear_each_page_with_how_it_was_answered(parts):  # noqa: F811
    service, _, _, _ = parts
    heard: list[PageServed] = []
    stop = service.watch(heard.append)
    first = await ask(service, "u0")
    again = await ask(service, "u0")  # the cached answer
    await ask(service, "u0", after=first.next_cursor)
    stop()
    await ask(service, "u0")
    assert [p.answer for p in heard] == [COMPUTED, CACHED, CONTINUED]
    assert heard[0].item_ids == tuple(r.item_id for r in first.items) == tuple(r.item_id for r in again.items)
    assert all(p.tenant_id == "t1" and p.scenario_id == "s1" and 0 < p.seconds < 5 for p in heard)


async def test_quality_a_failing_observer_never_fails_the_answer(parts):  # noqa: F811
    service, _, _, _ = parts
    heard: list[PageServed] = []

    def broken(page: PageServed) -> None:
        raise RuntimeError("metrics broke")

    service.watch(broken)
    service.watch(heard.append)
    page = await ask(service, "u1")
    assert page.items and len(heard) == 1  # the next observer still heard it


def test_quality_exporter_times_answers_and_exports_page_quality_per_scenario():
    metrics = Metrics()
    exporter = ServingExporter(metrics)
    exporter.observe(PageServed("t1", "s1", ("a",), CACHED, 0.004))
    exporter.observe(PageServed("t1", "s1", ("a",), COMPUTED, 0.03))
    hour = SnapshotRequest("t1", "s1", MetricsWindow.HOUR)
    other = SnapshotRequest("t2", "s9", MetricsWindow.MINUTE)
    exporter.update_quality([
        (hour, PageQuality(pages=10, first_pages=8, cache_hits=2, diversity=0.75, distinct_items=30, active_items=60)),
        (other, PageQuality(pages=1, first_pages=1, distinct_items=5, active_items=2)),
    ])
    got = samples(metrics)
    assert got[("recograph_recommendation_seconds_count", frozenset({("answer", "cached")}))] == 1
    assert got[("recograph_recommendation_seconds_bucket", frozenset({("answer", "computed"), ("le", "0.025")}))] == 0
    assert got[("recograph_recommendation_seconds_bucket", frozenset({("answer", "computed"), ("le", "0.05")}))] == 1
    labels = frozenset({("tenant", "t1"), ("scenario", "s1"), ("window", "hour")})
    assert got[("recograph_live_cache_hit_rate", labels)] == pytest.approx(0.25)
    assert got[("recograph_live_diversity", labels)] == pytest.approx(0.75)
    assert got[("recograph_live_coverage", labels)] == pytest.approx(0.5)
    assert got[("recograph_live_pages", labels)] == 10
    t2 = frozenset({("tenant", "t2"), ("scenario", "s9"), ("window", "minute")})
    assert got[("recograph_live_coverage", t2)] == 1  # more served than active now: at most 1
    # a scenario that falls silent loses its series
    exporter.update_quality([(hour, PageQuality(pages=1))])
    assert not any(dict(k[1]).get("tenant") == "t2" for k in samples(metrics))
    # tenants and scenarios are no one else's business: hidden without the token, the latency stays
    hidden = samples(metrics, hide=True)
    assert not any(name.startswith("recograph_live_") for name, _ in hidden)
    assert ("recograph_recommendation_seconds_count", frozenset({("answer", "cached")})) in hidden


def test_quality_exporter_ages_served_models_and_reports_running_experiments_srm():
    metrics = Metrics()
    exporter = ServingExporter(metrics)
    exporter.update_models([("t1", "feed", 3, NOW - timedelta(hours=40)), ("t1", "shop", 7, NOW.replace(tzinfo=None))],
                           now=NOW)
    exporter.update_srm([("t1", "feed", "x1", 1e-5), ("t2", "news", "x2", 0.6)])
    got = samples(metrics)
    feed = frozenset({("tenant", "t1"), ("scenario", "feed")})
    assert got[("recograph_model_age_seconds", feed)] == 40 * 3600
    assert got[("recograph_model_version", feed)] == 3
    assert got[("recograph_model_age_seconds", frozenset({("tenant", "t1"), ("scenario", "shop")}))] == 0
    x1 = frozenset({("tenant", "t1"), ("scenario", "feed"), ("experiment", "x1")})
    assert got[("recograph_experiment_srm_p_value", x1)] == pytest.approx(1e-5)
    exporter.update_srm([("t2", "news", "x2", 0.5)])  # x1 stopped
    exporter.update_models([], now=NOW)  # the scenarios were unloaded
    got = samples(metrics)
    assert ("recograph_experiment_srm_p_value", x1) not in got
    assert not any(name == "recograph_model_age_seconds" for name, _ in got)


async def test_quality_scrape_reads_models_from_memory_and_srm_from_the_results_service():
    metrics = Metrics()
    ServingExporter(metrics)
    asked: list[int] = []

    class Results:
        async def running_srm(self) -> list[tuple[str, str, str, float]]:
            asked.append(1)
            return [("t1", "feed", "x1", 0.0002)]

    trained_at = datetime.now(UTC) - timedelta(hours=2)
    runtime = SimpleNamespace(registry=SimpleNamespace(trained=lambda: [("t1", "feed", 4, trained_at)]),
                              services=SimpleNamespace(experiment_results=Results()))
    state = SimpleNamespace(runtime=runtime)
    text = (await metrics.scrape(state)).decode()
    await metrics.scrape(state)  # within SRM_MIN_INTERVAL_S: the last read is reused
    assert len(asked) == 1
    assert 'recograph_experiment_srm_p_value{experiment="x1",scenario="feed",tenant="t1"} 0.0002' in text
    [age] = [s.value for f in text_string_to_metric_families(text) for s in f.samples
             if s.name == "recograph_model_age_seconds"]
    assert 2 * 3600 <= age < 2 * 3600 + 60


@pytest.mark.parametrize("authorization, status", [(None, 401), ("Bearer wrong", 401), ("Bearer s3cret", 200)])
async def test_quality_metrics_port_beyond_loopback_asks_for_the_token(authorization, status):
    port = free_port()
    metrics = Metrics()
    metrics.read_gauge("live_clicks", "Clicks.", ("tenant", "scenario", "window")).labels("t1", "s1", "hour").set(3)
    app = Litestar(route_handlers=[], lifespan=[metrics_port(metrics, port, host="0.0.0.0", token="s3cret")])
    headers = {"Authorization": authorization} if authorization else {}
    async with AsyncTestClient(app), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        scrape = await client.get("/metrics", headers=headers)
    assert scrape.status_code == status
    assert ('tenant="t1"' in scrape.text) is (status == 200)


async def test_quality_metrics_port_on_loopback_needs_no_token():
    port = free_port()
    app = Litestar(route_handlers=[], lifespan=[metrics_port(Metrics(), port, token="s3cret")])
    async with AsyncTestClient(app), httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        assert (await client.get("/metrics")).status_code == 200
