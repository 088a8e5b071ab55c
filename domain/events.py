"""Interactions: per-event validation, idempotent append-only storage, and the cheap real-time updates.

Each event is validated on its own against what the cache knows (items) and one query for the batch's scenarios;
valid events are stored with one unordered insert whose `_id` carries the event id, so a resent batch stores
nothing twice and reports those events as duplicates. MongoDB is the record of truth: once the insert returns, the
user's seen sets and cache version move (so the next answer already leaves the items out) and the events are
appended to the tenant's stream, from which the consumer (domain.realtime) updates profiles, popularity and
metrics. Without Redis the events are still stored and the call succeeds; the consumer replays them from MongoDB.
Without MongoDB the call fails with SERVICE_UNAVAILABLE, saying whether anything was stored.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo.errors import BulkWriteError, PyMongoError

from domain.catalogue import RowError, CatalogueService
from domain.errors import Unavailable
from domain.ids import utcnow
from domain.jsonlimits import context_problem
from domain.realtime.contracts import ReturningNotes
from domain.realtime.stream import EventStream, StreamEvent, millis
from domain.scenarios.service import ScenarioService
from models.cache import Cache, CacheUnavailable, ItemMeta
from models.documents import Interaction, composite_id

log = structlog.get_logger()

INTERACTION_TYPES = (
    "VIEW", "CLICK", "LIKE", "SHARE", "COMMENT", "PURCHASE", "ADD_TO_CART", "RATING", "WATCH", "SKIP", "DISLIKE",
)
FUTURE_TOLERANCE = timedelta(minutes=5)
MAX_ID = 256
# (required, lowest, highest) for `value` by type; other types take an optional non-negative amount.
VALUE_RULES: dict[str, tuple[bool, float, float]] = {"RATING": (True, 0.0, 10.0), "WATCH": (True, 0.0, 86_400.0)}
DEFAULT_VALUE_RULE = (False, 0.0, 1e9)
DUPLICATE_KEY = 11000


@dataclass(frozen=True, slots=True)
class InteractionData:
    """An interaction as a client sends it."""

    scenario_id: str
    user_id: str
    item_id: str
    type: str
    value: float | None = None
    timestamp: datetime | None = None
    context: Mapping[str, Any] | None = None
    request_id: str | None = None
    event_id: str | None = None


@dataclass(slots=True)
class IngestResult:
    accepted: int = 0
    duplicates: int = 0
    errors: list[RowError] = field(default_factory=list)


def check_event(e: InteractionData, now: datetime) -> tuple[str, str] | None:
    """Return (field, message) for what is wrong with an event on its own, or None."""
    for name, value in (("userId", e.user_id), ("itemId", e.item_id), ("scenarioId", e.scenario_id)):
        if not isinstance(value, str) or not value.strip() or len(value) > MAX_ID:
            return name, f"{name} must be 1-{MAX_ID} characters and not blank"
    for name, value in (("eventId", e.event_id), ("requestId", e.request_id)):
        if value is not None and (not value.strip() or len(value) > MAX_ID):
            return name, f"{name} must be 1-{MAX_ID} characters and not blank when given"
    if e.type not in INTERACTION_TYPES:
        return "type", f"unknown interaction type {e.type!r}"
    if problem := _check_value(e.type, e.value):
        return "value", problem
    if e.timestamp is not None and _utc(e.timestamp) > now + FUTURE_TOLERANCE:
        return "timestamp", "timestamp is more than 5 minutes in the future"
    if e.context is not None and (problem := context_problem(e.context)):
        return "context", problem
    return None


def _check_value(kind: str, value: float | None) -> str | None:
    required, low, high = VALUE_RULES.get(kind, DEFAULT_VALUE_RULE)
    if value is None:
        return f"{kind} needs a value" if required else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return "value must be a finite number"
    if not low <= value <= high:
        return f"{kind} value must be between {low:g} and {high:g}, got {value:g}"
    return None


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _millis(ts: datetime) -> datetime:
    return ts.replace(microsecond=ts.microsecond // 1000 * 1000)


class EventService:
    """Record interactions for a tenant."""

    def __init__(
        self, cache: Cache, scenarios: ScenarioService, catalogue: CatalogueService, stream: EventStream | None,
        returning: ReturningNotes | None = None,
    ) -> None:
        self._cache = cache
        self._scenarios = scenarios
        self._catalogue = catalogue
        self._stream = stream
        self._returning = returning  # told of users found without Redis state, to rebuild it in the background

    async def record(self, events: Sequence[InteractionData], *, tenant_id: str) -> IngestResult:
        """Validate each event, store the valid ones once, mark them seen and append them to the stream."""
        try:
            result, docs = await self._validate(events, tenant_id=tenant_id)
        except PyMongoError as exc:
            raise Unavailable(f"the event store is unavailable; nothing was stored, send the batch again ({exc})") from exc
        stored, failure = await self._insert(docs)
        await self._publish([d for d in docs if d["_id"] in stored], tenant_id=tenant_id)
        if failure is not None:
            raise failure
        result.accepted = len(stored)
        result.duplicates += len(docs) - len(stored)
        return result

    async def _validate(
        self, events: Sequence[InteractionData], *, tenant_id: str
    ) -> tuple[IngestResult, list[dict[str, Any]]]:
        """Return the result so far (errors, repeats within the batch) and the documents to store."""
        result = IngestResult()
        now = utcnow()
        weights = await self._scenario_weights({e.scenario_id for e in events}, tenant_id=tenant_id)
        metas = await self._catalogue.metas([e.item_id for e in events if isinstance(e.item_id, str)], tenant_id=tenant_id)
        docs, seen_ids = [], set()
        for index, e in enumerate(events):
            problem = check_event(e, now) or _check_refs(e, weights, metas)
            if problem:
                result.errors.append(RowError(index, *problem))
                continue
            event_id = e.event_id or uuid.uuid4().hex
            doc_id = composite_id(tenant_id, event_id)
            if doc_id in seen_ids:
                result.duplicates += 1
                continue
            seen_ids.add(doc_id)
            docs.append(_document(e, doc_id, event_id, tenant_id, now))
        return result, docs

    async def _scenario_weights(self, ids: set[str], *, tenant_id: str) -> dict[str, Mapping[str, float]]:
        """Return the interaction weights of each existing scenario among ids."""
        valid = [i for i in ids if isinstance(i, str) and i]
        scenarios = await self._scenarios.get_many(valid, tenant_id=tenant_id)
        return {s.id: s.config.get("interactionWeights", {}) for s in scenarios if s is not None}

    async def _insert(self, docs: list[dict[str, Any]]) -> tuple[set[str], Unavailable | None]:
        """Insert documents unordered; return the ids stored now (not those stored before) and, when the store
        failed, the error to raise once those are published."""
        if not docs:
            return set(), None
        try:
            await Interaction.get_pymongo_collection().insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            failed = {err["index"] for err in errors}
            stored = {d["_id"] for i, d in enumerate(docs) if i not in failed}
            if any(err.get("code") != DUPLICATE_KEY for err in errors):
                return stored, _partly_stored(exc.details.get("nInserted", len(stored)), len(docs))
            return stored, None
        except PyMongoError:
            return set(), Unavailable(
                "the event store failed during the insert; some events may be stored: send the batch again with "
                "the same eventIds (they are stored once)"
            )
        return {d["_id"] for d in docs}, None

    async def _publish(self, docs: list[dict[str, Any]], *, tenant_id: str) -> None:
        """Mark stored events seen (the next answer leaves them out) and append them to the tenant's stream."""
        if not docs:
            return
        try:
            fresh = await self._cache.record_seen(((d["scenario_id"], d["user_id"], d["item_id"]) for d in docs),
                                                  tenant_id=tenant_id)
            if self._returning is not None:
                for user_id in fresh:
                    self._returning.note(user_id, tenant_id=tenant_id)
            if self._stream is not None:
                await self._stream.append([stream_event(d) for d in docs], tenant_id=tenant_id)
        except CacheUnavailable as exc:
            # Stored in MongoDB: the consumer replays them from there when Redis is back.
            log.warning("cache.unavailable", op="events.publish", error=str(exc))


def stream_event(doc: Mapping[str, Any]) -> StreamEvent:
    """Return the stream entry of a stored interaction document."""
    return StreamEvent(
        doc["event_id"], doc["scenario_id"], doc["user_id"], doc["item_id"], doc["type"], doc["value"],
        millis(doc["ts"]), millis(doc["received_at"]), doc["request_id"],
    )


def _partly_stored(stored: int, sent: int) -> Unavailable:
    if not stored:
        return Unavailable("the event store refused the batch; nothing was stored, send it again")
    return Unavailable(
        f"the event store failed part way: {stored} of {sent} new events were stored; send the whole batch again "
        "with the same eventIds (stored events are recognised as duplicates)"
    )


def _check_refs(
    e: InteractionData, weights: Mapping[str, Any], metas: Mapping[str, ItemMeta]
) -> tuple[str, str] | None:
    if e.scenario_id not in weights:
        return "scenarioId", f"no scenario {e.scenario_id}"
    meta = metas.get(e.item_id)
    if meta is None or e.scenario_id not in meta.scenarios:
        return "itemId", f"no item {e.item_id} in scenario {e.scenario_id}"
    return None


def _document(e: InteractionData, doc_id: str, event_id: str, tenant_id: str, now: datetime) -> dict[str, Any]:
    return {
        "_id": doc_id,
        "tenant_id": tenant_id,
        "scenario_id": e.scenario_id,
        "user_id": e.user_id,
        "item_id": e.item_id,
        "type": e.type,
        "value": None if e.value is None else float(e.value),
        "ts": _millis(_utc(e.timestamp)) if e.timestamp is not None else now,
        "context": dict(e.context) if e.context is not None else None,
        "request_id": e.request_id,
        "event_id": event_id,
        "received_at": now,
    }


async def newest_event_time(*, tenant_id: str, scenario_id: str) -> datetime | None:
    """Return the event time of the scenario's newest stored interaction (None without any): what time windows on
    stored events count back from, so an imported history behaves like live traffic."""
    newest = await Interaction.get_pymongo_collection().find_one(
        {"tenant_id": tenant_id, "scenario_id": scenario_id}, {"ts": 1}, sort=[("ts", -1)]
    )
    return None if newest is None else newest["ts"]
