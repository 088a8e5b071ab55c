"""Serve recommendation lists: cached per user state, paged without repeats, degraded but answering when stores fail.

A computed answer is kept as a *served list* under its request id (Redis, one hour), a few pages deep, so that
`after` continues the same ranking and later interactions can cite the request id. When `after` pages past the
end, the list is extended: the engine ranks again for the same user, scenario, excludeSeen and context, leaving
out everything already served under that request id, and the new items are appended. Answers are also cached per
(scenario, config version, user, user version, options): recording an interaction bumps the user version, so the
next request recomputes at once.

Every page answered (computed, cached, continued, similar items) is handed to the impression sink, when one is
wired; every `recommendations` page is also told to the observers `watch` added (metrics), as a `PageServed`.

Experiments: a router (domain.experiments.routing) names the arm a user is in. A variant's list comes from the
variant's Engine (the scenario's config with the variant's merged over it), is cached under its own answer key,
and carries the variant and experiment to the sink with the answer's latency, so the consumer counts the user's
outcomes for it. An interleaved arm ranks with both variants' Engines and merges the lists by team draft; its
served list is computed once, a few pages deep, and not extended.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any, Protocol

import msgspec
import structlog

from domain.errors import BadInput, Unavailable
from domain.experiments.interleave import team_draft
from domain.experiments.routing import Arm
from domain.ids import check_first, decode_cursor, encode_cursor
from domain.jsonlimits import context_problem
from domain.profiles import ProfileService
from domain.realtime.contracts import ImpressionSink, ReturningNotes
from domain.recommend.base import Recommendation, RecRequest, RecResult
from domain.recommend.history import request_history
from domain.recommend.served import ServedList
from domain.scenarios.service import ScenarioService
from models.cache import BlobWrite, Cache, CacheUnavailable, UserState

log = structlog.get_logger()

SERVED_TTL_S = 3600
ANSWER_TTL_S = 60
# A user with no history gets popular and trending items, which follow the live hour: recompute them sooner.
COLD_ANSWER_TTL_S = 10
SERVED_PAGES = 3  # pages computed per answer or extension: MMR and caps get room, `after` rarely recomputes
MIN_SERVED = 50  # items computed at least per answer or extension
MAX_CHUNK = 400  # items computed at most per answer or extension (beyond one page)
MAX_SERVED = 1000  # a served list ends here: deeper feeds ask again without `after`


@dataclass(frozen=True, slots=True)
class RecommendationPage:
    request_id: str
    items: list[Recommendation]
    next_cursor: str | None
    variant: str | None = None
    debug: dict[str, Any] | None = None
    experiment_id: str | None = None  # the experiment the user was served under (None: outside any)
    teams: tuple[str, ...] = ()  # INTERLEAVE: per item, the team ("A" control, "B") that placed it


@dataclass(frozen=True, slots=True)
class PageServed:
    """One `recommendations` page answered, as observers hear of it."""

    tenant_id: str
    scenario_id: str
    item_ids: tuple[str, ...]
    answer: str  # CACHED (a cached answer), COMPUTED (ranked now) or CONTINUED (a later page, `after`)
    seconds: float  # from the call to the page's return (the served list stored and the impression noted)


CACHED, COMPUTED, CONTINUED = "cached", "computed", "continued"
PageObserver = Callable[[PageServed], None]


class EngineSource(Protocol):
    async def get(self, tenant_id: str, scenario_id: str, *, config_version: int | None = None) -> Any: ...

    async def variant(
        self, tenant_id: str, scenario_id: str, arm_key: str, overrides: Mapping[str, Any], *,
        config_version: int | None = None, model: Mapping[str, Any] | None = None,
    ) -> Any: ...


class ArmRouter(Protocol):
    async def route(self, *, tenant_id: str, scenario_id: str, user_id: str) -> Arm | None: ...


def served_depth(limit: int) -> int:
    """Return how many items to compute for a page of `limit`: a few pages, within MIN_SERVED..MAX_CHUNK."""
    return max(limit, min(SERVED_PAGES * limit, MAX_CHUNK), MIN_SERVED)


class RecommendationService:
    """Answer `recommendations` and `similarItems` for a tenant."""

    def __init__(
        self, cache: Cache, scenarios: ScenarioService, profiles: ProfileService, engines: EngineSource | None, *,
        impressions: ImpressionSink | None = None, returning: ReturningNotes | None = None,
        router: ArmRouter | None = None,
    ) -> None:
        self._cache = cache
        self._scenarios = scenarios
        self._profiles = profiles
        self._engines = engines
        self._impressions = impressions
        self._returning = returning  # told of users without a cache version: their state may have expired
        self._router = router  # which experiment arm serves a user (None: no experiments)
        self._observers: list[PageObserver] = []

    def watch(self, observer: PageObserver) -> Callable[[], None]:
        """Call observer(page) after each `recommendations` page answered here; return a function that stops it."""
        self._observers.append(observer)
        return lambda: self._observers.remove(observer)

    async def recommend(
        self, *, tenant_id: str, scenario_id: str, user_id: str, first: int | None, after: str | None,
        context: Mapping | None, exclude_seen: bool, debug: bool, max_first: int,
    ) -> RecommendationPage:
        """Return one page of a user's recommendations."""
        started = time.perf_counter()
        limit = check_first(first, maximum=max_first)
        _check_user(user_id)
        context = _check_context(context)
        scenario = await self._scenarios.cached(scenario_id, tenant_id=tenant_id)
        arm = await self._route(tenant_id, scenario_id, user_id)
        store: Awaitable[None] | None = None
        answer = CONTINUED
        if after is not None:
            page = await self._continue(after, limit, scenario_id=scenario_id, user_id=user_id, tenant_id=tenant_id,
                                        config_version=scenario.config_version, arm=arm)
        else:
            key = _answer_key(scenario.config_version, exclude_seen, context, arm)
            served = ServedList(request_id="", scenario_id=scenario_id, user_id=user_id, exclude_seen=exclude_seen,
                                context=context)
            if arm is not None:
                served.arm, served.variant, served.experiment_id = arm.key, arm.variant, arm.experiment_id
            page, store = await self._first_page(served, key, limit, debug, tenant_id=tenant_id,
                                                 config_version=scenario.config_version, arm=arm)
            answer = CACHED if store is None else COMPUTED
        latency_ms = (time.perf_counter() - started) * 1000
        record = self._record(page, tenant_id=tenant_id, scenario_id=scenario_id, user_id=user_id,
                              latency_ms=latency_ms)
        # Storing a computed list and noting the impression are independent writes: one wait for both.
        await (asyncio.gather(store, record) if store is not None else record)
        if self._observers:
            self._tell(PageServed(tenant_id, scenario_id, tuple(r.item_id for r in page.items), answer,
                                  time.perf_counter() - started))
        return page

    async def similar(
        self, *, tenant_id: str, scenario_id: str, item_id: str, first: int | None, max_first: int
    ) -> RecommendationPage:
        """Return items similar to one item within a scenario."""
        limit = check_first(first, maximum=max_first)
        scenario = await self._scenarios.cached(scenario_id, tenant_id=tenant_id)
        engine = await self._engine(tenant_id, scenario_id, scenario.config_version)
        result: RecResult = await engine.similar(item_id, limit=limit, exclude=frozenset({item_id}))
        served = ServedList(request_id=uuid.uuid4().hex, scenario_id=scenario_id, user_id="", exclude_seen=False,
                            context={})
        served.extend(result.items, complete=True)
        page = RecommendationPage(request_id=served.request_id, items=result.items[:limit], next_cursor=None)
        await asyncio.gather(self._store_served(served, tenant_id=tenant_id),
                             self._record(page, tenant_id=tenant_id, scenario_id=scenario_id, user_id=""))
        return page

    async def _first_page(
        self, served: ServedList, key: str, limit: int, debug: bool, *, tenant_id: str, config_version: int,
        arm: Arm | None = None,
    ) -> tuple[RecommendationPage, Awaitable[None] | None]:
        """Answer from the user's cached answer, else compute a served list a few pages deep; return the page and,
        for a computed list, the write that keeps it (the caller awaits it)."""
        answer = ("answer", served.scenario_id, served.user_id, key)
        # One round trip: the user's version, the answer cached under it, else the seen set the engine needs.
        state = await self._user_state(served, None if debug else answer, tenant_id=tenant_id)
        if state is not None and state.missing and self._returning is not None:
            self._returning.note(served.user_id, tenant_id=tenant_id)  # rebuilt in the background, never awaited
        if state is not None and (hit := ServedList.decode(state.answer)) is not None:
            if hit.complete or len(hit) >= limit:  # an answer cached for a smaller page may be too short
                return _page(hit, 0, limit), None
        depth = served_depth(limit)
        # Without Redis nothing is live; with an answer found (too short) the seen set was not read: read it now.
        live = _NOTHING_LIVE if state is None else state if state.seen is not None else None
        result, cold = await self._compute(served, depth, limit, debug, tenant_id=tenant_id, live=live,
                                           config_version=config_version, arm=arm)
        served.request_id = uuid.uuid4().hex
        # An interleaved list is not extended: `after` pages through what was merged (a few pages deep).
        served.extend(result.items, complete=len(result.items) < depth or bool(served.teams))
        version = None if state is None else state.version
        ttl_s = COLD_ANSWER_TTL_S if cold else ANSWER_TTL_S
        return replace(_page(served, 0, limit), debug=result.debug), self._remember(served, answer, version, ttl_s,
                                                                                   tenant_id=tenant_id)

    async def _continue(
        self, after: str, limit: int, *, scenario_id: str, user_id: str, tenant_id: str, config_version: int,
        arm: Arm | None = None,
    ) -> RecommendationPage:
        """Return the page of a served list that `after` points at, extending the list when it pages past it."""
        request_id, _, text = (decode_cursor(after) or "").partition("@")
        start = _offset(text)
        served = await self._load_served(request_id, tenant_id=tenant_id) if start is not None else None
        if served is None or (served.scenario_id, served.user_id) != (scenario_id, user_id):
            raise BadInput("this cursor has expired or is not from this API; ask again without `after`", field="after")
        if start + limit > len(served) and not served.complete:
            # A list extends with the arm it was computed for while the user is still in it, else as the scenario.
            same = arm if arm is not None and arm.key == served.arm else None
            await self._extend(served, start + limit, limit, tenant_id=tenant_id, config_version=config_version,
                               arm=same)
        return _page(served, start, limit)

    async def _extend(
        self, served: ServedList, wanted: int, page: int, *, tenant_id: str, config_version: int,
        arm: Arm | None = None,
    ) -> None:
        """Append newly ranked items, none served before under the list's request id, until `wanted` are listed."""
        depth = min(max(wanted - len(served), served_depth(page)), MAX_SERVED - len(served))
        if depth <= 0:
            served.complete = True
        else:
            result, _ = await self._compute(served, depth, page, False, tenant_id=tenant_id,
                                            also_exclude=frozenset(served.item_ids), config_version=config_version,
                                            arm=arm)
            listed = set(served.item_ids)
            fresh = [r for r in result.items if r.item_id not in listed]
            done = len(result.items) < depth or not fresh or len(served) + len(fresh) >= MAX_SERVED
            served.extend(fresh, complete=done)
        await self._store_served(served, tenant_id=tenant_id)

    async def _compute(
        self, served: ServedList, depth: int, page: int, debug: bool, *, tenant_id: str,
        also_exclude: Collection[str] = frozenset(), live: UserState | None = None, config_version: int | None = None,
        arm: Arm | None = None,
    ) -> tuple[RecResult, bool]:
        """Rank for the served list's user with the arm's engine (the scenario's without one); `live` is the
        user's state with its seen set when already read (None: read it). Return the result and whether the user
        has no history (a cold start). Interleaved, the served list's teams are set to the merged list's."""
        teams = arm.teams if arm is not None else None
        engine = await self._engine(tenant_id, served.scenario_id, config_version,
                                    teams[0] if teams is not None else arm)
        if live is None:
            live = await self._live(served, tenant_id=tenant_id)
        request = await self._request(engine, served, depth, page, debug, also_exclude, live, tenant_id=tenant_id)
        if teams is None:
            return await engine.recommend(request), not request.history
        other = await self._engine(tenant_id, served.scenario_id, config_version, teams[1])
        first, second = await asyncio.gather(engine.recommend(request), other.recommend(request))
        result, served.teams = _interleave(first, second, depth, served.user_id)
        return result, not request.history

    async def _engine(self, tenant_id: str, scenario_id: str, config_version: int | None, arm: Arm | None = None) -> Any:
        if self._engines is None:  # CLI processes serve no recommendations
            raise Unavailable("this process runs no recommendation engine")
        if arm is None:
            return await self._engines.get(tenant_id, scenario_id, config_version=config_version)
        pin = {"model": arm.model} if arm.model else {}  # a variant may serve a pinned model version
        return await self._engines.variant(tenant_id, scenario_id, arm.key, arm.overrides,
                                           config_version=config_version, **pin)

    async def _route(self, tenant_id: str, scenario_id: str, user_id: str) -> Arm | None:
        """Return the experiment arm serving the user; a failing router serves the scenario as is."""
        if self._router is None:
            return None
        try:
            return await self._router.route(tenant_id=tenant_id, scenario_id=scenario_id, user_id=user_id)
        except Exception as exc:  # noqa: BLE001 - experiments must never stop serving
            log.warning("experiments.route_failed", error=repr(exc), scenario_id=scenario_id)
            return None

    async def _request(
        self, engine: Any, served: ServedList, depth: int, page: int, debug: bool, also_exclude: Collection[str],
        live: UserState, *, tenant_id: str,
    ) -> RecRequest:
        model = getattr(engine, "model", None)
        user_id = served.user_id
        history, events = request_history(model, user_id, served.scenario_id, live)
        categories: dict[str, float] = {}
        tags: dict[str, float] = {}
        if not history:  # cold start: stated and learned preferences are all we have
            profile = (await self._profiles.get_many([user_id], tenant_id=tenant_id))[0]
            if profile is not None:
                categories, tags = dict(profile.top_categories), dict(profile.top_tags)
        exclude = frozenset(history) if served.exclude_seen else frozenset()
        now = model.newest_event if model is not None else datetime.now(UTC)
        return RecRequest(
            user_id=user_id, limit=depth, history=history, history_events=events,
            exclude=exclude.union(also_exclude), context=served.context, category_prefs=categories, tag_prefs=tags,
            now=now, debug=debug, page_size=page,
        )

    async def _record(
        self, page: RecommendationPage, *, tenant_id: str, scenario_id: str, user_id: str, latency_ms: float = 0.0
    ) -> None:
        """Hand the page to the impression sink; a failing sink never fails the answer."""
        if self._impressions is None:
            return
        try:
            await self._impressions.record(tenant_id=tenant_id, scenario_id=scenario_id, user_id=user_id,
                                           request_id=page.request_id, variant=page.variant, items=page.items,
                                           experiment=page.experiment_id, latency_ms=latency_ms, teams=page.teams)
        except Exception as exc:  # noqa: BLE001 - the sink promises not to raise; serving must not depend on it
            log.warning("impressions.failed", error=repr(exc), scenario_id=scenario_id)

    def _tell(self, page: PageServed) -> None:
        """Tell the observers of a page; a failing observer never fails the answer."""
        for observer in self._observers:
            try:
                observer(page)
            except Exception as exc:  # noqa: BLE001 - metrics must never stop serving
                log.warning("recommendations.observer_failed", error=repr(exc))

    async def _user_state(
        self, served: ServedList, answer: tuple[str, ...] | None, *, tenant_id: str
    ) -> UserState | None:
        try:
            return await self._cache.user_state(served.scenario_id, served.user_id, answer, tenant_id=tenant_id)
        except CacheUnavailable:
            return None  # without Redis nothing is cached: every request recomputes

    async def _live(self, served: ServedList, *, tenant_id: str) -> UserState:
        """Return the user's seen set and recent events (one round trip), nothing when Redis is down."""
        try:
            return await self._cache.user_state(served.scenario_id, served.user_id, None, tenant_id=tenant_id)
        except CacheUnavailable:
            return _NOTHING_LIVE

    async def _load_served(self, request_id: str, *, tenant_id: str) -> ServedList | None:
        try:
            return ServedList.decode(await self._cache.get_blob("served", request_id, tenant_id=tenant_id))
        except CacheUnavailable:
            return None

    async def _remember(
        self, served: ServedList, answer: tuple[str, ...], version: int | None, ttl_s: int, *, tenant_id: str
    ) -> None:
        """Store the served list under its request id and, with a user version, as the user's cached answer for
        that version (one round trip)."""
        encoded = served.encode()  # once: stored as the served list and the answer
        owner = served.user_id or None  # both name the user: an erasure finds them through the user's key index
        writes = [BlobWrite(("served", served.request_id), encoded, SERVED_TTL_S, owner=owner)]
        if version is not None:  # no user version (Redis was down): nothing is cached
            writes.append(BlobWrite(answer, encoded, ttl_s, version=version, owner=owner))
        await self._put(writes, tenant_id=tenant_id)

    async def _store_served(self, served: ServedList, *, tenant_id: str) -> None:
        write = BlobWrite(("served", served.request_id), served.encode(), SERVED_TTL_S, owner=served.user_id or None)
        await self._put([write], tenant_id=tenant_id)

    async def _put(self, writes: list[BlobWrite], *, tenant_id: str) -> None:
        try:
            await self._cache.put_blobs(writes, tenant_id=tenant_id)
        except CacheUnavailable as exc:
            log.warning("cache.unavailable", op="recommend.served", error=str(exc))


_NOTHING_LIVE = UserState(version=0, answer=None, seen=set())


def _page(served: ServedList, offset: int, limit: int) -> RecommendationPage:
    items = served.page(offset, limit)
    end = offset + len(items)
    cursor = encode_cursor(f"{served.request_id}@{end}") if served.has_more(end) else None
    return RecommendationPage(request_id=served.request_id, items=items, next_cursor=cursor, variant=served.variant,
                              experiment_id=served.experiment_id, teams=served.teams_of(offset, limit))


def _interleave(first: RecResult, second: RecResult, depth: int, user_id: str) -> tuple[RecResult, list[str]]:
    """Merge the control's and the treatment's lists by team draft; return the merged result and its teams."""
    by_id = {r.item_id: r for r in second.items}
    by_id.update((r.item_id, r) for r in first.items)
    # Seeded by the user and the lists: the same answer is merged the same way when it is computed again.
    seed = hashlib.blake2b(f"{user_id}\x1f{len(first.items)}\x1f{len(second.items)}".encode(), digest_size=8)
    merged = team_draft([r.item_id for r in first.items], [r.item_id for r in second.items], depth,
                        rng=random.Random(int.from_bytes(seed.digest(), "big")))
    items = [by_id[item] for item, _ in merged]
    return RecResult(items=items, debug=first.debug), [team for _, team in merged]


def _offset(text: str) -> int | None:
    """Return a cursor's offset into its served list, or None when it is not one this API wrote."""
    # isascii: "²" passes isdigit() but not int(); a served list never reaches MAX_SERVED's digits plus one.
    if not (text.isascii() and text.isdigit()) or len(text) > len(str(MAX_SERVED)):
        return None
    return int(text)


def _check_user(user_id: str) -> None:
    if not isinstance(user_id, str) or not user_id.strip() or len(user_id) > 256:
        raise BadInput("userId must be 1-256 characters and not blank", field="userId")


def _check_context(context: Mapping | None) -> dict[str, Any]:
    if context is None:
        return {}
    if problem := context_problem(context):
        raise BadInput(problem, field="context")
    return dict(context)


_SORTED_JSON = msgspec.json.Encoder(enc_hook=str, order="sorted")  # the same context, the same key


def _answer_key(config_version: int, exclude_seen: bool, context: Mapping, arm: Arm | None = None) -> str:
    digest = _context_digest(context) if context else _NO_CONTEXT
    if arm is not None:  # each variant's answers are its own
        return f"c{config_version}:{int(exclude_seen)}:{digest}:{arm.key}"
    return f"c{config_version}:{int(exclude_seen)}:{digest}"


def _context_digest(context: Mapping) -> str:
    return hashlib.blake2b(_SORTED_JSON.encode(context), digest_size=8).hexdigest()


_NO_CONTEXT = _context_digest({})  # most requests carry no context: the same key part every time
