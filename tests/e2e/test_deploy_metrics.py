"""The running app's /metrics, scraped as Prometheus would after real traffic: the business gauges per scenario
(cache hit rate, diversity, coverage, beside CTR) agree with the pages the test was served, running experiments
report their SRM p-value, and every metric that the alert rules (deploy/prometheus) and the Grafana dashboard
(deploy/grafana) read is one the app exports."""

from __future__ import annotations

import asyncio
import re
import time
from datetime import UTC, datetime

import httpx
import numpy as np
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from domain.catalogue import ItemData
from domain.realtime.pagestats import page_diversity
from domain.recommend.base import CatalogueView
from tests.conftest import METRICS_AUTH, new_tenant
from tests.e2e.test_experiments_serving import experiment
from tests.unit.test_deploy_artifacts import dashboard_queries, rules_files

pytestmark = pytest.mark.slow

CATEGORIES = {f"i{n}": (("comedy", "drama", "news")[n % 3],) + (("short",) if n % 4 == 0 else ()) for n in range(30)}
LIST = """query($s: ID!, $u: ID!, $after: String) {
  recommendations(scenarioId: $s, userId: $u, first: 5, after: $after) { requestId nextCursor items { item { id } } } }"""


async def scrape(served) -> str:
    async with httpx.AsyncClient() as client:
        response = await client.get(f"{served.url}/metrics", headers=METRICS_AUTH)
    assert response.status_code == 200
    return response.text


def values(text: str, name: str, **labels: str) -> list[float]:
    return [s.value for f in text_string_to_metric_families(text) for s in f.samples
            if s.name == name and labels.items() <= s.labels.items()]


async def until(served, name: str, *, timeout_s: float = 30.0, check=lambda v: bool(v), **labels: str) -> str:
    """Scrape until the series named satisfies `check`; return that scrape."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = await scrape(served)
        if check(values(text, name, **labels)) or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.5)


@pytest.fixture
async def shop(served):
    keys = await new_tenant(served, "deploy-metrics")
    services = served.runtime.services
    scenario = await services.scenarios.create(name="films", template="CUSTOM", config=None, tenant_id=keys.tenant_id)
    now = datetime.now(UTC)
    items = [ItemData(i, categories=c, published_at=now) for i, c in CATEGORIES.items()]
    assert not (await services.catalogue.upsert(items, tenant_id=keys.tenant_id, scenario_id=scenario.id)).errors
    return keys, scenario.id


async def page(gql, keys, scenario_id: str, user: str, after: str | None = None) -> dict:
    data = await gql.data(LIST, {"s": scenario_id, "u": user, "after": after}, key=keys.admin)
    return data["recommendations"]


async def test_deploy_metrics_business_gauges_describe_the_pages_served(served, gql, shop):
    keys, scenario_id = shop
    pages: list[list[str]] = []
    hits = 0
    for user in ("u1", "u2", "u3"):
        first = await page(gql, keys, scenario_id, user)
        again = await page(gql, keys, scenario_id, user)  # the cached answer, unless the user's version moved
        later = await page(gql, keys, scenario_id, user, first["nextCursor"])
        hits += again["requestId"] == first["requestId"]  # a cached answer is the same served list
        pages += [[i["item"]["id"] for i in p["items"]] for p in (first, again, later)]
    assert all(pages) and hits >= 1
    labels = {"tenant": keys.tenant_id, "scenario": scenario_id, "window": "hour"}
    text = await until(served, "recograph_live_pages", check=lambda v: v == [9.0], **labels)
    assert values(text, "recograph_live_pages", **labels) == [9.0]
    assert values(text, "recograph_live_cache_hit_rate", **labels) == [pytest.approx(hits / 6)]  # of 6 first pages
    view = CatalogueView(item_ids=list(CATEGORIES), titles=[None] * 30, categories=list(CATEGORIES.values()),
                         tags=[()] * 30, attributes=[{}] * 30, published_at=np.full(30, np.nan),
                         active=np.ones(30, dtype=bool))
    measured = [d for p in pages if (d := page_diversity(view, p)) is not None]
    assert values(text, "recograph_live_diversity", **labels) == [pytest.approx(sum(measured) / len(measured))]
    served_items = {i for p in pages for i in p}
    [coverage] = values(text, "recograph_live_coverage", **labels)
    assert coverage == pytest.approx(len(served_items) / 30, rel=0.02)  # a HyperLogLog's count
    assert values(text, "recograph_live_ctr", **labels) == [0.0]  # beside CTR: nobody clicked
    assert values(text, "recograph_recommendation_seconds_count", answer="cached")[0] >= hits
    assert values(text, "recograph_recommendation_seconds_count", answer="continued")[0] >= 3


async def test_deploy_metrics_a_running_experiment_reports_its_srm_p_value(served, gql, shop):
    keys, scenario_id = shop
    experiment_id = await experiment(gql, keys, scenario_id, variants=[{"name": "control"}, {"name": "b"}])
    for n in range(20):
        await page(gql, keys, scenario_id, f"x{n}")
    assert await served.runtime.services.realtime.wait_drained(tenant_id=keys.tenant_id, timeout_s=10)
    assert await served.runtime.services.experiment_results.refresh_running() >= 1
    labels = {"tenant": keys.tenant_id, "scenario": scenario_id, "experiment": experiment_id}
    text = await until(served, "recograph_experiment_srm_p_value", **labels)
    [p_value] = values(text, "recograph_experiment_srm_p_value", **labels)
    assert 0.001 <= p_value <= 1.0  # users split by hash: no mismatch


def exported(text: str) -> set[str]:
    """Return every sample name a scrape can hold: gauges as named, counters with _total, histograms' series."""
    names: set[str] = set()
    for family in text_string_to_metric_families(text):
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "summary": ("_sum", "_count")}
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
    return names


def metric_names(queries: list[str]) -> set[str]:
    return {name for q in queries for name in re.findall(r"\brecograph_\w+", q)}


async def test_deploy_metrics_every_metric_the_alerts_and_dashboard_read_is_exported(served):
    available = exported(await scrape(served))
    alerts = [rule["expr"] for path in rules_files() for group in yaml.safe_load(path.read_text())["groups"]
              for rule in group["rules"]]
    read = metric_names(alerts) | metric_names(dashboard_queries())
    assert len(read) >= 30
    assert read <= available, f"not exported: {sorted(read - available)}"
