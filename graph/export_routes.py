"""The export routes, `GET /export/interactions|items|profiles` (the formats and the CLI's writer: graph.export)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection
from datetime import datetime

import msgspec
import structlog
from litestar import Request, Response, get
from litestar.response import Stream
from pymongo.errors import PyMongoError

from domain.errors import BadInput, DomainError, Unavailable
from domain.export import Export
from graph.context import http_context
from graph.export import NDJSON, STATUS, Kind, ndjson, parse_time
from graph.ratelimit import within_limits
from resolvers.context import ADMINS, RequestContext
from resolvers.export import export_interactions, export_items, export_profiles

log = structlog.get_logger()


class _Query:
    """An export's query string: only the parameters it names, each at most once, none blank."""

    def __init__(self, request: Request, allowed: Collection[str]) -> None:
        params = request.query_params
        for name in params:
            if name not in allowed:
                expected = ", ".join(allowed) if allowed else "none"
                raise BadInput(f"unknown parameter {name} (expected: {expected})", field=name)
            if len(params.getall(name)) > 1:
                raise BadInput(f"{name} given more than once", field=name)
        self._params = params

    def text(self, name: str) -> str | None:
        value = self._params.get(name)
        if value is not None and not value.strip():
            raise BadInput(f"{name} must not be blank when given", field=name)
        return value

    def time(self, name: str) -> datetime | None:
        value = self.text(name)
        return None if value is None else parse_time(value, field=name)


Opener = Callable[[RequestContext, _Query], Awaitable[Export]]


def _error(exc: DomainError) -> Response:
    body = msgspec.json.encode({"errors": [{"message": exc.message, "extensions": exc.extensions}]})
    headers = {"WWW-Authenticate": "Bearer"} if exc.code == "UNAUTHENTICATED" else None
    return Response(body, status_code=STATUS.get(exc.code, 500), media_type="application/json", headers=headers)


async def _export(request: Request, kind: Kind, allowed: Collection[str], open_export: Opener) -> Response:
    """Check the key, its limits and the query; then stream the export."""
    ctx = await http_context(request)

    async def execute() -> Response:
        try:
            ctx.require(ADMINS)  # before the parameters: a caller without access learns nothing of them
            export = await open_export(ctx, _Query(request, allowed))
        except DomainError as exc:
            return _error(exc)
        except PyMongoError as exc:
            return _error(Unavailable(f"the store is unavailable ({exc})"))
        log.info("export.started", kind=kind.value, tenant_id=ctx.tenant_id)
        return Stream(ndjson(export, kind), media_type=NDJSON,
                      headers={"Content-Disposition": f'attachment; filename="{kind.value}.ndjson"',
                               "Cache-Control": "no-store"})

    return await within_limits(ctx, execute)


@get("/export/interactions", include_in_schema=False)
async def interactions_route(request: Request) -> Response:
    """Stream the key's tenant's interactions: `scenarioId` (default: every scenario), `from` and `to` (ISO-8601,
    from inclusive, to exclusive); newest first, scenario by scenario."""

    async def opened(ctx: RequestContext, q: _Query) -> Export:
        return await export_interactions(ctx, scenario_id=q.text("scenarioId"), start=q.time("from"), end=q.time("to"))

    return await _export(request, Kind.interactions, ("scenarioId", "from", "to"), opened)


@get("/export/items", include_in_schema=False)
async def items_route(request: Request) -> Response:
    """Stream the key's tenant's items by id: `scenarioId` (default: the whole catalogue)."""

    async def opened(ctx: RequestContext, q: _Query) -> Export:
        return await export_items(ctx, scenario_id=q.text("scenarioId"))

    return await _export(request, Kind.items, ("scenarioId",), opened)


@get("/export/profiles", include_in_schema=False)
async def profiles_route(request: Request) -> Response:
    """Stream the key's tenant's user profiles by user id."""

    async def opened(ctx: RequestContext, q: _Query) -> Export:
        return await export_profiles(ctx)

    return await _export(request, Kind.profiles, (), opened)


EXPORT_ROUTES = [interactions_route, items_route, profiles_route]
