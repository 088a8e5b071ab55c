"""Logs and traces for the API process: structlog lines on stderr and OpenTelemetry spans."""

from __future__ import annotations

import functools
import logging
import re
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import structlog
from litestar.logging.config import BaseLoggingConfig
from litestar.plugins import InitPlugin
from litestar.plugins.opentelemetry import OpenTelemetryConfig, OpenTelemetryPlugin
from opentelemetry import trace
from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.metrics import NoOpMeterProvider
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import Decision, ParentBased, Sampler, SamplingResult, TraceIdRatioBased
from opentelemetry.semconv.attributes.http_attributes import HTTP_ROUTE
from opentelemetry.trace import SpanKind
from strawberry.extensions import SchemaExtension
from strawberry.extensions.tracing import OpenTelemetryExtension

from graph.logs import add_trace_context, configure_logging

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping, Sequence

    from litestar.config.app import AppConfig
    from litestar.types import ASGIApp, Message, Receive, Scope, Send
    from litestar.types.callable_types import GetLogger
    from opentelemetry.sdk.trace import SpanProcessor
    from opentelemetry.util.types import Attributes

    from models.settings import TelemetrySettings

__all__ = (
    "REQUEST_ID_HEADER",
    "UNTRACED_PATHS",
    "TracingHandle",
    "add_trace_context",
    "configure_logging",
    "litestar_logging_config",
    "log_context_extension",
    "request_context_middleware",
    "setup_tracing",
    "strawberry_extensions",
    "tracing_plugins",
)

REQUEST_ID_HEADER = b"x-request-id"
# Client-chosen ids end up in every log line, so only short, plain ones are kept.
_REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes arrive every few seconds and would drown the traces that matter.
UNTRACED_PATHS = (r"^/metrics$", r"^/health/")


# Logging (configure_logging: graph.logs)


def _log_uncaught(_logger: Any, scope: Scope, _traceback: list[str]) -> None:
    """Log an exception Litestar could not handle, with the request path as a field."""
    structlog.get_logger("litestar").exception("uncaught exception", path=scope["path"], connection=scope["type"])


@dataclass
class _RootLoggingConfig(BaseLoggingConfig):
    """Litestar logging that leaves handlers to `configure_logging` instead of replacing the root handler."""

    log_exceptions: Literal["always", "debug", "never"] = "always"
    # Client errors are answers, not faults; only 5xx deserve a traceback in the log.
    disable_stack_trace: set[int | type[Exception]] = field(default_factory=lambda: set(range(400, 500)))
    exception_logging_handler: Any = _log_uncaught
    traceback_line_limit: int = -1

    def configure(self) -> GetLogger:
        """Hand Litestar the stdlib loggers, already routed by `configure_logging`."""
        return logging.getLogger

    @staticmethod
    def set_level(logger: Any, level: int) -> None:
        """Ignore Litestar's debug-flag level changes; the level comes from settings."""


def litestar_logging_config() -> BaseLoggingConfig:
    """Return the `logging_config=` for Litestar that keeps `configure_logging`'s handler in charge."""
    return _RootLoggingConfig()


def _request_id(scope: Scope) -> str:
    """Reuse the caller's X-Request-ID when it looks like an id, else make a new one."""
    for name, value in scope["headers"]:
        if name == REQUEST_ID_HEADER and _REQUEST_ID.fullmatch(value):
            return value.decode()
    return uuid.uuid4().hex


def request_context_middleware(app: ASGIApp) -> ASGIApp:
    """Wrap a routed handler to bind `request_id` to every log line of the request and echo it in the response."""

    async def bind_request_id(scope: Scope, receive: Receive, send: Send) -> None:
        request_id = _request_id(scope)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), (REQUEST_ID_HEADER, request_id.encode())]
            await send(message)

        # Litestar resolves dependencies (Strawberry's context getter too) in child tasks, whose contextvars never
        # flow back; binding here, in the request's own task, reaches the handler and every resolver.
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            await app(scope, receive, send_with_id)

    return bind_request_id


class _LogContextExtension(SchemaExtension):
    """Bind fields taken from the GraphQL context to the log lines of one operation."""

    fields: ClassVar[Callable[[Any], Mapping[str, Any]]]

    def on_operation(self) -> Iterator[None]:
        """Keep the fields bound while the operation parses, validates and resolves."""
        with structlog.contextvars.bound_contextvars(**self.fields(self.execution_context.context)):
            yield


def log_context_extension(fields: Callable[[Any], Mapping[str, Any]]) -> type[SchemaExtension]:
    """Return a Strawberry extension binding `fields(context)`, e.g. the tenant id, to an operation's log lines."""
    # The context getter runs as a Litestar dependency in a child task, so what it binds never reaches resolvers.
    return type("LogContextExtension", (_LogContextExtension,), {"fields": staticmethod(fields)})


# Tracing


class _NoOrphanClientSpans(Sampler):
    """Sample new traces by ratio, but never start one from a bare client call."""

    # The in-process arq worker polls Redis every half second; each poll would be its own root trace.

    def __init__(self, ratio: float) -> None:
        self._ratio = TraceIdRatioBased(ratio)

    def should_sample(  # noqa: PLR0913
        self,
        parent_context: Any,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Any = None,
        trace_state: Any = None,
    ) -> SamplingResult:
        """Drop root client spans; defer everything else to the ratio sampler."""
        if kind == SpanKind.CLIENT:
            return SamplingResult(Decision.DROP)
        return self._ratio.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        """Describe the sampler for diagnostics."""
        return f"NoOrphanClientSpans{{{self._ratio.get_description()}}}"


class _ClientInstrumentation:
    """Process-wide pymongo and redis instrumentation, held by the newest tracer provider."""

    # Instrumentors are singletons patching global state, so one provider at a time can own them; the newest
    # wins so that a test's fresh app sees its own database spans.

    def __init__(self) -> None:
        self.provider: TracerProvider | None = None

    def attach(self, provider: TracerProvider) -> None:
        """Instrument pymongo and redis so their client spans go to `provider`."""
        self.detach()
        pymongo = PymongoInstrumentor()
        # pymongo listeners cannot be unregistered, so the instrumentor re-enables its first listener, whose tracer
        # came from the first (perhaps shut-down) provider; dropping it makes `instrument` build a fresh one.
        pymongo._commandtracer_instance = None  # noqa: SLF001
        pymongo.instrument(tracer_provider=provider)
        RedisInstrumentor().instrument(tracer_provider=provider)
        self.provider = provider

    def detach(self, provider: TracerProvider | None = None) -> None:
        """Remove the instrumentation if `provider` (or, when None, anyone) holds it."""
        if self.provider is None or (provider is not None and provider is not self.provider):
            return
        PymongoInstrumentor().uninstrument()
        RedisInstrumentor().uninstrument()
        self.provider = None


_CLIENTS = _ClientInstrumentation()


@dataclass(frozen=True)
class TracingHandle:
    """The app's tracer provider; pymongo and redis report to it until it shuts down or a newer one starts."""

    provider: TracerProvider

    def tracer(self, name: str) -> trace.Tracer:
        """Return a tracer from this handle's provider, for spans around engine or job work."""
        return self.provider.get_tracer(name)

    def shutdown(self) -> None:
        """Remove client instrumentation held by this handle, then flush and close span export."""
        _CLIENTS.detach(self.provider)
        self.provider.shutdown()


def _otlp_processor(endpoint: str) -> SpanProcessor:
    """Batch spans to an OTLP/HTTP collector at `endpoint` (the base URL, as in OTEL_EXPORTER_OTLP_ENDPOINT)."""
    # Imported here: the exporter pulls in requests and protobuf, which only an exporting process needs.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    url = endpoint if endpoint.rstrip("/").endswith("/v1/traces") else f"{endpoint.rstrip('/')}/v1/traces"
    return BatchSpanProcessor(OTLPSpanExporter(endpoint=url))


def setup_tracing(telemetry: TelemetrySettings, *, span_processor: SpanProcessor | None = None) -> TracingHandle | None:
    """Create a tracer provider from settings and instrument the database clients; None when tracing is off or
    nothing would receive the spans (no OTLP endpoint and no `span_processor`)."""
    # Without an exporter every request and Redis/pymongo command would still create, sample and end spans that go
    # nowhere: a few percent of a request's CPU for nothing.
    if not telemetry.tracing or (not telemetry.otlp_endpoint and span_processor is None):
        return None
    provider = TracerProvider(
        resource=Resource.create({SERVICE_NAME: telemetry.service_name}),
        sampler=ParentBased(_NoOrphanClientSpans(telemetry.sample_ratio)),
        # The app's lifespan calls `TracingHandle.shutdown`; an atexit hook per provider would pile up in tests.
        shutdown_on_exit=False,
    )
    if telemetry.otlp_endpoint:
        provider.add_span_processor(_otlp_processor(telemetry.otlp_endpoint))
    if span_processor is not None:
        provider.add_span_processor(span_processor)
    _CLIENTS.attach(provider)
    return TracingHandle(provider=provider)


def _span_details(scope: Scope) -> tuple[str, dict[str, Any]]:
    """Name the server span by method only; the route is not known until Litestar has routed."""
    return str(scope.get("method") or scope["type"].upper()), {}


def _name_span_after_route(app: ASGIApp) -> ASGIApp:
    """Wrap a routed handler so the server span carries the route template, not the raw path."""

    async def name_span(scope: Scope, receive: Receive, send: Send) -> None:
        span = trace.get_current_span()
        if span.is_recording():
            route = scope.get("path_template") or scope["path"]
            span.set_attribute(HTTP_ROUTE, route)
            span.update_name(f"{scope.get('method') or scope['type'].upper()} {route}")
        await app(scope, receive, send)

    return name_span


class _RouteSpanNames(InitPlugin):
    """Add the span-naming middleware; Litestar runs app middleware after routing."""

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        """Append the span-naming middleware to the app's middleware."""
        app_config.middleware.append(_name_span_after_route)
        return app_config


def tracing_plugins(
    handle: TracingHandle | None, *, untraced_paths: Sequence[str] = UNTRACED_PATHS
) -> list[InitPlugin]:
    """Return the Litestar plugins that open a server span per request; empty when tracing is off."""
    if handle is None:
        return []
    config = OpenTelemetryConfig(
        tracer_provider=handle.provider,
        # Prometheus owns metrics; the ASGI instrumentation would otherwise record into the global meter.
        meter_provider=NoOpMeterProvider(),
        exclude=list(untraced_paths) or None,
        # A span per ASGI message doubles the spans of every request and says nothing the server span does not.
        exclude_spans=["receive", "send"],
        scope_span_details_extractor=_span_details,
    )
    return [OpenTelemetryPlugin(config), _RouteSpanNames()]


def strawberry_extensions(telemetry: TelemetrySettings, handle: TracingHandle | None) -> list[Any]:
    """Return Strawberry's resolver-span extension when configured; it costs 40-60% of throughput."""
    if handle is None or not telemetry.resolver_spans:
        return []
    return [functools.partial(OpenTelemetryExtension, tracer_provider=handle.provider)]
