"""The one place that wires recograph: `create_app(settings)` and its lifespan."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import msgspec
import structlog
from litestar import Litestar, Request, Response, post
from threadpoolctl import threadpool_limits
from litestar.config.cors import CORSConfig
from litestar.datastructures import State
from litestar.di import Provide
from strawberry.litestar import make_graphql_controller
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from graph.audit import AuditExtension
from graph.context import WebSocketAuth, http_context, ws_context
from graph.dashboard import dashboard_routes, graphiql_page
from graph.cost import cost_extension, cost_limits
from graph.export_routes import EXPORT_ROUTES
from graph.breakers import breaker_gauge, exported_breakers
from graph.health import live, ready
from graph.ratelimit import limit_websocket_operations, within_limits
from graph.metrics import LiveMetricsExporter, Metrics
from graph.memory_metrics import RedisMemoryExporter
from graph.metrics_access import metrics_port, metrics_route
from graph.quality_metrics import ServingExporter
from graph.observability import (
    configure_logging, litestar_logging_config, log_context_extension, request_context_middleware, setup_tracing,
    strawberry_extensions, tracing_plugins,
)
from graph.runtime import Runtime, open_runtime
from graph.schema import build_schema, guard_extensions
from models.settings import Settings
from resolvers.context import RequestContext
from workers.consumer import consumer_child, consumer_options, consumer_running
from workers.metrics import JobMetrics
from workers.settings import in_process_worker

log = structlog.get_logger()


async def _response() -> Response:
    # Strawberry's default runs this trivial getter in a thread per request; async saves the hop.
    return Response({})


def _graphql_controller(settings: Settings, metrics: Metrics, tracing) -> type:
    gql = settings.graphql
    extensions = [
        *guard_extensions(max_depth=gql.max_depth, max_tokens=gql.max_tokens, max_aliases=gql.max_aliases),
        cost_extension(cost_limits(gql)),  # after validation, before any resolver
        metrics.extension(),
        AuditExtension,  # admin mutations to the audit log
        log_context_extension(lambda ctx: {"tenant_id": ctx.principal.tenant_id if ctx.principal else None}),
        *strawberry_extensions(settings.telemetry, tracing),
    ]
    base = make_graphql_controller(
        build_schema(extensions),
        path="/graphql",
        graphql_ide="graphiql" if settings.server.graphiql else None,
        allow_queries_via_get=False,
        subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),  # the one protocol whose key check we wire
    )

    class GraphQLController(WebSocketAuth, base):  # type: ignore[misc, valid-type]
        # Our context is a plain frozen object, not Strawberry's BaseContext: replace the merged-context providers.
        dependencies = {
            **base.dependencies, "context": Provide(http_context), "context_ws": Provide(ws_context),
            "response": Provide(_response),
        }
        # each websocket operation takes a token and holds one of its key's places while it runs
        graphql_transport_ws_handler_class = limit_websocket_operations(
            WebSocketAuth.graphql_transport_ws_handler_class)

        async def render_graphql_ide(self, request: Request) -> Response:
            return graphiql_page(request)  # GraphiQL from our own assets (Strawberry's page loads them from a CDN)

        def encode_json(self, data: object) -> bytes:
            # msgspec (Litestar's own encoder) writes a 20-item answer several times faster than json.dumps; a
            # WebSocket text frame decodes the bytes.
            return msgspec.json.encode(data)

        @post(status_code=200)
        async def handle_http_post(self, request: Request, context: RequestContext) -> Response:
            # Strawberry's handler also takes `root_value` and `response`; Litestar resolves several dependencies of
            # one level in an anyio task group (a child task each, per request). One dependency is awaited inline.
            self.temporal_response = Response({})
            return await within_limits(context, lambda: self.execute_request(request=request, context=context,
                                                                             root_value=None))

    return GraphQLController


@asynccontextmanager
async def _watch_jobs(runtime: Runtime, job_metrics: JobMetrics) -> AsyncIterator[None]:
    """Record the attempts of jobs run in this process (the in-process worker) into the app's metrics."""
    stop = runtime.services.jobs.watch(job_metrics.observe)
    try:
        yield
    finally:
        stop()


@asynccontextmanager
async def _background(runtime: Runtime) -> AsyncIterator[None]:
    """Run beside the requests: the model registry's loading and refreshing, and the job worker when configured.

    In embedded mode the worker must run here: the vector shards it writes open in this process only.
    """
    if runtime.registry is not None:
        runtime.registry.start()
    if runtime.heap is not None:
        runtime.heap.request()  # start-up is done: settle once even before any model loads
    listening = None
    if runtime.registry is not None and runtime.services.invalidations is not None:  # a serving process
        listening = asyncio.create_task(runtime.services.invalidations.listen(), name="recograph-invalidations")
    returning = runtime.services.returning if runtime.registry is not None else None
    if returning is not None:  # returning users' expired state is rebuilt beside the requests that noted them
        returning.start()
    worker = None
    if runtime.settings.server.run_worker:
        worker = in_process_worker(runtime.services, redis_url=runtime.servers.redis_url, settings=runtime.settings)
    task = asyncio.create_task(worker.async_run()) if worker is not None else None
    try:
        if runtime.settings.server.run_worker and runtime.settings.server.consumer_process:
            # the event consumer too (more processes may run their own), off this process's event loop
            async with consumer_child(runtime.settings, mongo_url=runtime.servers.mongo_url,
                                      redis_url=runtime.servers.redis_url, logs_dir=runtime.servers.logs_dir):
                yield
        elif runtime.settings.server.run_worker:
            async with consumer_running(runtime.services, **consumer_options(runtime.settings)):
                yield
        else:
            yield
    finally:
        if returning is not None:
            await returning.stop()
        if listening is not None:
            listening.cancel()
            await asyncio.gather(listening, return_exceptions=True)
        if task is not None:
            task.cancel()  # stop polling first (close() alone misses a worker that has not started polling yet)
            await asyncio.gather(task, return_exceptions=True)
            await worker.close()  # cancels a running job: it goes back to QUEUED and runs again on the next start
        if runtime.heap is not None:
            runtime.heap.cancel()
        if runtime.registry is not None:
            await runtime.registry.stop()


@asynccontextmanager
async def _live_metrics(runtime: Runtime, metrics: Metrics) -> AsyncIterator[None]:
    """Export live per-scenario metrics to Prometheus while the app runs; stop the metrics feed on the way out."""
    live = runtime.services.live
    if live is None or not live.available:
        yield
        return
    task = asyncio.create_task(LiveMetricsExporter(metrics).run(live))
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await live.close()


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Litestar:
    """Return the ASGI app; it opens (or adopts) the runtime on startup and closes what it opened."""
    settings = settings or Settings()
    configure_logging(settings.server)
    tracing = setup_tracing(settings.telemetry)
    metrics = Metrics()
    job_metrics = JobMetrics(metrics.registry)  # job attempt durations and failures, recorded by the in-process worker
    breaker_states = breaker_gauge(metrics)
    RedisMemoryExporter(metrics)  # Redis's memory and each tenant's estimated share, read on scrape
    serving = ServingExporter(metrics)  # answer latency, page quality, model age, experiments' SRM

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        # Requests do small matrix work: BLAS threads only contend with the event loop (training runs in a child).
        threadpool_limits(limits=1)
        owned = runtime is None
        app.state.runtime = await open_runtime(settings) if owned else runtime
        log.info("recograph.started", embedded=settings.embedded, mongo=app.state.runtime.servers.mongo_url)
        try:
            async with _watch_jobs(app.state.runtime, job_metrics), _background(app.state.runtime), \
                    _live_metrics(app.state.runtime, metrics), serving.running(app.state.runtime), \
                    exported_breakers(breaker_states, app.state.runtime.breakers()):
                yield
        finally:
            if owned:
                await app.state.runtime.close()
            if tracing is not None:
                tracing.shutdown()

    cors = CORSConfig(allow_origins=settings.server.cors_origins) if settings.server.cors_origins else None
    return Litestar(
        route_handlers=[_graphql_controller(settings, metrics, tracing), live, ready,
                        metrics_route(metrics, settings.server.metrics_token), *EXPORT_ROUTES, *dashboard_routes()],
        lifespan=[lifespan, metrics_port(metrics, settings.server.metrics_port, host=settings.server.metrics_host,
                                         token=settings.server.metrics_token)],
        cors_config=cors,
        middleware=[request_context_middleware, metrics.middleware],
        plugins=tracing_plugins(tracing),
        logging_config=litestar_logging_config(),
        state=State({"settings": settings, "metrics": metrics}),
    )
