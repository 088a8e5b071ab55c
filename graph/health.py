"""Liveness and readiness: MongoDB down means not ready; Redis or vectors down, an open circuit breaker, an event
consumer that does not keep up, or Redis above 90% of its `maxmemory` means degraded but serving."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import structlog
from litestar import Request, Response, get
from redis.exceptions import RedisError

from domain.realtime.readiness import consumer_readiness
from models.breaker import BreakerState
from models.redis_memory import memory_use

log = structlog.get_logger()

CONSUMER_CHECK_S = 1.0  # a probe answers fast: a slower read of the consumer's state is reported as unknown


@get("/health/live", sync_to_thread=False, include_in_schema=False)
def live() -> dict[str, str | int]:
    """Answer while the process runs, with its pid (which of `serve`'s processes answered)."""
    return {"status": "ok", "pid": os.getpid()}


@get("/health/ready", include_in_schema=False)
async def ready(request: Request) -> Response[dict]:
    """Report each component, breaker and the consumer; 503 when MongoDB, the record of truth, is down."""
    runtime = request.app.state.runtime
    components = await runtime.health()
    down = sorted(name for name, up in components.items() if not up)
    breakers = {name: breaker.state for name, breaker in runtime.breakers().items()}
    consumer = await _consumer(runtime) if components.get("redis") else {"status": "unknown"}
    memory = await _memory(runtime) if components.get("redis") else {"status": "unknown"}
    if not components["mongodb"]:
        status, code = "unavailable", 503
    else:
        troubled = (down or any(s is not BreakerState.CLOSED for s in breakers.values())
                    or consumer["status"] != "ok" or memory["status"] == "high")
        status, code = ("degraded" if troubled else "ok"), 200
    body = {
        "status": status, "components": {k: "up" if v else "down" for k, v in components.items()}, "down": down,
        "breakers": {name: state.label for name, state in breakers.items()}, "consumer": consumer,
        "memory": memory,
    }
    return Response(body, status_code=code)


async def _consumer(runtime: Any) -> dict[str, Any]:
    stall_s = runtime.settings.server.ready_consumer_stall_s
    try:
        found = await asyncio.wait_for(consumer_readiness(runtime.cache.client, stall_s=stall_s), CONSUMER_CHECK_S)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("health.consumer_unknown", error=repr(exc))
        return {"status": "unknown"}
    return found.as_dict()


async def _memory(runtime: Any) -> dict[str, Any]:
    """Return Redis's memory use against its cap (`high` above 90% of it), or `unknown` when it cannot be read."""
    try:
        found = await asyncio.wait_for(memory_use(runtime.cache.client), CONSUMER_CHECK_S)
    except (RedisError, OSError, TimeoutError) as exc:
        log.warning("health.memory_unknown", error=repr(exc))
        return {"status": "unknown"}
    return found.as_dict()
