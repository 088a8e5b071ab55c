"""Rate limits at the edge: one token per HTTP GraphQL request once its key is known, `429 Too Many Requests` with
`Retry-After` and `RateLimit-*` headers when the key or its tenant is over its limit, and a cap on the operations one
key keeps open over websockets (each also takes a token when it starts)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import msgspec
from litestar import Response
from litestar.status_codes import HTTP_429_TOO_MANY_REQUESTS

from domain.errors import RateLimited
from domain.ratelimit import RateDecision, refusal
from resolvers.context import RequestContext


def rate_headers(decision: RateDecision) -> dict[str, str]:
    """Return the `RateLimit-*` headers (and `Retry-After` when refused) of a decision."""
    headers = {
        "RateLimit-Limit": str(decision.limit),
        "RateLimit-Remaining": str(decision.remaining),
        "RateLimit-Reset": str(decision.reset_s),
    }
    if not decision.allowed:
        headers["Retry-After"] = str(decision.retry_after_s)
    return headers


def _error(exc: RateLimited) -> dict[str, Any]:
    return {"message": exc.message, "extensions": exc.extensions}


def too_many_requests(decision: RateDecision) -> Response:
    """Return the 429 answer: a GraphQL error body with code RATE_LIMITED and `retryAfter`, and the headers."""
    body = msgspec.json.encode({"errors": [_error(refusal(decision))]})
    return Response(body, status_code=HTTP_429_TOO_MANY_REQUESTS, media_type="application/json",
                    headers=rate_headers(decision))


async def within_limits(context: RequestContext, execute: Callable[[], Awaitable[Response]]) -> Response:
    """Run execute() when the caller's key and tenant are within their limits, and add the `RateLimit-*` headers;
    answer 429 otherwise. A request without a valid key is not limited here: it is refused anyway."""
    if context.principal is None:
        return await execute()
    decision = await context.services.rate_limits.check(context.principal)
    if not decision.allowed:
        return too_many_requests(decision)
    response = await execute()
    if decision.limit:
        response.headers.update(rate_headers(decision))
    return response


def limit_websocket_operations(base: type) -> type:
    """Return a graphql-transport-ws handler class, over base, whose operations each take a token when they start
    and hold one of their key's places while they run; refused ones end with an `error` message (RATE_LIMITED)."""

    class RateLimitedTransportWSHandler(base):  # type: ignore[misc, valid-type]
        async def run_operation(self, operation: Any) -> None:
            """Run the operation within its key's limits, or refuse it."""
            context: RequestContext = self.context
            principal = context.principal
            if principal is None:  # not acknowledged without a key: Strawberry closes such a socket first
                await super().run_operation(operation)
                return
            limits = context.services.rate_limits
            async with AsyncExitStack() as held:
                try:
                    await limits.enforce(principal)
                    await held.enter_async_context(limits.subscription(principal))
                except RateLimited as exc:
                    error = {"id": operation.id, "type": "error", "payload": [_error(exc)]}
                    await operation.send_operation_message(error)
                    return
                await super().run_operation(operation)

    return RateLimitedTransportWSHandler
