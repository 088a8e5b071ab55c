"""Build the per-request GraphQL context: authenticate the key, bind the tenant, create the loaders.

A websocket (graphql-transport-ws) gets one context for the connection: built from the upgrade request's headers,
then rebuilt from the `connection_init` payload (`{"Authorization": "Bearer KEY"}`, which wins over the header;
`X-User-Token` and `X-User-Id` may come beside it). A connection without a valid key either way is closed with
4403 before any operation runs, and one whose key is revoked or expires later is closed with 4403 too.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import structlog
from litestar import Request, WebSocket
from litestar.connection import ASGIConnection
from strawberry.exceptions import ConnectionRejectionError
from strawberry.subscriptions.protocols.graphql_transport_ws.handlers import BaseGraphQLTransportWSHandler
from strawberry.subscriptions.protocols.graphql_transport_ws.types import ConnectionInitMessage
from strawberry.types.unset import UNSET, UnsetType

from domain.errors import Forbidden
from domain.services import Services
from domain.tenancy import Principal, Scope
from graph.runtime import Runtime
from resolvers.context import Limits, RequestContext
from resolvers.loaders import make_loaders


def bearer(value: str | None) -> str | None:
    """Return the secret of an `Authorization: Bearer ...` header value."""
    if not value:
        return None
    scheme, _, secret = value.partition(" ")
    return secret.strip() or None if scheme.lower() == "bearer" else None


async def build_context(
    runtime: Runtime, *, authorization: str | None, request_id: str | None, user_header: str | None,
    user_token: str | None = None,
) -> RequestContext:
    """Return a context for one operation; an unknown key gives a context without a principal."""
    principal = await runtime.services.tenancy.authenticate(bearer(authorization))
    end_user_id, user_problem = await _acting_user(runtime.services, principal, user_header, user_token)
    request_id = request_id or uuid.uuid4().hex
    tenant_id = principal.tenant_id if principal else None
    gql = runtime.settings.graphql
    return RequestContext(
        services=runtime.services,
        principal=principal,
        loaders=make_loaders(runtime.services, tenant_id),
        log=structlog.get_logger().bind(tenant_id=tenant_id, request_id=request_id),
        request_id=request_id,
        limits=Limits(max_first=gql.max_first, max_batch=gql.max_batch),
        end_user_id=end_user_id,
        user_problem=user_problem,
    )


async def _acting_user(
    services: Services, principal: Principal | None, user_header: str | None, user_token: str | None
) -> tuple[str | None, str | None]:
    """Return (the user this request acts for, why a required user token was refused); verified once per request."""
    if principal is None:
        return None, None
    if principal.require_user_token:
        try:
            return await services.tenancy.verify_user_token(user_token, tenant_id=principal.tenant_id), None
        except Forbidden as exc:
            return None, exc.message
    # Only a trusted gateway may speak for the signed-in end user.
    return (user_header or None) if principal.scope is Scope.GATEWAY else None, None


async def _from_headers(connection: ASGIConnection) -> RequestContext:
    """Return the context of an HTTP request or websocket upgrade, from its headers."""
    headers = connection.headers
    return await build_context(
        connection.app.state.runtime,
        authorization=headers.get("authorization"),
        # The request middleware bound (and echoes) the request id; use the same one.
        request_id=structlog.contextvars.get_contextvars().get("request_id"),
        user_header=headers.get("x-user-id"),
        user_token=headers.get("x-user-token"),
    )


async def http_context(request: Request) -> RequestContext:
    """Litestar dependency: the GraphQL context of an HTTP request."""
    return await _from_headers(request)


async def ws_context(socket: WebSocket) -> RequestContext:
    """Litestar dependency: a websocket's context until connection_init, from its upgrade request's headers."""
    return await _from_headers(socket)


def _param(params: Mapping[str, Any], name: str) -> str | None:
    """Return a connection parameter by case-insensitive name, when it is a string."""
    for key, value in params.items():
        if isinstance(key, str) and key.lower() == name and isinstance(value, str):
            return value
    return None


async def reauthenticate(ctx: RequestContext, params: Mapping[str, Any]) -> RequestContext:
    """Return the context for a connection_init payload: its Authorization (if sent) replaces the header's key."""
    authorization = _param(params, "authorization")
    if authorization is None:
        return ctx
    principal = await ctx.services.tenancy.authenticate(bearer(authorization))
    tenant_id = principal.tenant_id if principal else None
    end_user_id, user_problem = await _acting_user(
        ctx.services, principal, _param(params, "x-user-id"), _param(params, "x-user-token")
    )
    return dataclasses.replace(
        ctx,
        principal=principal,
        loaders=make_loaders(ctx.services, tenant_id),
        log=structlog.get_logger().bind(tenant_id=tenant_id, request_id=ctx.request_id),
        end_user_id=end_user_id,
        user_problem=user_problem,
    )


class KeyCheckingTransportWSHandler(BaseGraphQLTransportWSHandler):
    """graphql-transport-ws handler that authenticates the connection_init payload before it is acknowledged, and
    closes the connection (4403) when its key is revoked or expires."""

    _unwatch: Callable[[], None] | None = None
    _closing: asyncio.Task | None = None

    async def handle_connection_init(self, message: ConnectionInitMessage) -> None:
        """Swap in the payload's context, then let Strawberry ask `on_ws_connect` and acknowledge or close."""
        payload = message.get("payload")
        if isinstance(payload, Mapping) and not self.connection_init_received and not self.connection_timed_out:
            self.context = await reauthenticate(self.context, payload)
        await super().handle_connection_init(message)
        principal = self.context.principal
        if self.connection_acknowledged and principal is not None:
            # A revoked or expired key's connection closes (4403) with its subscriptions.
            self._unwatch = self.context.services.tenancy.watch.watch(principal.key_hash, self._key_invalid)

    def _key_invalid(self) -> None:
        self._closing = asyncio.create_task(self.websocket.close(code=4403, reason="API key revoked or expired"))

    async def shutdown(self) -> None:
        """Stop watching the key, then end the connection's operations."""
        if self._unwatch is not None:
            self._unwatch()
        await super().shutdown()


class WebSocketAuth:
    """Mix into the GraphQL controller (before Strawberry's class) to require a valid key on websockets."""

    graphql_transport_ws_handler_class = KeyCheckingTransportWSHandler

    async def on_ws_connect(self, context: RequestContext) -> UnsetType | dict[str, object] | None:
        """Refuse the connection (4403 Forbidden) unless a valid key came in the payload or the upgrade header."""
        if context.principal is None:
            raise ConnectionRejectionError({"message": "a valid API key is required"})
        return UNSET
