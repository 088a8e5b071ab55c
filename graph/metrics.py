"""Prometheus metrics of one app: its own registry, GraphQL and HTTP instruments, and the /metrics route."""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from litestar import Response, get
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from strawberry.extensions import SchemaExtension

from domain.errors import DomainError
from domain.realtime.snapshots import Counters, MetricsSnapshot, MetricsWindow, SnapshotRequest

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

    from litestar.handlers import HTTPRouteHandler

    from domain.realtime.live import LiveMetrics
    from litestar.types import ASGIApp, Message, Receive, Scope, Send
    from strawberry.types import ExecutionContext

__all__ = ("DURATION_BUCKETS", "NAMESPACE", "GraphQLMetricsExtension", "LiveMetricsExporter", "Metrics")

_log = structlog.get_logger()

NAMESPACE = "recograph"
# Served queries answer in about a millisecond from memory; the tail is cold caches and large mutations.
DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
# Operation names come from clients; past this many distinct names, new ones share one label value.
MAX_OPERATION_NAMES = 200
OTHER_OPERATIONS = "other"
# Litestar appends the charset itself.
CONTENT_TYPE = "text/plain; version=0.0.4"


class Metrics:
    """Prometheus instruments of one app, in a registry of its own so several apps never collide."""

    def __init__(self, *, max_operation_names: int = MAX_OPERATION_NAMES) -> None:
        self.registry = CollectorRegistry()
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

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """Create the counter `recograph_<name>` in this registry."""
        return Counter(name, documentation, labels, namespace=NAMESPACE, registry=self.registry)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        """Create the gauge `recograph_<name>` in this registry."""
        return Gauge(name, documentation, labels, namespace=NAMESPACE, registry=self.registry)

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

    def render(self) -> bytes:
        """Render the registry in the Prometheus text format 0.0.4."""
        return generate_latest(self.registry)

    def route(self, path: str = "/metrics", **handler_options: Any) -> HTTPRouteHandler:
        """Return a GET handler at `path` serving the registry; options (guards, opt) go to `litestar.get`."""

        # Rendering takes well under a millisecond for this registry, so it stays on the event loop.
        @get(path, include_in_schema=False, sync_to_thread=False, **handler_options)
        def prometheus_metrics() -> Response[bytes]:
            return Response(self.render(), media_type=CONTENT_TYPE)

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
            name: (metrics.gauge(f"live_{name}", f"{doc} in the sliding window, per scenario.", labels), read)
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
