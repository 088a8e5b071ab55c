"""Erase one user's data on request: interactions, served pages, profile (its Redis hot state and MongoDB
snapshot), cached state, user vectors, experiment outcomes, analytics rollups, and the user's training history in
every kept model version.

What must outlive the erasure (so that the user's events still in flight are skipped, and a training that was
running drops them) is an `Erasure` record holding a keyed hash of the id (domain.erasure), never the id.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

import structlog
from redis.exceptions import RedisError

from domain import erasure
from domain.analytics.service import AnalyticsService
from domain.errors import BadInput, Unavailable
from domain.experiments.outcomes import ExperimentOutcomes
from domain.learning.forget import forget_users
from domain.learning.service import LearningConfig
from domain.learning.versions import MODEL_KIND
from domain.profiles import ProfileService
from domain.realtime.keys import request_key
from domain.realtime.service import RealtimeService
from domain.scenarios.service import ScenarioService
from models.cache import Cache, CacheUnavailable
from models.documents import Experiment, Impression, Interaction, ModelVersion
from models.vectors import VectorStore, VectorStoreError

log = structlog.get_logger()
USER_SPACES = ("users",)


class PrivacyService:
    """Carry out privacy requests for a tenant."""

    def __init__(
        self, cache: Cache, vectors: VectorStore | None, scenarios: ScenarioService, profiles: ProfileService,
        learning: LearningConfig | None = None, realtime: RealtimeService | None = None,
        outcomes: ExperimentOutcomes | None = None, analytics: AnalyticsService | None = None,
    ) -> None:
        self._cache = cache
        self._vectors = vectors
        self._scenarios = scenarios
        self._profiles = profiles
        self._learning = learning
        self._realtime = realtime
        self._outcomes = outcomes
        self._analytics = analytics

    async def delete_user_data(self, user_id: str, *, tenant_id: str) -> int:
        """Delete everything stored about a user; return how many records were removed."""
        if not user_id or not user_id.strip():
            raise BadInput("userId must not be blank", field="userId")
        # First, so that a training running now drops the user before its version becomes active.
        marker = await erasure.record(user_id, tenant_id=tenant_id)
        query = {"tenant_id": tenant_id, "user_id": user_id}
        events = [(d["event_id"], d["received_at"]) async for d in Interaction.get_pymongo_collection().find(
            query, {"event_id": 1, "received_at": 1})]
        removed = await self._erase_hot_state(user_id, marker, events, tenant_id=tenant_id)
        for collection in (Interaction, Impression):
            removed += (await collection.get_pymongo_collection().delete_many(query)).deleted_count
        if self._analytics is not None:  # after the events: the next rollup of their hours no longer finds them
            removed += await self._analytics.erase_user(user_id, tenant_id=tenant_id)
        removed += await self._profiles.delete(user_id, tenant_id=tenant_id)
        removed += await self._erase_vectors(user_id, tenant_id=tenant_id)
        return removed + await self._erase_from_models(user_id, tenant_id=tenant_id)

    async def _erase_hot_state(
        self, user_id: str, marker: str, events: list[tuple[str, datetime]], *, tenant_id: str
    ) -> int:
        """Erase the user from Redis: their keys, the served pages and answers written about them, their stream
        entries, dead letters and event markers."""
        scenario_ids = await self._scenarios.ids(tenant_id=tenant_id)
        try:
            # The profile hot state and its pending MongoDB snapshot go before the stored profile, so the event
            # consumer's next snapshot cannot write the profile back.
            served = [key.rsplit(":served:", 1)[1] for key in await self._cache.user_keys(user_id, tenant_id=tenant_id)
                      if ":served:" in key]
            pages = [request_key(tenant_id, request_id) for request_id in served]  # their attribution hashes
            removed = await self._cache.erase_user(user_id, scenario_ids, tenant_id=tenant_id, marker=marker,
                                                   also=pages)
            if self._realtime is not None:
                removed += await self._realtime.erase_user(user_id, events, tenant_id=tenant_id)
            if self._outcomes is not None:  # after the marker: the consumer no longer counts the user's events
                experiments = await Experiment.find({"tenant_id": tenant_id, "status": {"$ne": "DRAFT"}}).to_list()
                removed += await self._outcomes.erase_user(user_id, experiments, tenant_id=tenant_id)
        except (CacheUnavailable, RedisError, OSError) as exc:
            raise Unavailable("the user's real-time state is kept in Redis, which cannot be reached: nothing was "
                              "erased there; ask again") from exc
        return removed

    async def _erase_vectors(self, user_id: str, *, tenant_id: str) -> int:
        if self._vectors is None:
            return 0
        removed = 0
        key = await erasure.user_digest(user_id, tenant_id=tenant_id)  # user points are stored under the hash
        for space in USER_SPACES:
            try:
                removed += await self._vectors.delete_where(space, tenant_id=tenant_id, key="user", value=key)
            except VectorStoreError:
                continue  # no such space yet: nothing was ever stored for users
        return removed

    async def _erase_from_models(self, user_id: str, *, tenant_id: str) -> int:
        """Rewrite every kept model version of the tenant without the user; tell serving to reload them."""
        if self._learning is None:
            return 0
        cursor = ModelVersion.get_pymongo_collection().find(
            {"tenant_id": tenant_id, "artifact": {"$ne": None}}, {"artifact": 1, "kind": 1, "scenario_id": 1,
                                                                  "version": 1}
        )
        removed = 0
        async for doc in cursor:
            removed += await self._forget_in(doc, {user_id}, tenant_id=tenant_id)
        return removed

    async def _forget_in(self, doc: dict, user_ids: Iterable[str], *, tenant_id: str) -> int:
        assert self._learning is not None
        wanted = frozenset(user_ids)
        path = Path(self._learning.models_dir) / doc["artifact"]
        gone = await asyncio.to_thread(forget_users, path, wanted.__contains__)
        if gone:
            await rewritten(doc, tenant_id=tenant_id, learning=self._learning)
        return gone


async def rewritten(doc: dict, *, tenant_id: str, learning: LearningConfig) -> None:
    """Record that a version's artifact was rewritten in place, and have serving reload it where it serves (a
    champion, or a version an experiment variant pins)."""
    updated = await ModelVersion.get_pymongo_collection().find_one_and_update(
        {"_id": doc["_id"], "tenant_id": tenant_id}, {"$inc": {"revision": 1}}, projection={"revision": 1},
        return_document=True,
    )
    if updated is None:
        return
    revision, kind = int(updated.get("revision", 0)), doc.get("kind", MODEL_KIND)
    if learning.swaps is not None and kind == MODEL_KIND:
        await learning.swaps.swap(tenant_id, doc["scenario_id"], int(doc["version"]), revision)
    if learning.notifier is not None:
        try:
            await learning.notifier.publish(tenant_id, doc["scenario_id"], int(doc["version"]), revision, kind=kind)
        except Exception as exc:  # noqa: BLE001 - other processes re-check active versions periodically
            log.warning("privacy.notice_not_sent", error=type(exc).__name__)
