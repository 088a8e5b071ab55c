"""Prometheus metrics of one app: its own registry, GraphQL and HTTP instruments, and the /metrics route."""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from litestar import Request, Response, get
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from strawberry.extensions import SchemaExtension

from domain.errors import DomainError
from domain.realtime.backlog import MAX_TENANTS, Backlog, read_backlog
from domain.realtime.snapshots import Counters, MetricsSnapshot, MetricsWindow, SnapshotRequest
from workers.consumer import POOL_ENV, process_exited
from workers.metrics import ConsumerCollector

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Collection, Iterator, Sequence

    from litestar.handlers import HTTPRouteHandler

    from domain.realtime.live import LiveMetrics
    from litestar.types import ASGIApp, Message, Receive, Scope, Send
    from strawberry.types import ExecutionContext

__all__ = ("DURATION_BUCKETS", "NAMESPACE", "ConsumerExporter", "GraphQLMetricsExtension", "LiveMetricsExporter",
           "Metrics", "ReadGauge", "pooled_dir", "process_exited", "share_across_processes")

_log = structlog.get_logger()

NAMESPACE = "recograph"
# Served queries answer in about a millisecond from memory; the tail is cold caches and large mutations.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
SCRAPE_TIMEOUT_S = 1.0  # a scrape hook (a Redis read) that takes longer is skipped for that scrape
# Operation names come from clients; past this many distinct names, new ones share one label value.
MAX_OPERATION_NAMES = 200
OTHER_OPERATIONS = "other"
# Litestar appends the charset itself.
CONTENT_TYPE = "text/plain; version=0.0.4"


def share_across_processes(directory: Path) -> None:
    """Pool this process's Prometheus values with its children's: from now on counters, histograms and gauges keep
    their values in files under `directory` (emptied here), children inherit the setting, and `/metrics`, whichever
    process answers it, renders them summed. Call before the app is created."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[POOL_ENV] = str(directory)
    values.ValueClass = values.get_value_class()  # prometheus_client chose its value class at import


def pooled_dir() -> str | None:
    """Return the directory of pooled values, when this process shares them."""
    return os.environ.get(POOL_ENV)


class ReadGauge:
    """A gauge of values every process reads alike from a shared store (Redis), held in this process only: with
    pooled values, the scraped process renders its own copy rather than one per process. Same `labels(...).set`,
    `set` and `remove` as a Prometheus gauge."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self._name = f"{NAMESPACE}_{name}"
        self._documentation = documentation
        self._labels = tuple(labels)
        self._values: dict[tuple[str, ...], float] = {} if self._labels else {(): 0.0}

    def labels(self, *label_values: object) -> _ReadGaugeChild:
        return _ReadGaugeChild(self._values, tuple(str(v) for v in label_values))

    def set(self, value: float) -> None:
        self._values[()] = float(value)

    def remove(self, *label_values: object) -> None:
        """Forget a series; KeyError when it was never set."""
        del self._values[tuple(str(v) for v in label_values)]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(self._name, self._documentation, labels=self._labels)
        for key, value in self._values.items():
            family.add_metric(list(key), value)
        yield family


class _ReadGaugeChild:
    def __init__(self, into: dict[tuple[str, ...], float], key: tuple[str, ...]) -> None:
        self._into, self._key = into, key

    def set(self, value: float) -> None:
        self._into[self._key] = float(value)


class Metrics:
    """Prometheus instruments of one app, in a registry of its own so several apps never collide."""

    def __init__(self, *, max_operation_names: int = MAX_OPERATION_NAMES) -> None:
        self.registry = CollectorRegistry()
        self._read_gauges: list[ReadGauge] = []
        self._operation_names: set[str] = set()
        self._max_operation_names = max_operation_names
        self.graphql_operations = self.counter(
            "graphql_operations_total", "GraphQL operations by name, type and outcome.", ("operation", "type", "status")
        )
        self.graphql_operation_seconds = self.histogram(
            "graphql_operation_seconds", "GraphQL operation duration from parse to result.", ("operation", "type")
        )
        self.http_requests = self.counter(
            "http_requests_total", "Routed HTTP requests by route template and status code.", ("path", "status")
        )
        self.http_request_seconds = self.histogram(
            "http_request_seconds", "Routed HTTP request duration until the handler returns.", ("path",)
        )
        self._scrape_hooks: list[Callable[[Any], Awaitable[None]]] = []
        self.consumer = ConsumerExporter(self)

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """Create the counter `recograph_<name>` in this registry."""
        return Counter(name, documentation, labels, namespace=NAMESPACE, registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        """Create the gauge `recograph_<name>` of this process in this registry (pooled values: summed over the
        live processes)."""
        return Gauge(name, documentation, labels, namespace=NAMESPACE, registry=self.registry,
                     multiprocess_mode="livesum")

    def read_gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> ReadGauge:
        """Create the gauge `recograph_<name>` for values read from a shared store (see `ReadGauge`)."""
        gauge = ReadGauge(name, documentation, labels)
        self.registry.register(gauge)
        self._read_gauges.append(gauge)
        return gauge

    def histogram(
        self, name: str, documentation: str, labels: Sequence[str] = (), buckets: Sequence[float] = DURATION_BUCKETS
    ) -> Histogram:
        """Create the histogram `recograph_<name>` in this registry; buckets default to 1 ms..2 s."""
        return Histogram(name, documentation, labels, namespace=NAMESPACE, registry=self.registry, buckets=buckets)

    def record_operation(self, name: str, operation_type: str, *, failed: bool, seconds: float) -> None:
        """Count one GraphQL operation and observe its duration."""
        label = self._operation_label(name)
        self.graphql_operations.labels(label, operation_type, "error" if failed else "ok").inc()
        self.graphql_operation_seconds.labels(label, operation_type).observe(seconds)

    def _operation_label(self, name: str) -> str:
        """Keep label cardinality bounded however many operation names clients invent."""
        if name in self._operation_names:
            return name
        if len(self._operation_names) >= self._max_operation_names:
            return OTHER_OPERATIONS
        self._operation_names.add(name)
        return name

    def extension(self) -> type[GraphQLMetricsExtension]:
        """Return a Strawberry extension class, for `Schema(extensions=[...])`, that records into these metrics."""
        return type("GraphQLMetricsExtension", (GraphQLMetricsExtension,), {"metrics": self})

    def render(self, *, hide_labels: Collection[str] = ()) -> bytes:
        """Render the registry in the Prometheus text format 0.0.4 (pooled values: every process's, summed),
        leaving out every series that has one of `hide_labels` (e.g. tenant ids for a caller without credentials)."""
        if (directory := pooled_dir()) is None:
            return generate_latest(_Hiding(self.registry, hide_labels) if hide_labels else self.registry)
        pooled = CollectorRegistry()
        MultiProcessCollector(pooled, path=directory)
        for gauge in self._read_gauges:
            pooled.register(gauge)
        return generate_latest(_Hiding(pooled, hide_labels) if hide_labels else pooled)

    def on_scrape(self, hook: Callable[[Any], Awaitable[None]]) -> None:
        """Run `hook(app_state)` before each render (bounded by SCRAPE_TIMEOUT_S): for values read on demand."""
        self._scrape_hooks.append(hook)

    async def scrape(self, state: Any, *, hide_labels: Collection[str] = ()) -> bytes:
        """Run the scrape hooks (a slow or failing one only leaves its values as they were), then render."""
        for hook in self._scrape_hooks:
            try:
                await asyncio.wait_for(hook(state), SCRAPE_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a scrape answers with what it has, whatever one reader hit
                _log.warning("metrics.scrape_hook_failed", error=repr(exc))
        return self.render(hide_labels=hide_labels)

    def route(self, path: str = "/metrics", **handler_options: Any) -> HTTPRouteHandler:
        """Return a GET handler at `path` serving the registry; options (guards, opt) go to `litestar.get`."""

        # Rendering takes well under a millisecond for this registry, so it stays on the event loop.
        @get(path, include_in_schema=False, **handler_options)
        async def prometheus_metrics(request: Request) -> Response[bytes]:
            return Response(await self.scrape(request.app.state), media_type=CONTENT_TYPE)

        return prometheus_metrics

    def middleware(self, app: ASGIApp) -> ASGIApp:
        """Wrap a routed Litestar handler to count and time its HTTP requests; pass as `middleware=[...]`."""

        async def count_request(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            response = _ResponseStatus(send)
            start = time.perf_counter()
            try:
                await app(scope, receive, response.send)
            finally:
                path = scope.get("path_template") or scope["path"]
                self.http_requests.labels(path, str(response.status)).inc()
                self.http_request_seconds.labels(path).observe(time.perf_counter() - start)

        return count_request


class _Hiding:
    """A view of a registry without the series that carry any of some labels."""

    def __init__(self, registry: CollectorRegistry, labels: Collection[str]) -> None:
        self._registry, self._labels = registry, frozenset(labels)

    def collect(self) -> Iterator[Metric]:
        for family in self._registry.collect():
            kept = [s for s in family.samples if self._labels.isdisjoint(s.labels)]
            if kept:
                view = Metric(family.name, family.documentation, family.type, family.unit)
                view.samples = kept
                yield view


class _ResponseStatus:
    """Pass ASGI messages through and remember the response status; 500 until one is sent."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.status = 500

    async def send(self, message: Message) -> None:
        """Forward `message`, noting the status of a response start."""
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self._send(message)


def _operation_type(context: ExecutionContext) -> str:
    """Return query, mutation or subscription; unknown when the document did not parse."""
    try:
        return context.operation_type.value
    except RuntimeError:
        return "unknown"


def _has_errors(context: ExecutionContext) -> bool:
    """Tell whether parsing, validation or execution reported errors."""
    return bool(context.pre_execution_errors) or bool(getattr(context.result, "errors", None))


class GraphQLMetricsExtension(SchemaExtension):
    """Count and time each GraphQL operation; get one bound to a registry from `Metrics.extension()`."""

    metrics: ClassVar[Metrics]

    def on_operation(self) -> Iterator[None]:
        """Time the operation and record its name, type and outcome, also when it raises."""
        start = time.perf_counter()
        failed = True
        try:
            yield
            failed = _has_errors(self.execution_context)
        finally:
            context = self.execution_context
            self.metrics.record_operation(
                context.operation_name or "anonymous",
                _operation_type(context),
                failed=failed,
                seconds=time.perf_counter() - start,
            )


# Live per-scenario metrics: exported windows, and what each gauge reads from a window's counters.
LIVE_WINDOWS = (MetricsWindow.MINUTE, MetricsWindow.HOUR)
LIVE_REFRESH_S = 5.0
_LIVE_GAUGES: dict[str, tuple[str, Callable[[Counters], float]]] = {
    "impressions": ("Items shown", lambda c: c.impressions),
    "clicks": ("CLICK events", lambda c: c.clicks),
    "ctr": ("Clicks per impression", lambda c: c.ctr),
    "interactions": ("Accepted events of every type", lambda c: c.interactions),
    "interaction_rate": ("Events citing a served list per impression", lambda c: c.interaction_rate),
    "conversions": ("PURCHASE events", lambda c: c.conversions),
    "avg_watch_seconds": ("Mean seconds watched per WATCH event", lambda c: c.avg_watch_seconds),
    "completion_rate": ("Mean completed fraction of WATCH events", lambda c: c.completion_rate),
}


class LiveMetricsExporter:
    """Gauges `recograph_live_<name>{tenant, scenario, window}` for the scenarios with traffic lately.

    Refreshed from the same snapshot reader as the `metrics` subscription by a background task; the scenarios are
    those the metrics channel named within the last hour (at most `MAX_RECENT`), so label sets stay bounded, and a
    scenario that falls silent loses its series.
    """

    def __init__(self, metrics: Metrics) -> None:
        labels = ("tenant", "scenario", "window")
        self._gauges = {
            name: (metrics.read_gauge(f"live_{name}", f"{doc} in the sliding window, per scenario.", labels), read)
            for name, (doc, read) in _LIVE_GAUGES.items()
        }
        self._exported: set[tuple[str, str]] = set()
        self._listeners = metrics.gauge("live_metrics_listeners", "Open `metrics` subscriptions in this process.")

    def update(self, snapshots: Sequence[tuple[str, MetricsSnapshot]]) -> None:
        """Set the gauges from (tenant, snapshot) pairs and drop the series of scenarios no longer among them."""
        current = {(tenant, s.scenario_id) for tenant, s in snapshots}
        for tenant, scenario in self._exported - current:
            self._remove(tenant, scenario)
        for tenant, snapshot in snapshots:
            window = snapshot.window.value.lower()
            for gauge, read in self._gauges.values():
                gauge.labels(tenant, snapshot.scenario_id, window).set(read(snapshot.totals))
        self._exported = current

    def _remove(self, tenant: str, scenario: str) -> None:
        for gauge, _ in self._gauges.values():
            for window in LIVE_WINDOWS:
                with contextlib.suppress(KeyError):  # this window was never set for it
                    gauge.remove(tenant, scenario, window.value.lower())

    async def refresh(self, live: LiveMetrics) -> None:
        """Read the recent scenarios' windows (one round trip) and update the gauges."""
        self._listeners.set(live.feed.listeners() if live.feed is not None else 0)
        pairs = live.recent()
        requests = [SnapshotRequest(t, s, w) for t, s in pairs for w in LIVE_WINDOWS]
        snapshots = await live.snapshots(requests) if requests else []
        self.update([(r.tenant_id, snap) for r, snap in zip(requests, snapshots, strict=True)])

    async def run(self, live: LiveMetrics, interval_s: float = LIVE_REFRESH_S) -> None:
        """Hear the metrics channels and refresh every interval until cancelled; Redis failures only skip a round."""
        while True:
            try:
                await live.start()
                await self.refresh(live)
            except DomainError as exc:
                _log.warning("live_metrics.refresh_failed", error=exc.message)
            await asyncio.sleep(interval_s)


# The event consumer: its counters where it runs in this process, and its backlog as Redis holds it.
BACKLOG_MIN_INTERVAL_S = 1.0  # scrapes closer together than this reuse the last read


class ConsumerExporter:
    """Prometheus series of the event consumer.

    - `recograph_consumer_{read,applied,claimed,batches,errors,dead_lettered}_total`,
      `recograph_consumer_last_batch_timestamp`
      and `recograph_consumers_running`: this process's consumers (`workers.metrics.ConsumerCollector`), read on
      each scrape; zero in a process that runs none.
    - The backlog, from Redis and so right wherever the consumers run: `recograph_consumer_stream_length`,
      `recograph_consumer_lag` (entries not delivered yet; counted up to a bound on Redis 6.2),
      `recograph_consumer_lag_seconds` and `recograph_consumer_pending` (delivered, not acknowledged) per tenant,
      for at most `max_tenants` tenants; `recograph_consumer_streams` (tenant streams in all),
      `recograph_consumer_alive` (some consumer renewed its heartbeat) and `recograph_consumer_backlog_up` (the
      last read succeeded). Read on scrape, at most once per BACKLOG_MIN_INTERVAL_S, in one or two round trips.
    """

    def __init__(self, metrics: Metrics, *, max_tenants: int = MAX_TENANTS) -> None:
        self._max_tenants = max_tenants
        if pooled_dir() is None:  # pooled: the consumers' own processes write their counters (workers.consumer)
            metrics.registry.register(ConsumerCollector())
        labels = ("tenant",)
        gauge = metrics.read_gauge
        self._length = gauge("consumer_stream_length", "Entries in the tenant's event stream.", labels)
        self._lag = gauge("consumer_lag", "Stream entries not yet delivered to the consumer group.", labels)
        self._lag_seconds = gauge(
            "consumer_lag_seconds", "Receive time of the newest entry minus that of the last one delivered.", labels)
        self._pending = gauge("consumer_pending", "Entries delivered to a consumer, not acknowledged.", labels)
        self._streams = gauge("consumer_streams", "Tenant event streams registered.")
        self._alive = gauge("consumer_alive", "1 while some consumer renews its heartbeat in Redis.")
        self._up = gauge("consumer_backlog_up", "1 when the last read of the backlog from Redis succeeded.")
        self._exported: set[str] = set()
        self._read_at = -BACKLOG_MIN_INTERVAL_S
        metrics.on_scrape(self._scrape)

    def update(self, backlog: Backlog) -> None:
        """Set the backlog series and drop those of tenants no longer read."""
        current = {row.tenant_id for row in backlog.tenants}
        for tenant in self._exported - current:
            for gauge in (self._length, self._lag, self._lag_seconds, self._pending):
                with contextlib.suppress(KeyError):
                    gauge.remove(tenant)
        for row in backlog.tenants:
            self._length.labels(row.tenant_id).set(row.length)
            self._lag.labels(row.tenant_id).set(row.lag)
            self._lag_seconds.labels(row.tenant_id).set(row.lag_seconds)
            self._pending.labels(row.tenant_id).set(row.pending)
        self._exported = current
        self._streams.set(backlog.streams)
        self._alive.set(1 if backlog.consumer_alive else 0)

    async def refresh(self, client: Any) -> None:
        """Read the backlog from Redis and update the series; a failed read sets `consumer_backlog_up` to 0."""
        self._read_at = time.monotonic()
        try:
            backlog = await read_backlog(client, max_tenants=self._max_tenants)
        except BaseException:
            self._up.set(0)
            raise
        self.update(backlog)
        self._up.set(1)

    async def _scrape(self, state: Any) -> None:
        runtime = getattr(state, "runtime", None)  # set by the app's lifespan; absent in bare test apps
        if runtime is None or time.monotonic() - self._read_at < BACKLOG_MIN_INTERVAL_S:
            return
        await self.refresh(runtime.cache.client)

