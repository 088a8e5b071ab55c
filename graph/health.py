"""Liveness and readiness: MongoDB down means not ready; Redis or vectors down means degraded but serving."""

from __future__ import annotations

import os

from litestar import Request, Response, get


@get("/health/live", sync_to_thread=False, include_in_schema=False)
def live() -> dict[str, str | int]:
    """Answer while the process runs, with its pid (which of `serve`'s processes answered)."""
    return {"status": "ok", "pid": os.getpid()}


@get("/health/ready", include_in_schema=False)
async def ready(request: Request) -> Response[dict]:
    """Report each component; 503 when MongoDB, the record of truth, is down."""
    components = await request.app.state.runtime.health()
    down = sorted(name for name, up in components.items() if not up)
    if not components["mongodb"]:
        status, code = "unavailable", 503
    else:
        status, code = ("degraded" if down else "ok"), 200
    body = {"status": status, "components": {k: "up" if v else "down" for k, v in components.items()}, "down": down}
    return Response(body, status_code=code)
