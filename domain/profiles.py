"""User profiles: counters, decayed category/tag preferences, active hours, recent items, first/last seen.

The event consumer keeps each profile as hot state in Redis (domain.realtime.apply: one hash of counters, a sorted
set of recent items, a hash of preferences) and snapshots it to MongoDB in batches; reads take Redis first and
MongoDB for users Redis does not hold (or while it is down). Ingest counts accepted events on the profile hash, so a
read that finds the consumer behind the caller's own writes waits for it briefly (read-your-writes).

Preferences decay with a half-life without rewriting old scores: an interaction at time t adds
`w * 2 ** ((t - EPOCH) / HALF_LIFE)`, and a score read at time T is multiplied by `2 ** (-(T - EPOCH) / HALF_LIFE)`.
The stored sum is then the decayed sum at T for any T, maintained by plain additions whatever the events' order.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from domain.realtime.hotstate import HotProfile, pending_users, read_hot
from models.cache import Cache, CacheUnavailable, ItemMeta
from models.documents import UserProfile, composite_id

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
EPOCH_S = EPOCH.timestamp()
HALF_LIFE_SECONDS = 30 * 86400.0
READ_YOUR_WRITES_S = 2.0  # longest a profile read waits for a running consumer to apply the caller's events
log = structlog.get_logger()
DEFAULT_WEIGHTS = {
    "VIEW": 1.0, "CLICK": 2.0, "LIKE": 4.0, "SHARE": 5.0, "COMMENT": 4.0, "PURCHASE": 8.0,
    "ADD_TO_CART": 4.0, "RATING": 3.0, "WATCH": 3.0, "SKIP": -1.0, "DISLIKE": -4.0,
}


@dataclass(frozen=True, slots=True)
class ProfileEvent:
    """An accepted interaction with what the profile needs of its item."""

    user_id: str
    scenario_id: str
    item_id: str
    type: str
    value: float | None
    ts: datetime
    meta: ItemMeta


@dataclass(frozen=True, slots=True)
class ProfileView:
    """A profile as read: decayed preferences at the user's last activity."""

    user_id: str
    interaction_count: int
    counts_by_type: dict[str, int]
    counts_by_scenario: dict[str, int]
    top_categories: list[tuple[str, float]]
    top_tags: list[tuple[str, float]]
    recent: list[dict] = field(default_factory=list)
    first_seen: datetime | None = None
    last_seen: datetime | None = None
    active_hours: dict[int, int] = field(default_factory=dict)  # UTC hour of day -> events


CATEGORY, TAG = "c:", "t:"  # label prefixes in a user's preference hash


def event_weight(event: ProfileEvent, weights: Mapping[str, float]) -> float:
    """Return how much an event says about the user's taste (negative for dislikes and skips)."""
    return weight_of(event.type, event.value, event.meta.duration_seconds, weights)


def weight_of(kind: str, value: float | None, duration: float | None, weights: Mapping[str, float]) -> float:
    """Return `event_weight` from an event's parts (the consumer's hot path builds no ProfileEvent)."""
    base = float(weights.get(kind, DEFAULT_WEIGHTS.get(kind, 1.0)))
    if kind == "RATING" and value is not None:
        return base * (value - 2.5) / 2.5  # a 5-star scale: 5 -> +w, 2.5 -> 0, 0.5 -> -0.8w
    if kind == "WATCH" and value is not None and duration:
        return base * min(value / duration, 1.0)
    return base


def shifted(weight: float, ts: datetime) -> float:
    """Return a weight in time-shifted form (see module docstring)."""
    return shifted_at(weight, ts.timestamp())


def shifted_at(weight: float, epoch_s: float) -> float:
    """Return `shifted` for a time given in epoch seconds."""
    return weight * 2.0 ** ((epoch_s - EPOCH_S) / HALF_LIFE_SECONDS)


def label_deltas(
    events: Sequence[ProfileEvent], weights: Mapping[str, Mapping[str, float]]
) -> dict[str, dict[str, float]]:
    """Return each user's preference additions (prefixed label -> time-shifted amount) for a batch."""
    deltas: dict[str, dict[str, float]] = {}
    for e in events:
        score = shifted(event_weight(e, weights.get(e.scenario_id, {})), e.ts)
        labels = deltas.setdefault(e.user_id, {})
        for key in [*(CATEGORY + c for c in e.meta.categories), *(TAG + t for t in e.meta.tags)]:
            labels[key] = labels.get(key, 0.0) + score
    return deltas


def _decayed(scores: Mapping[str, float], prefix: str, at: datetime | None, top: int) -> list[tuple[str, float]]:
    factor = 2.0 ** (-((at or EPOCH) - EPOCH).total_seconds() / HALF_LIFE_SECONDS)
    mine = ((k[len(prefix):], v * factor) for k, v in scores.items() if k.startswith(prefix))
    ranked = sorted(mine, key=lambda kv: (-kv[1], kv[0]))
    return [(k, v) for k, v in ranked if v > 0][:top]


def view(doc: UserProfile, labels: Mapping[str, float], *, top: int = 10) -> ProfileView:
    """Return the readable profile of a stored document and the user's preference scores."""
    return ProfileView(
        user_id=doc.user_id,
        interaction_count=doc.interaction_count,
        counts_by_type=dict(doc.counts_by_type),
        counts_by_scenario=dict(doc.counts_by_scenario),
        top_categories=_decayed(labels, CATEGORY, doc.last_seen, top),
        top_tags=_decayed(labels, TAG, doc.last_seen, top),
        recent=list(reversed(doc.recent)),
        first_seen=doc.first_seen,
        last_seen=doc.last_seen,
        active_hours={int(h): n for h, n in (getattr(doc, "active_hours", None) or {}).items()},
    )


def hot_view(user_id: str, hot: HotProfile, *, top: int = 10) -> ProfileView:
    """Return the readable profile of a user's hot state in Redis."""
    return ProfileView(
        user_id=user_id,
        interaction_count=hot.applied,
        counts_by_type=dict(hot.counts_by_type),
        counts_by_scenario=dict(hot.counts_by_scenario),
        top_categories=_decayed(hot.labels, CATEGORY, hot.last_seen, top),
        top_tags=_decayed(hot.labels, TAG, hot.last_seen, top),
        recent=list(hot.recent),
        first_seen=hot.first_seen,
        last_seen=hot.last_seen,
        active_hours=dict(hot.active_hours),
    )


class ProfileService:
    """Read user profiles, scoped by tenant (the event consumer maintains them)."""

    def __init__(self, cache: Cache, client: aioredis.Redis | None = None) -> None:
        self._cache = cache
        self._r = client

    async def get_many(self, user_ids: Sequence[str], *, tenant_id: str) -> list[ProfileView | None]:
        """Return profiles in the order of user_ids, None for users never seen: Redis hot state first, MongoDB
        for the rest."""
        users = list(dict.fromkeys(user_ids))
        found = await self._hot(users, tenant_id=tenant_id)
        if missing := [u for u in users if u not in found]:
            found.update(await self._stored(missing, tenant_id=tenant_id))
        return [found.get(u) for u in user_ids]

    async def _hot(self, users: list[str], *, tenant_id: str) -> dict[str, ProfileView]:
        if self._r is None or not users:
            return {}
        try:
            await self._await_consumer(users, tenant_id=tenant_id)
            hot = await read_hot(self._r, users, tenant_id=tenant_id)
        except (RedisError, OSError) as exc:
            log.warning("cache.unavailable", op="profiles.read", error=str(exc))
            return {}  # degraded: the MongoDB snapshot answers
        return {u: hot_view(u, h) for u, h in hot.items()}

    async def _await_consumer(self, users: list[str], *, tenant_id: str) -> None:
        """Wait (briefly) until the consumer has applied the events already accepted for these users."""
        deadline = time.monotonic() + READ_YOUR_WRITES_S
        while (pending := await pending_users(self._r, users, tenant_id=tenant_id)) and time.monotonic() < deadline:
            users = pending
            await asyncio.sleep(0.01)

    async def of_documents(self, docs: Sequence[UserProfile], *, tenant_id: str) -> list[ProfileView]:
        """Return the profiles of stored documents as `get_many` reads them (Redis hot state first), without waiting
        for the consumer: for reading many users at once (exports)."""
        hot: dict[str, HotProfile] = {}
        if self._r is not None and docs:
            try:
                hot = await read_hot(self._r, [d.user_id for d in docs], tenant_id=tenant_id)
            except (RedisError, OSError) as exc:
                log.warning("cache.unavailable", op="profiles.read", error=str(exc))
        stored = await self._views([d for d in docs if d.user_id not in hot], tenant_id=tenant_id)
        return [hot_view(d.user_id, hot[d.user_id]) if d.user_id in hot else stored[d.user_id] for d in docs]

    async def _stored(self, users: list[str], *, tenant_id: str) -> dict[str, ProfileView]:
        keys = [composite_id(tenant_id, u) for u in users]
        docs = await UserProfile.find({"_id": {"$in": keys}, "tenant_id": tenant_id}).to_list()
        return await self._views(docs, tenant_id=tenant_id)

    async def _views(self, docs: Sequence[UserProfile], *, tenant_id: str) -> dict[str, ProfileView]:
        if not docs:
            return {}
        try:
            labels = await self._cache.label_scores([d.user_id for d in docs], tenant_id=tenant_id)
        except CacheUnavailable:
            labels = {}  # degraded: counters and recent items still answer
        return {d.user_id: view(d, labels.get(d.user_id, {})) for d in docs}

    async def delete(self, user_id: str, *, tenant_id: str) -> int:
        """Delete the user's stored profile document; return 1 if there was one."""
        result = await UserProfile.get_pymongo_collection().delete_one(
            {"_id": composite_id(tenant_id, user_id), "tenant_id": tenant_id}
        )
        return result.deleted_count
