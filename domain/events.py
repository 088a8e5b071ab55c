"""Interactions: per-event validation, idempotent append-only storage, and the cheap real-time updates.

Each event is validated on its own against what the cache knows (items) and one query for the batch's scenarios;
valid events are stored with one unordered insert whose `_id` carries the event id, so a resent batch stores
nothing twice and reports those events as duplicates.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo.errors import BulkWriteError

from domain.catalogue import RowError, CatalogueService
from domain.ids import utcnow
from domain.profiles import ProfileEvent, ProfileService
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
    if e.context is not None and not isinstance(e.context, Mapping):
        return "context", "context must be a JSON object"
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
        self, cache: Cache, scenarios: ScenarioService, catalogue: CatalogueService, profiles: ProfileService
    ) -> None:
        self._cache = cache
        self._scenarios = scenarios
        self._catalogue = catalogue
        self._profiles = profiles

    async def record(self, events: Sequence[InteractionData], *, tenant_id: str) -> IngestResult:
        """Validate each event, store the valid ones once, and update profiles and seen sets."""
        result = IngestResult()
        now = utcnow()
        weights = await self._scenario_weights({e.scenario_id for e in events}, tenant_id=tenant_id)
        metas = await self._catalogue.metas([e.item_id for e in events if isinstance(e.item_id, str)], tenant_id=tenant_id)
        docs, profile_events, seen_ids = [], {}, set()
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
            profile_events[doc_id] = ProfileEvent(
                e.user_id, e.scenario_id, e.item_id, e.type, e.value, docs[-1]["ts"], metas[e.item_id]
            )
        stored = await self._insert(docs)
        result.accepted = len(stored)
        result.duplicates += len(docs) - len(stored)
        fresh = [profile_events[d] for d in stored]
        await self._profiles.apply(fresh, weights, tenant_id=tenant_id)
        await self._mark_seen(fresh, tenant_id=tenant_id)
        return result

    async def _scenario_weights(self, ids: set[str], *, tenant_id: str) -> dict[str, Mapping[str, float]]:
        """Return the interaction weights of each existing scenario among ids."""
        valid = [i for i in ids if isinstance(i, str) and i]
        scenarios = await self._scenarios.get_many(valid, tenant_id=tenant_id)
        return {s.id: s.config.get("interactionWeights", {}) for s in scenarios if s is not None}

    async def _insert(self, docs: list[dict[str, Any]]) -> list[str]:
        """Insert documents unordered; return the ids stored now (not those stored before)."""
        if not docs:
            return []
        try:
            await Interaction.get_pymongo_collection().insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if any(err.get("code") != DUPLICATE_KEY for err in errors):
                raise
            duplicate = {err["index"] for err in errors}
            return [d["_id"] for i, d in enumerate(docs) if i not in duplicate]
        return [d["_id"] for d in docs]

    async def _mark_seen(self, events: list[ProfileEvent], *, tenant_id: str) -> None:
        try:
            await self._cache.record_seen(((e.scenario_id, e.user_id, e.item_id) for e in events), tenant_id=tenant_id)
        except CacheUnavailable as exc:
            log.warning("cache.unavailable", op="events.seen", error=str(exc))


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
