"""User profiles: counters, decayed category/tag preferences, recent items, first/last seen.

Counters, the recent sequence and first/last seen live in MongoDB (one bulk upsert per batch of events). Category
and tag preferences are hot state in Redis (one hash per user, one call per user per batch): adding dozens of
label fields to a MongoDB document per event cost the embedded server more than storing the events themselves.

Preferences decay with a half-life without rewriting old scores: an interaction at time t adds
`w * 2 ** ((t - EPOCH) / HALF_LIFE)`, and a score read at time T is multiplied by `2 ** (-(T - EPOCH) / HALF_LIFE)`.
The stored sum is then the decayed sum at T for any T, maintained by plain additions whatever the events' order.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from pymongo import UpdateOne

import structlog

from models.cache import Cache, CacheUnavailable, ItemMeta
from models.documents import UserProfile, composite_id

EPOCH = datetime(2020, 1, 1, tzinfo=UTC)
HALF_LIFE_SECONDS = 30 * 86400.0
RECENT_KEPT = 50
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


CATEGORY, TAG = "c:", "t:"  # label prefixes in a user's preference hash


def event_weight(event: ProfileEvent, weights: Mapping[str, float]) -> float:
    """Return how much an event says about the user's taste (negative for dislikes and skips)."""
    base = float(weights.get(event.type, DEFAULT_WEIGHTS.get(event.type, 1.0)))
    if event.type == "RATING" and event.value is not None:
        return base * (event.value - 2.5) / 2.5  # a 5-star scale: 5 -> +w, 2.5 -> 0, 0.5 -> -0.8w
    if event.type == "WATCH" and event.value is not None and event.meta.duration_seconds:
        return base * min(event.value / event.meta.duration_seconds, 1.0)
    return base


def shifted(weight: float, ts: datetime) -> float:
    """Return a weight in time-shifted form (see module docstring)."""
    return weight * 2.0 ** ((ts - EPOCH).total_seconds() / HALF_LIFE_SECONDS)


def profile_updates(events: Sequence[ProfileEvent], *, tenant_id: str) -> list[UpdateOne]:
    """Return one upsert per user folding the batch's events into the stored counters and recent items."""
    return [_user_update(user, evs, tenant_id) for user, evs in _by_user(events).items()]


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


def _by_user(events: Sequence[ProfileEvent]) -> dict[str, list[ProfileEvent]]:
    by_user: dict[str, list[ProfileEvent]] = {}
    for event in events:
        by_user.setdefault(event.user_id, []).append(event)
    return by_user


def _user_update(user_id: str, events: list[ProfileEvent], tenant_id: str) -> UpdateOne:
    inc: dict[str, int] = {"interaction_count": len(events)}
    for e in events:
        inc[f"counts_by_type.{e.type}"] = inc.get(f"counts_by_type.{e.type}", 0) + 1
        inc[f"counts_by_scenario.{e.scenario_id}"] = inc.get(f"counts_by_scenario.{e.scenario_id}", 0) + 1
    recent = [{"i": e.item_id, "s": e.scenario_id, "y": e.type, "t": e.ts} for e in events]
    return UpdateOne(
        {"_id": composite_id(tenant_id, user_id)},
        {
            "$inc": inc,
            "$min": {"first_seen": min(e.ts for e in events)},
            "$max": {"last_seen": max(e.ts for e in events)},
            "$push": {"recent": {"$each": recent, "$sort": {"t": 1}, "$slice": -RECENT_KEPT}},
            "$setOnInsert": {"tenant_id": tenant_id, "user_id": user_id},
        },
        upsert=True,
    )


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
    )


class ProfileService:
    """Read and maintain user profiles, scoped by tenant."""

    def __init__(self, cache: Cache) -> None:
        self._cache = cache

    async def apply(
        self, events: Sequence[ProfileEvent], weights: Mapping[str, Mapping[str, float]], *, tenant_id: str
    ) -> None:
        """Fold accepted events into their users' profiles (one bulk write, one Redis round trip)."""
        if ops := profile_updates(events, tenant_id=tenant_id):
            await UserProfile.get_pymongo_collection().bulk_write(ops, ordered=False)
        try:
            await self._cache.add_label_scores(label_deltas(events, weights), tenant_id=tenant_id)
        except CacheUnavailable as exc:
            log.warning("cache.unavailable", op="profiles.labels", error=str(exc))

    async def get_many(self, user_ids: Sequence[str], *, tenant_id: str) -> list[ProfileView | None]:
        """Return profiles in the order of user_ids, None for users never seen (one query, one Redis call)."""
        keys = [composite_id(tenant_id, u) for u in dict.fromkeys(user_ids)]
        docs = await UserProfile.find({"_id": {"$in": keys}, "tenant_id": tenant_id}).to_list()
        try:
            labels = await self._cache.label_scores([d.user_id for d in docs], tenant_id=tenant_id)
        except CacheUnavailable:
            labels = {}  # degraded: counters and recent items still answer
        by_user = {d.user_id: view(d, labels.get(d.user_id, {})) for d in docs}
        return [by_user.get(u) for u in user_ids]

    async def delete(self, user_id: str, *, tenant_id: str) -> int:
        """Delete the user's stored profile document; return 1 if there was one."""
        result = await UserProfile.get_pymongo_collection().delete_one(
            {"_id": composite_id(tenant_id, user_id), "tenant_id": tenant_id}
        )
        return result.deleted_count
