"""Who may read `/metrics`: its series name tenants and scenarios, which are no one else's business.

- `RECOGRAPH_METRICS_TOKEN` set: the API port's `/metrics` requires `Authorization: Bearer <token>` (401 without).
- Unset: the API port's `/metrics` answers anyone, without the series labelled `tenant` or `scenario`.
- `RECOGRAPH_METRICS_PORT` set: every serving process also answers `GET /metrics` with every series on that
  loopback port (SO_REUSEPORT: whichever process takes the connection renders the pooled values).
  `RECOGRAPH_METRICS_HOST` binds it to another address (a pod's, for a scraper a network policy lets in): there a
  scrape must send the token when one is set, as on the API port.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import structlog
from litestar import Request, Response, get

from graph.context import bearer
from graph.metrics import CONTENT_TYPE, Metrics

if TYPE_CHECKING:
    from litestar import Litestar
    from litestar.handlers import HTTPRouteHandler

TENANT_LABELS = frozenset({"tenant", "scenario"})
REQUEST_TIMEOUT_S = 5.0
MAX_REQUEST_BYTES = 8192

log = structlog.get_logger()


def metrics_route(metrics: Metrics, token: str | None, path: str = "/metrics") -> HTTPRouteHandler:
    """Return the API port's GET `/metrics`: behind `token` when one is set, else without tenant-labelled series."""

    @get(path, include_in_schema=False)
    async def prometheus_metrics(request: Request) -> Response[bytes]:
        if token is None:
            return Response(await metrics.scrape(request.app.state, hide_labels=TENANT_LABELS), media_type=CONTENT_TYPE)
        offered = bearer(request.headers.get("authorization")) or ""
        if not hmac.compare_digest(offered.encode(), token.encode()):
            return Response(b"a metrics token is required: send `Authorization: Bearer <RECOGRAPH_METRICS_TOKEN>`\n",
                            status_code=401, media_type="text/plain", headers={"WWW-Authenticate": "Bearer"})
        return Response(await metrics.scrape(request.app.state), media_type=CONTENT_TYPE)

    return prometheus_metrics


def metrics_port(metrics: Metrics, port: int | None, *, host: str = "127.0.0.1", token: str | None = None):
    """Return a Litestar lifespan that serves every series on `host:port` while the app runs (no port: no-op);
    beyond loopback a scrape must send `token` when one is set."""
    required = token if token is not None and not _loopback(host) else None

    @asynccontextmanager
    async def serving(app: Litestar) -> AsyncIterator[None]:
        if port is None:
            yield
            return
        server = await asyncio.start_server(
            lambda reader, writer: _answer(reader, writer, metrics, app.state, required), host, port, reuse_port=True
        )
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()

    return serving


def _loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def _authorized(head: bytes, token: str) -> bool:
    """Return whether a request head carries `Authorization: Bearer <token>`."""
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"authorization":
            offered = bearer(value.strip().decode("latin-1")) or ""
            return hmac.compare_digest(offered.encode(), token.encode())
    return False


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, metrics: Metrics, state: Any,
                  token: str | None = None) -> None:
    """Answer one HTTP/1.x request: GET /metrics with every series (401 without `token` when one is required),
    anything else 404; then close."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REQUEST_TIMEOUT_S)
        method, target, *_ = head[:MAX_REQUEST_BYTES].split(b"\r\n", 1)[0].split(b" ") + [b"", b""]
        if method == b"GET" and target.split(b"?", 1)[0] == b"/metrics" and token and not _authorized(head, token):
            status, kind, body = b"401 Unauthorized", b"text/plain", b"a metrics token is required\n"
        elif method == b"GET" and target.split(b"?", 1)[0] == b"/metrics":
            status, kind, body = b"200 OK", CONTENT_TYPE.encode() + b"; charset=utf-8", await metrics.scrape(state)
        else:
            status, kind, body = b"404 Not Found", b"text/plain", b"not found\n"
        writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Type: " + kind + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
        await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass  # a client that sends no complete request in time, or goes away, gets nothing
    except Exception as exc:  # noqa: BLE001 - one failed scrape must not end the listener
        log.warning("metrics_port.failed", error=repr(exc))
    finally:
        writer.close()
