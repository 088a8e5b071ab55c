"""Logs, traces and metrics of the API, checked through a small Strawberry app on Litestar."""

from __future__ import annotations

import datetime
import json
import logging
import socket
from typing import TYPE_CHECKING, Any

import pytest
import redis
import strawberry
import structlog
from litestar import Litestar, Request, get
from litestar.testing import AsyncTestClient
from opentelemetry.instrumentation.pymongo import PymongoInstrumentor
from opentelemetry.instrumentation.redis import RedisInstrumentor
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from prometheus_client.parser import text_string_to_metric_families
from pymongo import monitoring
from strawberry.extensions.tracing import OpenTelemetryExtension
from strawberry.litestar import make_graphql_controller

from graph.metrics import Metrics
from graph.observability import (
    configure_logging,
    litestar_logging_config,
    log_context_extension,
    request_context_middleware,
    setup_tracing,
    strawberry_extensions,
    tracing_plugins,
)
from models.settings import ServerSettings, TelemetrySettings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from opentelemetry.sdk.trace import ReadableSpan

    from graph.observability import TracingHandle


@strawberry.type
class Query:
    @strawberry.field
    def hello(self) -> str:
        structlog.get_logger("tests.resolver").info("resolving hello")
        return "world"

    @strawberry.field
    def boom(self) -> str:
        raise ValueError("boom")


async def _context(request: Request) -> dict[str, Any]:
    return {"tenant_id": request.headers.get("x-tenant-id")}


def _tenant_fields(context: dict[str, Any]) -> dict[str, Any]:
    return {"tenant_id": context["tenant_id"]}


@get("/explode", sync_to_thread=False)
def explode() -> None:
    raise RuntimeError("kaboom")


def _telemetry(**fields: Any) -> TelemetrySettings:
    # The fields are read through env aliases, so keyword arguments by field name would be silently ignored.
    return TelemetrySettings.model_construct(**fields)


def _app(metrics: Metrics, handle: TracingHandle | None, extensions: list[Any] | None = None) -> Litestar:
    schema = strawberry.Schema(
        Query,
        extensions=[metrics.extension(), log_context_extension(_tenant_fields), *(extensions or [])],
    )
    graphql = make_graphql_controller(schema, path="/graphql", context_getter=_context)
    return Litestar(
        route_handlers=[graphql, metrics.route(), explode],
        middleware=[request_context_middleware, metrics.middleware],
        plugins=tracing_plugins(handle),
        logging_config=litestar_logging_config(),
    )


def _sample(text: str, name: str, **labels: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return sample.value
    return None


def _server_spans(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return [span for span in exporter.get_finished_spans() if span.kind is SpanKind.SERVER and span.parent is None]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _mongo_find(request_id: int) -> None:
    # Stands in for a server round trip: pymongo hands these events to every registered command listener.
    address = ("127.0.0.1", 27017)
    started = monitoring.CommandStartedEvent({"find": "items"}, "recograph", request_id, address, request_id)
    took = datetime.timedelta(milliseconds=1)
    succeeded = monitoring.CommandSucceededEvent(
        took, {"ok": 1}, "find", request_id, address, request_id, database_name="recograph"
    )
    for listener in monitoring._LISTENERS.command_listeners:  # noqa: SLF001
        listener.started(started)
        listener.succeeded(succeeded)


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


@pytest.fixture
def handle(exporter: InMemorySpanExporter) -> Iterator[TracingHandle]:
    handle = setup_tracing(_telemetry(sample_ratio=1.0), span_processor=SimpleSpanProcessor(exporter))
    assert handle is not None
    yield handle
    handle.shutdown()


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def _json_lines(captured: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in captured.splitlines() if line.startswith("{")]


# Tracing and metrics through the app


async def test_query_gives_server_span_and_operation_metrics(
    handle: TracingHandle, exporter: InMemorySpanExporter
) -> None:
    metrics = Metrics()
    async with AsyncTestClient(_app(metrics, handle)) as client:
        answer = await client.post("/graphql", json={"query": "query Hello { hello }"})
        scrape = await client.get("/metrics")

    assert answer.json() == {"data": {"hello": "world"}}
    [span] = _server_spans(exporter)  # /metrics is not traced
    assert span.name == "POST /graphql"
    assert span.attributes is not None
    assert span.attributes["http.method"] == "POST"
    assert span.attributes["http.route"] == "/graphql"
    assert span.attributes["http.status_code"] == 200
    assert scrape.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = scrape.text
    assert _sample(text, "recograph_graphql_operations_total", operation="Hello", type="query", status="ok") == 1
    assert _sample(text, "recograph_graphql_operation_seconds_count", operation="Hello", type="query") == 1
    assert (_sample(text, "recograph_graphql_operation_seconds_sum", operation="Hello", type="query") or 0) > 0
    assert _sample(text, "recograph_http_requests_total", path="/graphql", status="200") == 1


async def test_failing_operations_count_as_errors(handle: TracingHandle) -> None:
    metrics = Metrics()
    async with AsyncTestClient(_app(metrics, handle)) as client:
        await client.post("/graphql", json={"query": "query Boom { boom }"})
        await client.post("/graphql", json={"query": "{ nope }"})
        text = (await client.get("/metrics")).text

    assert _sample(text, "recograph_graphql_operations_total", operation="Boom", type="query", status="error") == 1
    assert _sample(text, "recograph_graphql_operations_total", operation="Boom", type="query", status="ok") is None
    assert _sample(text, "recograph_graphql_operations_total", operation="anonymous", type="query", status="error") == 1


def test_operation_names_beyond_the_limit_share_one_label() -> None:
    metrics = Metrics(max_operation_names=1)
    metrics.record_operation("First", "query", failed=False, seconds=0.001)
    metrics.record_operation("Second", "query", failed=False, seconds=0.001)
    text = metrics.render().decode()

    assert _sample(text, "recograph_graphql_operations_total", operation="First", type="query", status="ok") == 1
    assert _sample(text, "recograph_graphql_operations_total", operation="other", type="query", status="ok") == 1


def test_each_metrics_instance_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.counter("cache_hits_total", "Cache hits.").inc()

    assert _sample(first.render().decode(), "recograph_cache_hits_total") == 1
    assert _sample(second.render().decode(), "recograph_cache_hits_total") is None


async def test_unrouted_request_span_is_named_by_method_only(
    handle: TracingHandle, exporter: InMemorySpanExporter
) -> None:
    async with AsyncTestClient(_app(Metrics(), handle)) as client:
        await client.get("/no/such/path/123")

    [span] = _server_spans(exporter)
    assert span.name == "GET"
    assert span.attributes is not None
    assert "http.route" not in span.attributes


async def test_sampler_follows_the_callers_decision(exporter: InMemorySpanExporter) -> None:
    handle = setup_tracing(_telemetry(sample_ratio=0.0), span_processor=SimpleSpanProcessor(exporter))
    assert handle is not None
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    try:
        async with AsyncTestClient(_app(Metrics(), handle)) as client:
            await client.post("/graphql", json={"query": "{ hello }"})
            await client.post(
                "/graphql", json={"query": "{ hello }"}, headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}
            )
    finally:
        handle.shutdown()

    [span] = exporter.get_finished_spans()
    assert format(span.context.trace_id, "032x") == trace_id


def test_tracing_off_gives_no_handle_and_no_plugins() -> None:
    assert setup_tracing(_telemetry(tracing=False)) is None
    assert tracing_plugins(None) == []
    assert strawberry_extensions(_telemetry(resolver_spans=True), None) == []


def test_tracing_without_an_exporter_sets_nothing_up() -> None:
    # Spans nobody receives would still be created and sampled for every request and database command.
    assert setup_tracing(_telemetry(tracing=True, otlp_endpoint=None, sample_ratio=1.0)) is None
    assert not RedisInstrumentor().is_instrumented_by_opentelemetry
    assert not PymongoInstrumentor().is_instrumented_by_opentelemetry


def test_an_otlp_endpoint_turns_tracing_on() -> None:
    handle = setup_tracing(_telemetry(tracing=True, otlp_endpoint="http://127.0.0.1:1", sample_ratio=1.0))
    assert handle is not None
    try:
        assert RedisInstrumentor().is_instrumented_by_opentelemetry
        assert len(tracing_plugins(handle)) == 2
    finally:
        handle.shutdown()
    assert not RedisInstrumentor().is_instrumented_by_opentelemetry


async def test_resolver_spans_only_when_configured(handle: TracingHandle, exporter: InMemorySpanExporter) -> None:
    assert strawberry_extensions(_telemetry(), handle) == []
    extensions = strawberry_extensions(_telemetry(resolver_spans=True), handle)
    assert [type(factory()) for factory in extensions] == [OpenTelemetryExtension]

    async with AsyncTestClient(_app(Metrics(), handle, extensions)) as client:
        await client.post("/graphql", json={"query": "query Hello { hello }"})

    [server] = _server_spans(exporter)
    operation = next(span for span in exporter.get_finished_spans() if span.name == "GraphQL Query: Hello")
    assert operation.parent is not None
    assert operation.parent.span_id == server.context.span_id


# Database client instrumentation


def _traced() -> tuple[TracingHandle, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    handle = setup_tracing(_telemetry(sample_ratio=1.0), span_processor=SimpleSpanProcessor(exporter))
    assert handle is not None
    return handle, exporter


def test_pymongo_spans_go_to_the_newest_live_handle() -> None:
    older, older_spans = _traced()
    newer, newer_spans = _traced()
    older.shutdown()  # must not take the instrumentation away from the newer handle
    assert PymongoInstrumentor().is_instrumented_by_opentelemetry
    with newer.tracer("tests").start_as_current_span("job", kind=SpanKind.SERVER):
        _mongo_find(1)
    newer.shutdown()
    assert not PymongoInstrumentor().is_instrumented_by_opentelemetry

    later, later_spans = _traced()
    with later.tracer("tests").start_as_current_span("job", kind=SpanKind.SERVER):
        _mongo_find(2)
    later.shutdown()

    assert older_spans.get_finished_spans() == ()
    for exporter in (newer_spans, later_spans):
        client = next(span for span in exporter.get_finished_spans() if span.kind is SpanKind.CLIENT)
        assert client.name == "recograph.find"
        assert client.attributes is not None
        assert client.attributes["db.system"] == "mongodb"


def test_redis_calls_are_traced_only_inside_a_trace(handle: TracingHandle, exporter: InMemorySpanExporter) -> None:
    client = redis.Redis(host="127.0.0.1", port=_closed_port(), socket_connect_timeout=0.5)
    assert RedisInstrumentor().is_instrumented_by_opentelemetry
    with pytest.raises(redis.ConnectionError):
        client.get("orphan")
    assert exporter.get_finished_spans() == ()

    with handle.tracer("tests").start_as_current_span("request", kind=SpanKind.SERVER) as parent:
        with pytest.raises(redis.ConnectionError):
            client.get("nested")
    [span] = [span for span in exporter.get_finished_spans() if span.kind is SpanKind.CLIENT]
    assert span.name == "GET"
    assert span.parent is not None
    assert span.parent.span_id == parent.get_span_context().span_id


# Logging


async def test_log_lines_in_a_request_carry_tenant_request_and_trace(
    restore_logging: None, handle: TracingHandle, exporter: InMemorySpanExporter, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(ServerSettings(log_json=True, log_level="INFO"))
    headers = {"x-tenant-id": "tenant-7", "x-request-id": "req-42"}
    async with AsyncTestClient(_app(Metrics(), handle)) as client:
        answer = await client.post("/graphql", json={"query": "query Hello { hello }"}, headers=headers)
        await client.post("/graphql", json={"query": "query Boom { boom }"}, headers={"x-tenant-id": "tenant-8"})

    lines = _json_lines(capsys.readouterr().err)
    [resolver] = [line for line in lines if line["event"] == "resolving hello"]
    assert resolver["tenant_id"] == "tenant-7"
    assert resolver["request_id"] == "req-42"
    assert resolver["level"] == "info"
    assert resolver["logger"] == "tests.resolver"
    assert datetime.datetime.fromisoformat(resolver["timestamp"]).tzinfo is not None
    assert resolver["trace_id"] == format(_server_spans(exporter)[0].context.trace_id, "032x")
    assert answer.headers["x-request-id"] == "req-42"
    # Strawberry reports resolver errors through stdlib logging, which must render the same way.
    [error] = [line for line in lines if line["logger"] == "strawberry.execution"]
    assert error["tenant_id"] == "tenant-8"
    assert len(error["request_id"]) == 32
    assert "ValueError: boom" in error["exception"]


@pytest.mark.parametrize("sent", ["has spaces", "x" * 129])
async def test_unusable_request_ids_are_replaced(sent: str) -> None:
    async with AsyncTestClient(_app(Metrics(), None)) as client:
        answer = await client.post("/graphql", json={"query": "{ hello }"}, headers={"x-request-id": sent})

    assert answer.headers["x-request-id"] != sent
    assert len(answer.headers["x-request-id"]) == 32


def test_configure_logging_is_idempotent_and_sets_the_level(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # What uvicorn's own logging config does: a private handler and no propagation.
    logging.getLogger("uvicorn.error").addHandler(logging.StreamHandler())
    logging.getLogger("uvicorn.error").propagate = False
    configure_logging(ServerSettings(log_json=True, log_level="INFO"))
    configure_logging(ServerSettings(log_json=True, log_level="WARNING"))
    structlog.get_logger("tests").info("too chatty")
    structlog.get_logger("tests").warning("disk low", free_gb=3)
    logging.getLogger("uvicorn.error").warning("worker %s restarted", 2)

    lines = _json_lines(capsys.readouterr().err)
    assert [line["event"] for line in lines] == ["disk low", "worker 2 restarted"]
    assert lines[0]["free_gb"] == 3
    assert lines[1]["logger"] == "uvicorn.error"


async def test_uncaught_exceptions_are_logged_once_and_client_errors_not(
    restore_logging: None, capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging(ServerSettings(log_json=True, log_level="INFO"))
    async with AsyncTestClient(_app(Metrics(), None)) as client:
        failed = await client.get("/explode")
        missing = await client.get("/missing")

    assert (failed.status_code, missing.status_code) == (500, 404)
    [line] = [line for line in _json_lines(capsys.readouterr().err) if line["logger"] == "litestar"]
    assert line["event"] == "uncaught exception"
    assert line["path"] == "/explode"
    assert len(line["request_id"]) == 32
    assert "RuntimeError: kaboom" in line["exception"]


def test_console_rendering_when_json_is_off(restore_logging: None, capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging(ServerSettings(log_json=False, log_level="INFO"))
    structlog.contextvars.bind_contextvars(tenant_id="tenant-7")
    structlog.get_logger("tests").info("hello console")

    [line] = capsys.readouterr().err.splitlines()
    assert not line.startswith("{")
    assert "hello console" in line
    assert "tenant-7" in line


def test_unknown_log_level_is_refused(restore_logging: None) -> None:
    with pytest.raises(ValueError, match="VERBOSE"):
        configure_logging(ServerSettings(log_level="VERBOSE"))
