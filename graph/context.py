"""Build the per-request GraphQL context: authenticate the key, bind the tenant, create the loaders."""

from __future__ import annotations

import uuid

import structlog
from litestar import Request

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
    runtime: Runtime, *, authorization: str | None, request_id: str | None, user_header: str | None
) -> RequestContext:
    """Return a context for one operation; an unknown key gives a context without a principal."""
    principal = await runtime.services.tenancy.authenticate(bearer(authorization))
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
        end_user_id=_end_user(principal, user_header),
    )


def _end_user(principal: Principal | None, header: str | None) -> str | None:
    # Only a trusted gateway may speak for the signed-in end user.
    return header if principal is not None and principal.scope is Scope.GATEWAY and header else None


async def http_context(request: Request) -> RequestContext:
    """Litestar dependency: the GraphQL context of an HTTP request."""
    headers = request.headers
    return await build_context(
        request.app.state.runtime,
        authorization=headers.get("authorization"),
        # The request middleware bound (and echoes) the request id; use the same one.
        request_id=structlog.contextvars.get_contextvars().get("request_id"),
        user_header=headers.get("x-user-id"),
    )
