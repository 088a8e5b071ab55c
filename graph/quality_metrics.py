"""Prometheus series of what serving delivers and what it serves from; the alert rules in deploy/prometheus read them.

- `recograph_recommendation_seconds{answer}`: `recommendations` answers from call to return, by answer (`cached`,
  `computed`, `continued` for a page asked `after` another); every serving process observes its own (pooled).
- `recograph_live_{cache_hit_rate,diversity,coverage,pages}{tenant, scenario, window}`: the served pages' quality
  (domain.realtime.pagestats) over the last minute and hour, beside `recograph_live_ctr`. Each serving process notes
  its pages and adds them to Redis every few seconds; the gauges are refreshed from Redis every LIVE_REFRESH_S by a
  background task, for the scenarios with traffic lately (as the live gauges are), never on scrape.
- `recograph_model_age_seconds{tenant, scenario}` and `recograph_model_version{tenant, scenario}`: the trained model
  each scenario serves from in the scraped process (seconds since it was trained), read from memory on scrape.
- `recograph_experiment_srm_p_value{tenant, scenario, experiment}`: each running experiment's sample-ratio-mismatch
  p-value from its last refreshed results (refreshed each minute beside the consumer), read from MongoDB on scrape
  at most once per SRM_MIN_INTERVAL_S.
Tenant-labelled series are hidden from a scrape without credentials (graph.metrics_access).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog

from domain.errors import DomainError
from domain.realtime.pagestats import PageQuality, PageStats
from domain.realtime.snapshots import SnapshotRequest
from domain.recommend.service import CACHED, CONTINUED, PageServed
from graph.metrics import LIVE_REFRESH_S, LIVE_WINDOWS, Metrics

if TYPE_CHECKING:
    from domain.realtime.live import LiveMetrics
    from graph.runtime import Runtime

_log = structlog.get_logger()

SRM_MIN_INTERVAL_S = 10.0  # scrapes closer together than this reuse the last read of the running experiments
_QUALITY: dict[str, tuple[str, Any]] = {
    "cache_hit_rate": ("Share of first pages of `recommendations` answered from a cached answer",
                       lambda q: q.cache_hit_rate),
    "diversity": ("Mean pairwise Jaccard distance of the categories within served pages", lambda q: q.diversity),
    "coverage": ("Share of the scenario's active items served", lambda q: q.coverage),
    "pages": ("Pages of `recommendations` served", lambda q: q.pages),
}


class _Series:
    """Read gauges of one label tuple each, whose label sets are replaced whole on each update."""

    def __init__(self, gauges: Iterable[Any]) -> None:
        self._gauges = list(gauges)
        self._exported: set[tuple[str, ...]] = set()

    def replace(self, rows: dict[tuple[str, ...], Sequence[float]]) -> None:
        """Set each gauge's value per label tuple (one value per gauge, in order) and drop the tuples not given."""
        for labels in self._exported - rows.keys():
            for gauge in self._gauges:
                with contextlib.suppress(KeyError):  # never set for this tuple
                    gauge.remove(*labels)
        for labels, values in rows.items():
            for gauge, value in zip(self._gauges, values, strict=True):
                gauge.labels(*labels).set(value)
        self._exported = set(rows)


class ServingExporter:
    """The series above, for one app's metrics."""

    def __init__(self, metrics: Metrics) -> None:
        self._seconds = metrics.histogram(
            "recommendation_seconds", "`recommendations` answers from call to return, by answer (cached, computed, "
            "continued).", ("answer",))
        windowed = ("tenant", "scenario", "window")
        self._quality = _Series(metrics.read_gauge(f"live_{name}", f"{doc} in the sliding window, per scenario.",
                                                   windowed) for name, (doc, _) in _QUALITY.items())
        scenario = ("tenant", "scenario")
        self._models = _Series([
            metrics.read_gauge("model_age_seconds", "Seconds since the model the scenario serves was trained.",
                               scenario),
            metrics.read_gauge("model_version", "Version of the model the scenario serves.", scenario),
        ])
        self._srm = _Series([metrics.read_gauge(
            "experiment_srm_p_value", "Sample-ratio-mismatch p-value of a running experiment (chi-square of "
            "exposures against the planned weights; mismatch below 0.001).", ("tenant", "scenario", "experiment"))])
        self._srm_at = float("-inf")
        self._stats: PageStats | None = None
        metrics.on_scrape(self._scrape)

    def observe(self, page: PageServed) -> None:
        """Record one `recommendations` page (a `RecommendationService.watch` observer)."""
        self._seconds.labels(page.answer).observe(page.seconds)
        if self._stats is not None:
            self._stats.note(tenant_id=page.tenant_id, scenario_id=page.scenario_id, item_ids=page.item_ids,
                             first=page.answer != CONTINUED, cached=page.answer == CACHED)

    def update_quality(self, rows: Sequence[tuple[SnapshotRequest, PageQuality]]) -> None:
        """Set the page-quality gauges and drop those of scenarios no longer among `rows`."""
        self._quality.replace({
            (r.tenant_id, r.scenario_id, r.window.value.lower()): [read(q) for _, read in _QUALITY.values()]
            for r, q in rows
        })

    def update_models(self, trained: Iterable[tuple[str, str, int, datetime]], *, now: datetime) -> None:
        """Set each served model's age and version (tenant, scenario, version, trained at)."""
        self._models.replace({
            (tenant, scenario): [max((now - _aware(at)).total_seconds(), 0.0), version]
            for tenant, scenario, version, at in trained
        })

    def update_srm(self, running: Iterable[tuple[str, str, str, float]]) -> None:
        """Set each running experiment's SRM p-value (tenant, scenario, experiment, p-value)."""
        self._srm.replace({(tenant, scenario, experiment): [p] for tenant, scenario, experiment, p in running})

    async def refresh_quality(self, live: LiveMetrics, stats: PageStats) -> None:
        """Read the recent scenarios' page quality over the exported windows (one round trip) and set the gauges."""
        requests = [SnapshotRequest(t, s, w) for t, s in live.recent() for w in LIVE_WINDOWS]
        qualities = await stats.read_many(requests) if requests else []
        self.update_quality(list(zip(requests, qualities, strict=True)))

    @asynccontextmanager
    async def running(self, runtime: Runtime) -> AsyncIterator[None]:
        """While the block runs, observe this process's `recommendations`, add their page statistics to Redis and
        keep the quality gauges current (a serving process with Redis); flush once more on the way out."""
        client = getattr(runtime.cache, "client", None)
        live = runtime.services.live
        stop = runtime.services.recommendations.watch(self.observe)
        tasks: list[asyncio.Task] = []
        if client is not None and runtime.registry is not None:
            self._stats = PageStats(client, runtime.registry)
            tasks.append(asyncio.create_task(self._stats.run(), name="recograph-page-stats"))
            if live is not None and live.available:
                tasks.append(asyncio.create_task(self._refresh_loop(live, self._stats), name="recograph-quality"))
        try:
            yield
        finally:
            stop()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            self._stats = None

    async def _refresh_loop(self, live: LiveMetrics, stats: PageStats, interval_s: float = LIVE_REFRESH_S) -> None:
        while True:
            try:
                await live.start()
                await self.refresh_quality(live, stats)
            except DomainError as exc:
                _log.warning("page_quality.refresh_failed", error=exc.message)
            await asyncio.sleep(interval_s)

    async def _scrape(self, state: Any) -> None:
        runtime = getattr(state, "runtime", None)  # set by the app's lifespan; absent in bare test apps
        if runtime is None:
            return
        if runtime.registry is not None:
            self.update_models(runtime.registry.trained(), now=datetime.now(UTC))
        if time.monotonic() - self._srm_at >= SRM_MIN_INTERVAL_S:
            self._srm_at = time.monotonic()
            self.update_srm(await runtime.services.experiment_results.running_srm())


def _aware(at: datetime) -> datetime:
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)
