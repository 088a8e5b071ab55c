"""Serve recommendation lists: cached per user state, paged without repeats, degraded but answering when stores fail.

A computed answer is kept as a *served list* under its request id (Redis, one hour), longer than one page, so that
`after` continues the same ranking and later interactions can cite the request id. Answers are also cached per
(scenario, config version, user, user version, options): recording an interaction bumps the user version, so the
next request recomputes at once.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from domain.errors import BadInput, Unavailable
from domain.ids import check_first, decode_cursor, encode_cursor
from domain.profiles import ProfileService
from domain.recommend.base import Recommendation, RecRequest, RecResult
from domain.scenarios.service import ScenarioService
from models.cache import Cache, CacheUnavailable

log = structlog.get_logger()

SERVED_TTL_S = 3600
ANSWER_TTL_S = 60
SERVED_DEPTH = 200  # items computed per answer; pages beyond it start a new list
MAX_CONTEXT_BYTES = 8 * 1024


@dataclass(frozen=True, slots=True)
class RecommendationPage:
    request_id: str
    items: list[Recommendation]
    next_cursor: str | None
    variant: str | None = None
    debug: dict[str, Any] | None = None


class EngineSource(Protocol):
    async def get(self, tenant_id: str, scenario_id: str) -> Any: ...


class RecommendationService:
    """Answer `recommendations` and `similarItems` for a tenant."""

    def __init__(
        self, cache: Cache, scenarios: ScenarioService, profiles: ProfileService, engines: EngineSource | None
    ) -> None:
        self._cache = cache
        self._scenarios = scenarios
        self._profiles = profiles
        self._engines = engines

    async def recommend(
        self, *, tenant_id: str, scenario_id: str, user_id: str, first: int | None, after: str | None,
        context: Mapping | None, exclude_seen: bool, debug: bool, max_first: int,
    ) -> RecommendationPage:
        """Return one page of a user's recommendations."""
        limit = check_first(first, maximum=max_first)
        _check_user(user_id)
        context = _check_context(context)
        scenario = await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
        if after is not None:
            return await self._continue(after, limit, tenant_id=tenant_id)
        key = _answer_key(scenario.config_version, exclude_seen, context)
        version = await self._user_version(user_id, tenant_id=tenant_id)
        if not debug and (hit := await self._cached(scenario_id, user_id, version, key, tenant_id=tenant_id)):
            return self._page(hit["request_id"], _decode(hit["items"]), 0, limit)
        engine = await self._engine(tenant_id, scenario_id)
        request = await self._request(engine, scenario_id, user_id, context, exclude_seen, debug, tenant_id=tenant_id)
        result: RecResult = await engine.recommend(request)
        request_id = uuid.uuid4().hex
        await self._remember(request_id, result.items, (scenario_id, user_id, version, key), tenant_id=tenant_id)
        return replace(self._page(request_id, result.items, 0, limit), debug=result.debug)

    async def similar(
        self, *, tenant_id: str, scenario_id: str, item_id: str, first: int | None, max_first: int
    ) -> RecommendationPage:
        """Return items similar to one item within a scenario."""
        limit = check_first(first, maximum=max_first)
        await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
        engine = await self._engine(tenant_id, scenario_id)
        result: RecResult = await engine.similar(item_id, limit=limit, exclude=frozenset({item_id}))
        request_id = uuid.uuid4().hex
        await self._store_served(request_id, json.dumps(_encode(result.items), separators=(",", ":")), tenant_id=tenant_id)
        return RecommendationPage(request_id=request_id, items=result.items[:limit], next_cursor=None)

    async def _engine(self, tenant_id: str, scenario_id: str) -> Any:
        if self._engines is None:  # CLI processes serve no recommendations
            raise Unavailable("this process runs no recommendation engine")
        return await self._engines.get(tenant_id, scenario_id)

    async def _request(
        self, engine: Any, scenario_id: str, user_id: str, context: Mapping, exclude_seen: bool, debug: bool, *,
        tenant_id: str,
    ) -> RecRequest:
        model = getattr(engine, "model", None)
        trained = model.user_history(user_id) if model is not None else []
        live = await self._seen(scenario_id, user_id, tenant_id=tenant_id)
        history = [*trained, *sorted(live.difference(trained))]
        categories: dict[str, float] = {}
        tags: dict[str, float] = {}
        if not history:  # cold start: stated and learned preferences are all we have
            profile = (await self._profiles.get_many([user_id], tenant_id=tenant_id))[0]
            if profile is not None:
                categories, tags = dict(profile.top_categories), dict(profile.top_tags)
        now = model.newest_event if model is not None else datetime.now(UTC)
        return RecRequest(
            user_id=user_id, limit=SERVED_DEPTH, history=history,
            exclude=frozenset(history) if exclude_seen else frozenset(), context=context,
            category_prefs=categories, tag_prefs=tags, now=now, debug=debug,
        )

    async def _continue(self, after: str, limit: int, *, tenant_id: str) -> RecommendationPage:
        request_id, _, offset = (decode_cursor(after) or "").partition("@")
        items = None
        try:
            raw = await self._cache.get_blob("served", request_id, tenant_id=tenant_id)
            items = _decode(json.loads(raw)) if raw else None
        except CacheUnavailable:
            pass
        if items is None or not offset.isdigit():
            raise BadInput("this cursor has expired or is not from this API; ask again without `after`", field="after")
        return self._page(request_id, items, int(offset), limit)

    @staticmethod
    def _page(request_id: str, items: list[Recommendation], offset: int, limit: int) -> RecommendationPage:
        page = items[offset : offset + limit]
        end = offset + len(page)
        cursor = encode_cursor(f"{request_id}@{end}") if end < len(items) else None
        return RecommendationPage(request_id=request_id, items=page, next_cursor=cursor)

    async def _user_version(self, user_id: str, *, tenant_id: str) -> int | None:
        try:
            return await self._cache.user_version(user_id, tenant_id=tenant_id)
        except CacheUnavailable:
            return None  # without Redis nothing is cached: every request recomputes

    async def _seen(self, scenario_id: str, user_id: str, *, tenant_id: str) -> set[str]:
        try:
            return await self._cache.seen(scenario_id, user_id, tenant_id=tenant_id)
        except CacheUnavailable:
            return set()

    async def _cached(self, scenario_id: str, user_id: str, version: int | None, key: str, *, tenant_id: str) -> dict | None:
        if version is None:
            return None
        try:
            raw = await self._cache.get_blob("answer", scenario_id, user_id, f"{version}:{key}", tenant_id=tenant_id)
        except CacheUnavailable:
            return None
        return json.loads(raw) if raw else None

    async def _remember(self, request_id: str, items: list[Recommendation], answer: tuple, *, tenant_id: str) -> None:
        scenario_id, user_id, version, key = answer
        encoded = json.dumps(_encode(items), separators=(",", ":"))  # once: stored as the served list and the answer
        await self._store_served(request_id, encoded, tenant_id=tenant_id)
        if version is None:
            return
        blob = f'{{"request_id":{json.dumps(request_id)},"items":{encoded}}}'
        try:
            await self._cache.put_blob("answer", scenario_id, user_id, f"{version}:{key}", value=blob,
                                       ttl_s=ANSWER_TTL_S, tenant_id=tenant_id)
        except CacheUnavailable:
            pass

    async def _store_served(self, request_id: str, encoded: str, *, tenant_id: str) -> None:
        try:
            await self._cache.put_blob("served", request_id, value=encoded, ttl_s=SERVED_TTL_S, tenant_id=tenant_id)
        except CacheUnavailable as exc:
            log.warning("cache.unavailable", op="recommend.served", error=str(exc))


def _check_user(user_id: str) -> None:
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 256:
        raise BadInput("userId must be 1-256 characters and not blank", field="userId")


def _check_context(context: Mapping | None) -> dict[str, Any]:
    if context is None:
        return {}
    if not isinstance(context, Mapping):
        raise BadInput("context must be a JSON object", field="context")
    if len(json.dumps(context, default=str)) > MAX_CONTEXT_BYTES:
        raise BadInput(f"context must be at most {MAX_CONTEXT_BYTES} bytes as JSON", field="context")
    return dict(context)


def _answer_key(config_version: int, exclude_seen: bool, context: Mapping) -> str:
    digest = hashlib.blake2b(json.dumps(context, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()
    return f"c{config_version}:{int(exclude_seen)}:{digest}"


def _encode(items: list[Recommendation]) -> list[list]:
    return [[r.item_id, round(float(r.score), 6), list(r.sources)] for r in items]


def _decode(rows: list[list]) -> list[Recommendation]:
    return [Recommendation(item_id=i, score=s, sources=tuple(src)) for i, s, src in rows]
