"""Exports as NDJSON: `GET /export/interactions|items|profiles` (admin key; the routes are in
graph.export_routes, so that the CLI does without the web framework) and `recograph export`.

One JSON object a line, with the field names and ISO-8601 times of the GraphQL API: an interaction line is an
`InteractionInput` (it can be sent back through `recordInteractions`), an item line an `Item`, a profile line a
`UserProfile`; nothing internal (tenant, storage ids) is written. The batches are encoded as they are read, so a
server streams any size in flat memory: one batch is held at a time, and a slow reader holds the reads back.

The request is checked before the first byte: the key (401 without a valid one, 403 without the admin scope), the
parameters (400 naming the one at fault, unknown ones too: a misspelt `scenarioID` must not export everything),
the scenario (404 when it is not the key's tenant's). Errors have the shape of GraphQL errors over HTTP, as a 429
has. Each export takes one token of the key's rate limit, as a GraphQL request does.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import structlog
from pymongo.errors import PyMongoError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from domain.errors import BadInput, NotFound
from domain.export import Export, ExportService
from domain.profiles import ProfileView
from graph.runtime import Runtime
from models.mongo import sorts_every_match

NDJSON = "application/x-ndjson"
STATUS = {"UNAUTHENTICATED": 401, "FORBIDDEN": 403, "BAD_USER_INPUT": 400, "NOT_FOUND": 404,
          "SERVICE_UNAVAILABLE": 503}

log = structlog.get_logger()
_encoder = msgspec.json.Encoder(enc_hook=str)  # a stored value JSON has no type for is written as its text


class Kind(StrEnum):
    interactions = "interactions"
    items = "items"
    profiles = "profiles"


def _iso(value: datetime | None) -> str | None:
    return None if value is None else value.isoformat()


def interaction_line(doc: dict[str, Any]) -> dict[str, Any]:
    """Return an interaction as an `InteractionInput`."""
    return {
        "scenarioId": doc["scenario_id"], "userId": doc["user_id"], "itemId": doc["item_id"], "type": doc["type"],
        "value": doc.get("value"), "timestamp": _iso(doc["ts"]), "context": doc.get("context"),
        "requestId": doc.get("request_id"), "eventId": doc["event_id"],
    }


def item_line(doc: dict[str, Any]) -> dict[str, Any]:
    """Return an item as the `Item` type has it."""
    return {
        "id": doc["item_id"], "title": doc.get("title"), "categories": doc.get("categories", []),
        "tags": doc.get("tags", []), "attributes": doc.get("attributes", {}),
        "publishedAt": _iso(doc.get("published_at")), "status": doc.get("status", "ACTIVE"),
        "scenarioIds": doc.get("scenarios", []), "createdAt": _iso(doc.get("created_at")),
        "updatedAt": _iso(doc.get("updated_at")),
    }


def profile_line(p: ProfileView) -> dict[str, Any]:
    """Return a profile as the `UserProfile` type has it (recent items by id)."""
    return {
        "userId": p.user_id, "interactionCount": p.interaction_count,
        "countsByType": [{"type": t, "count": n} for t, n in sorted(p.counts_by_type.items())],
        "topCategories": [{"label": k, "score": v} for k, v in p.top_categories],
        "topTags": [{"label": k, "score": v} for k, v in p.top_tags],
        "recent": [{"itemId": r["i"], "scenarioId": r["s"], "type": r["y"], "timestamp": _iso(r["t"])}
                   for r in p.recent],
        "firstSeen": _iso(p.first_seen), "lastSeen": _iso(p.last_seen),
        "activeHours": [{"hour": h, "count": n} for h, n in sorted(p.active_hours.items())],
    }


LINES: dict[Kind, Callable[[Any], dict[str, Any]]] = {
    Kind.interactions: interaction_line, Kind.items: item_line, Kind.profiles: profile_line,
}


async def ndjson(export: Export, kind: Kind, on_batch: Callable[[int], None] | None = None) -> AsyncIterator[bytes]:
    """Yield the export's batches as NDJSON, one chunk a batch; `on_batch(lines)` after each."""
    line, written = LINES[kind], 0
    async with aclosing(export.batches) as batches:
        try:
            async for batch in batches:
                yield _encoder.encode_lines([line(doc) for doc in batch])
                written += len(batch)
                if on_batch is not None:
                    on_batch(len(batch))
        except PyMongoError as exc:  # the response has begun: the reader sees it cut short, the log says why
            log.error("export.failed", kind=kind.value, lines=written, error=str(exc))
            raise


def parse_time(value: str, *, field: str) -> datetime:
    """Return an ISO-8601 time as UTC (UTC when it has no offset), or raise BadInput naming the field."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise BadInput(f"not an ISO-8601 time: {value!r}", field=field) from None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


# Command line


async def _open_for_cli(
    runtime: Runtime, kind: Kind, *, tenant_id: str, scenario_id: str | None, start: datetime | None,
    end: datetime | None,
) -> Export:
    services = runtime.services
    if await services.tenancy.get_tenant(tenant_id=tenant_id) is None:
        raise NotFound(f"no tenant {tenant_id}", field="--tenant")
    # The progress bar's total is counted by mongod from an index; the embedded server would hold every match.
    exports = ExportService(services.scenarios, services.profiles, counts=not await sorts_every_match(runtime.mongo))
    if kind is Kind.interactions:
        return await exports.interactions(tenant_id=tenant_id, scenario_id=scenario_id, start=start, end=end,
                                          field="--scenario", end_field="--to")
    if start is not None or end is not None:
        raise BadInput(f"--from and --to apply to interactions only, not to {kind.value}", field="--from")
    if kind is Kind.items:
        return await exports.items(tenant_id=tenant_id, scenario_id=scenario_id, field="--scenario")
    if scenario_id is not None:
        raise BadInput("profiles belong to the tenant, not to a scenario", field="--scenario")
    return await exports.profiles(tenant_id=tenant_id)


async def write_export(
    runtime: Runtime, kind: Kind, *, tenant_id: str, scenario_id: str | None, start: datetime | None,
    end: datetime | None, output: Path, console: Console,
) -> int:
    """Write an export to `output` ("-": stdout) with a progress bar on `console`; return the lines written. A file
    is written beside its name and renamed when complete, so a failed export leaves no partial file behind."""
    export = await _open_for_cli(runtime, kind, tenant_id=tenant_id, scenario_id=scenario_id, start=start, end=end)
    total = await export.count()
    columns = (TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    partial = output.with_name(f"{output.name}.part")
    written = 0
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task(kind.value, total=total)

        def advance(lines: int) -> None:
            nonlocal written
            written += lines
            bar.update(task, completed=written, total=max(total, written) if total is not None else None)

        if str(output) == "-":
            await _write(sys.stdout.buffer, ndjson(export, kind, advance))
            return written
        try:
            with partial.open("wb") as sink:
                await _write(sink, ndjson(export, kind, advance))
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
    partial.replace(output)
    return written


async def _write(sink: BinaryIO, chunks: AsyncIterator[bytes]) -> None:
    async with aclosing(chunks) as stream:
        async for chunk in stream:
            sink.write(chunk)
    sink.flush()
