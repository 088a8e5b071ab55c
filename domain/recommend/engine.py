"""The recommendation engine of one scenario: recall -> filter -> rank -> fallback -> rerank.

Recall sources run concurrently, each under the config's time budget; one that overruns or fails is left out of
that answer (named in `debug`). When too few candidates survive the filters, the fallback sources fill the list,
then the soft filters (business rules) are relaxed, and at last the most popular active items (the newest when the
scenario is untrained) fill it, so the answer is short only when nothing active and allowed remains.
"""

from __future__ import annotations

import asyncio
import copy
import time
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import structlog

import domain.recommend.dcn  # noqa: F401  (registers the learned ranker)
import domain.recommend.filters  # noqa: F401  (registers the filters)
import domain.recommend.rank  # noqa: F401  (registers the fusion ranker)
import domain.recommend.recall  # noqa: F401  (registers the recall sources)
import domain.recommend.rerank  # noqa: F401  (registers the rerankers)
from domain.learning.model import ScenarioModel
from domain.recommend.base import (
    REGISTRY,
    Candidates,
    CatalogueView,
    Ranked,
    Recommendation,
    RecRequest,
    RecResult,
    StageContext,
    drop_reason,
)
from domain.recommend.recall import CatalogueIndex, RecallContext, VectorSearch
from domain.recommend.recall.context import LiveFeed, PopularityView
from domain.recommend.recall.popular import live_view, trained_view
from domain.scenarios.config import validate_config

if TYPE_CHECKING:
    from domain.realtime.popularity import LiveLists

__all__ = ["Engine", "VectorSearch"]

log = structlog.get_logger()

HARD_FILTERS = frozenset({"seen", "availability", "blocklist"})  # never relaxed; the rest give way to a short list
SIMILAR_SOURCES = ("item_cf", "ease", "content")
RERANK_PAGES = 3  # rerankers see this many pages of candidates (MMR and caps need room to choose)
FALLBACK_DEPTH = 50  # a fallback source is asked for at least this many candidates
COLD_START_LIMIT = 200  # candidates of the affinity source added for a new user with stated preferences
POPULARITY_SOURCES = frozenset({"popular", "trending"})  # the sources that read live popularity


class _Stage(NamedTuple):
    name: str
    impl: Any
    params: Mapping[str, Any]


class _Plan(NamedTuple):
    name: str
    source: Any
    params: Mapping[str, Any]
    limit: int


@dataclass
class _Trace:
    """Stage timings and what was dropped, relaxed or filled, for `debug`."""

    started: float = field(default_factory=time.perf_counter)
    last: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    recall: dict[str, dict[str, Any]] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    fallback: dict[str, Any] = field(default_factory=dict)

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round((now - self.last) * 1000, 3)
        self.last = now

    def report(self) -> dict[str, Any]:
        self.timings["total"] = round((time.perf_counter() - self.started) * 1000, 3)
        return {"timings": self.timings, "recall": self.recall, "dropped": self.dropped, "fallback": self.fallback}


class Engine:
    """Serve one scenario from its config, its trained model (if any) and the live catalogue."""

    def __init__(self, config: Mapping, model: ScenarioModel | None, *, catalogue: CatalogueView | None = None,
                 vectors: VectorSearch | None = None, content_space: str | None = None,
                 live: LiveFeed | None = None, two_tower_space: str | None = None) -> None:
        self.config = fitted_config(validate_config(config), model)
        self.model = model
        self.index = CatalogueIndex.build(model, catalogue)
        self.catalogue = self.index.catalogue
        self._vectors, self._space, self._tower_space = vectors, content_space, two_tower_space
        limits = self.config["limits"]
        self._timeout = limits["recallTimeoutMs"] / 1000.0
        self._max_candidates = int(limits["maxCandidates"])
        self._recall = [_Plan(e["source"], REGISTRY.get("recall", e["source"])(), e.get("params") or {},
                              int(e.get("limit", 200))) for e in self.config["recall"]]
        self._filters = [_stage("filter", f) for f in self.config["filters"]]
        self._hard = [f for f in self._filters if f.name in HARD_FILTERS]
        self._ranker = _stage("ranker", self.config["ranker"])
        # Look-alikes are ranked by fusion: a learned ranker learns what a user takes next, not what resembles an item.
        self._similar_ranker = self._ranker if self._ranker.name == "fusion" else _stage("ranker", {"name": "fusion"})
        self._rerankers = [_stage("reranker", r) for r in self.config["rerank"]]
        self._live = live
        names = {p.name for p in self._recall} | set(self.config["fallback"]["sources"])
        self._uses_popularity = bool(names & POPULARITY_SOURCES)
        self._trained_view: PopularityView | None = None
        self._views: tuple[LiveLists | None, PopularityView] | None = None  # the view of the last snapshot

    async def recommend(self, request: RecRequest) -> RecResult:
        """Return up to request.limit items for the user; never raises for an unknown user."""
        trace = _Trace()
        ctx = self._context(request, await self._popularity())
        per_source = await self._recall_all(ctx, self._plan(ctx), trace)
        trace.lap("recall")
        stage = self._stage_context(ctx)
        ranked = self._rank(self._filter(per_source, stage, self._filters, ctx.excluded), stage)
        trace.lap("filterRank")
        ranked = await self._fill(ranked, ctx, stage, per_source, trace)
        trace.lap("fallback")
        ranked = self._rerank(ranked, stage, request.limit)
        trace.lap("rerank")
        return self._result(ranked, request, trace)

    async def recall_filtered(self, request: RecRequest) -> dict[str, Candidates]:
        """Return each recall source's candidates that pass the filters: what the ranker fuses (for fitting the
        fusion weights offline, domain.learning.tuning)."""
        ctx = self._context(request, await self._popularity())
        per_source = await self._recall_all(ctx, self._plan(ctx), _Trace())
        return self._filter(per_source, self._stage_context(ctx), self._filters, ctx.excluded)

    async def similar(self, item_id: str, *, limit: int, exclude: frozenset[str] = frozenset(),
                      debug: bool = False) -> RecResult:
        """Return items like item_id (co-occurrence and EASE neighbours, content look-alikes); [] if unknown."""
        trace = _Trace()
        if item_id not in self.catalogue.index or limit <= 0:
            return RecResult(items=[], debug=trace.report() if debug else None)
        request = RecRequest(user_id="", limit=limit, history=(item_id,), exclude=exclude | {item_id},
                             now=self._now(), debug=debug)
        ctx = self._context(request)
        plans = [_Plan(name, REGISTRY.get("recall", name)(), self._params_of(name), limit * RERANK_PAGES)
                 for name in SIMILAR_SOURCES]
        per_source = await self._recall_all(ctx, plans, trace)
        stage = self._stage_context(ctx)
        ranked = self._rank(self._filter(per_source, stage, self._hard, ctx.excluded), stage, self._similar_ranker)
        if len(ranked.idx) < limit:
            ranked = _concat(ranked, self._same_categories(ctx, stage, item_id, limit - len(ranked.idx), ranked))
        trace.lap("similar")
        return self._result(ranked.take(np.arange(min(limit, len(ranked.idx)))), request, trace)

    # --- recall ---------------------------------------------------------------------------------------------

    def _context(self, request: RecRequest, popularity: PopularityView | None = None) -> RecallContext:
        ctx = RecallContext(request=request, index=self.index, model=self.model, config=self.config,
                            vectors=self._vectors, content_space=self._space, two_tower_space=self._tower_space,
                            popularity=popularity)
        _ = ctx.history, ctx.history_model, ctx.excluded  # computed once, shared by every source's copy
        return ctx

    async def _popularity(self) -> PopularityView | None:
        """Return the popular and trending orders of the newest live snapshot, computed once per snapshot.

        The snapshot is kept in process and refreshed in the background (at most once a second per scenario), so
        this awaits the store only for a scenario's first request, and then at most one recall time budget.
        """
        if not self._uses_popularity:
            return None
        if self._trained_view is None:
            self._trained_view = trained_view(self.index, self.model)
        lists = None
        if self._live is not None:
            try:
                lists = await self._live.current(wait_s=self._timeout)
            except Exception as exc:  # noqa: BLE001 - live counts are a bonus: the trained ones answer
                log.warning("recall.live_popularity_failed", error=repr(exc))
        views = self._views
        if views is None or views[0] is not lists:
            window = self._params_of("trending").get("windowHours") or self.config["popularity"]["trendingWindowHours"]
            views = self._views = (lists, live_view(self._trained_view, self.index, self.model, lists,
                                                    window_hours=float(window)))
        return views[1]

    def _plan(self, ctx: RecallContext) -> list[_Plan]:
        plans = list(self._recall)
        request = ctx.request
        cold = len(ctx.history) == 0
        if cold and (request.category_prefs or request.tag_prefs) and all(p.name != "affinity" for p in plans):
            # A new user's stated preferences are the only personal signal there is.
            plans.append(_Plan("affinity", REGISTRY.get("recall", "affinity")(), {}, COLD_START_LIMIT))
        return plans

    async def _recall_all(self, ctx: RecallContext, plans: Sequence[_Plan], trace: _Trace) -> dict[str, Candidates]:
        """Run the sources: store-backed ones as concurrent tasks, in-memory ones inline meanwhile."""
        tasks = {p.name: asyncio.ensure_future(self._guarded(ctx, p, trace)) for p in plans if self._remote(p)}
        if tasks:
            await asyncio.sleep(0)  # let the store requests go out before computing the in-memory sources
        found = {p.name: await self._guarded(ctx, p, trace) for p in plans if p.name not in tasks}
        for name, task in tasks.items():
            found[name] = await task
        return {p.name: found[p.name] for p in plans if found.get(p.name) is not None}  # type: ignore[misc]

    async def _guarded(self, ctx: RecallContext, plan: _Plan, trace: _Trace) -> Candidates | None:
        own = copy.copy(ctx)
        own.params = plan.params
        try:
            work = _timed(plan.source.recall(own, plan.limit))
            found, elapsed = await (asyncio.wait_for(work, self._timeout) if self._remote(plan) else work)
        except TimeoutError:
            trace.dropped[plan.name] = f"timeout: no answer within {self._timeout * 1000:.0f} ms"
            return None
        except Exception as exc:  # a store being down must not take the answer with it
            log.warning("recall.failed", source=plan.name, error=repr(exc))
            trace.dropped[plan.name] = drop_reason(exc)
            return None
        if elapsed > self._timeout:
            trace.dropped[plan.name] = f"timeout: answered after {elapsed * 1000:.1f} ms"
            return None
        trace.recall[plan.name] = {"candidates": len(found), "ms": round(elapsed * 1000, 3)}
        return found

    def _remote(self, plan: _Plan) -> bool:
        return self._vectors is not None and bool(getattr(plan.source, "remote", True))

    def _params_of(self, name: str) -> Mapping[str, Any]:
        return next((p.params for p in self._recall if p.name == name), {})

    def _now(self) -> datetime:
        return self.model.newest_event if self.model is not None else datetime.now(UTC)

    # --- filter and rank ------------------------------------------------------------------------------------

    def _stage_context(self, ctx: RecallContext) -> StageContext:
        return StageContext(request=ctx.request, catalogue=self.catalogue, params={}, config=self.config,
                            embeddings=self.index.embeddings, exclude_mask=ctx.exclude_mask, recall=ctx)

    def _allowed(self, idx: np.ndarray, stage: StageContext, filters: Sequence[_Stage],
                 excluded: np.ndarray) -> np.ndarray:
        """Return the indexes (of idx) that every filter keeps; inactive and excluded items never pass."""
        keep = ~excluded[idx]
        for f in filters:
            rows = np.flatnonzero(keep)
            if len(rows) == 0:
                break
            mask = np.asarray(f.impl.keep(idx[rows], replace(stage, params=f.params)), dtype=bool)
            keep[rows[~mask]] = False
        return idx[keep]

    def _filter(self, per_source: Mapping[str, Candidates], stage: StageContext, filters: Sequence[_Stage],
                excluded: np.ndarray) -> dict[str, Candidates]:
        if not per_source:
            return {}
        union = np.zeros(len(self.catalogue), dtype=bool)
        for found in per_source.values():
            union[found.idx] = True
        allowed = self._mask(self._allowed(np.flatnonzero(union), stage, filters, excluded))
        return {name: _subset(c, allowed[c.idx]) for name, c in per_source.items()}

    def _mask(self, idx: np.ndarray) -> np.ndarray:
        mask = np.zeros(len(self.catalogue), dtype=bool)
        mask[idx] = True
        return mask

    def _rank(self, per_source: Mapping[str, Candidates], stage: StageContext, ranker: _Stage | None = None) -> Ranked:
        ranker = ranker or self._ranker
        ranked = ranker.impl.rank(per_source, replace(stage, params=ranker.params))
        if len(ranked.idx) > self._max_candidates:
            ranked = ranked.take(np.arange(self._max_candidates))
        return ranked

    # --- fallback -------------------------------------------------------------------------------------------

    async def _fill(self, ranked: Ranked, ctx: RecallContext, stage: StageContext,
                    per_source: Mapping[str, Candidates], trace: _Trace) -> Ranked:
        """Fill a short list: fallback sources, then relaxed soft filters, then the most popular active items."""
        fallback = self.config["fallback"]
        min_items = int(fallback["minItems"])
        if len(ranked.idx) >= max(min_items, 1):
            return ranked
        target = max(min_items, ctx.request.limit)
        extra = await self._fallback_candidates(ctx, per_source, fallback["sources"], target, trace)
        ranked = self._append(ranked, extra, stage, self._filters, ctx.excluded, target)
        trace.fallback = {"sources": list(extra), "relaxed": [], "lastResort": False}
        if len(ranked.idx) < max(min_items, 1) and len(self._hard) < len(self._filters):
            relaxed = self._rank(self._filter({**per_source, **extra}, stage, self._hard, ctx.excluded), stage)
            ranked = _concat(ranked, _new_rows(relaxed, ranked.idx))
            ranked = self._append(ranked, extra, stage, self._hard, ctx.excluded, target)
            trace.fallback["relaxed"] = [f.name for f in self._filters if f not in self._hard]
        if len(ranked.idx) < max(min_items, 1):
            ranked = _concat(ranked, self._last_resort(ctx, stage, ranked, target))
            trace.fallback["lastResort"] = True
        return ranked

    async def _fallback_candidates(self, ctx: RecallContext, per_source: Mapping[str, Candidates],
                                   names: Sequence[str], target: int, trace: _Trace) -> dict[str, Candidates]:
        depth = max(2 * target, FALLBACK_DEPTH)
        plans = [_Plan(n, REGISTRY.get("recall", n)(), self._params_of(n), depth) for n in names
                 if n not in per_source]
        found = await self._recall_all(ctx, plans, trace)
        return {n: per_source[n] if n in per_source else found[n] for n in names if n in per_source or n in found}

    def _append(self, ranked: Ranked, extra: Mapping[str, Candidates], stage: StageContext,
                filters: Sequence[_Stage], excluded: np.ndarray, target: int) -> Ranked:
        """Append the fallback sources' allowed candidates, in source order, until the list holds target items."""
        for name, found in extra.items():
            if len(ranked.idx) >= target:
                break
            found = _subset(found, self._mask(self._allowed(found.idx, stage, filters, excluded))[found.idx])
            fresh = _subset(found, ~self._mask(ranked.idx)[found.idx])
            ranked = _concat(ranked, _tail(name, fresh, ranked, target - len(ranked.idx)))
        return ranked

    def _last_resort(self, ctx: RecallContext, stage: StageContext, ranked: Ranked, target: int) -> Ranked:
        """Return the most popular active items (newest first where nothing is known) not listed yet."""
        order = self.index.popular_order
        order = order[~ctx.excluded[order] & ~self._mask(ranked.idx)[order]][: target * RERANK_PAGES]
        allowed = self._mask(self._allowed(order, stage, self._hard, ctx.excluded))
        found = _subset(Candidates(order, self.index.popularity[order]), allowed[order])
        return _tail("popular", found, ranked, target - len(ranked.idx))

    def _same_categories(self, ctx: RecallContext, stage: StageContext, item_id: str, count: int,
                         ranked: Ranked) -> Ranked:
        labels = self.catalogue.categories[self.catalogue.index[item_id]]
        lists = [self.index.by_category[c] for c in labels if c in self.index.by_category]
        if not lists:
            return _empty()
        idx = np.unique(np.concatenate(lists))
        idx = idx[~ctx.excluded[idx] & ~np.isin(idx, ranked.idx)]
        idx = self._allowed(idx, stage, self._hard, ctx.excluded)
        idx = idx[np.argsort(-self.index.popularity[idx], kind="stable")]
        return _tail("affinity", Candidates(idx, self.index.popularity[idx]), ranked, count)

    # --- rerank and answer ----------------------------------------------------------------------------------

    def _rerank(self, ranked: Ranked, stage: StageContext, limit: int) -> Ranked:
        pool = min(len(ranked.idx), max(limit * RERANK_PAGES, limit + 30))
        ranked = ranked.take(np.arange(pool))
        for r in self._rerankers:
            ranked = r.impl.rerank(ranked, replace(stage, params=r.params))
        return ranked.take(np.arange(min(limit, len(ranked.idx))))

    def _result(self, ranked: Ranked, request: RecRequest, trace: _Trace) -> RecResult:
        ids = self.catalogue.item_ids
        items = [Recommendation(item_id=ids[i], score=float(s), sources=tuple(src))
                 for i, s, src in zip(ranked.idx.tolist(), ranked.scores.tolist(), ranked.sources, strict=True)]
        if not request.debug:
            return RecResult(items=items)
        debug = trace.report()
        debug["modelVersion"] = self.model.version if self.model is not None else None  # which version answered
        debug["items"] = [{"itemId": r.item_id, "score": r.score, "sources": _source_scores(ranked, row)}
                          for row, r in enumerate(items)]
        return RecResult(items=items, debug=debug)


def fitted_config(config: dict[str, Any], model: ScenarioModel | None) -> dict[str, Any]:
    """Return the config with the recall weights and request-time settings (`historyHalfLife`, `historyItems`) its
    model's training fitted (domain.learning.tuning): a source fitted to 0 is not run.

    The config serves as written when it sets `models.tune` false, or when its recall weights are no longer the ones
    the training started from: an edit since, or an experiment variant testing other weights, is served as asked
    until the next training fits again."""
    tuning = (model.info.get("tuning") or {}) if model is not None else {}
    fitted = tuning.get("weights") or {}
    given = {e["source"]: float(e.get("weight", 1.0)) for e in config["recall"]}
    if not fitted or not config["models"]["tune"] or given != tuning.get("given"):
        return config
    serving = tuning.get("serving") or {}
    weighted = [{**e, "weight": float(fitted.get(e["source"], e.get("weight", 1.0))),
                 "params": {**(e.get("params") or {}), **serving.get(e["source"], {})}} for e in config["recall"]]
    kept = [e for e in weighted if e["weight"] > 0]
    return {**config, "recall": kept} if kept else config


async def _timed(work: Awaitable[Candidates]) -> tuple[Candidates, float]:
    """Await a source and return its answer with the seconds it took itself (not its siblings' turns)."""
    start = time.perf_counter()
    found = await work
    return found, time.perf_counter() - start


def _stage(kind: str, entry: Mapping[str, Any]) -> _Stage:
    name = entry["name"]
    return _Stage(name, REGISTRY.get(kind, name)(), entry.get("params") or {})


def _subset(found: Candidates, mask: np.ndarray) -> Candidates:
    return Candidates(found.idx[mask], found.scores[mask])


def _empty() -> Ranked:
    return Ranked(np.empty(0, np.int64), np.empty(0, np.float32), [], {})


def _new_rows(ranked: Ranked, present: np.ndarray) -> Ranked:
    return ranked.take(np.flatnonzero(~np.isin(ranked.idx, present)))


def _tail(name: str, found: Candidates, above: Ranked, count: int) -> Ranked:
    """Return up to count candidates as ranked rows scored below every row of `above`, in their order."""
    n = min(count, len(found))
    if n <= 0:
        return _empty()
    base = float(above.scores.min()) if len(above.scores) and above.scores.min() > 0 else 1.0
    scores = (base * (n - np.arange(n)) / (n + 1)).astype(np.float32)
    return Ranked(idx=found.idx[:n].astype(np.int64), scores=scores, sources=[(name,)] * n,
                  source_scores={name: found.scores[:n].astype(np.float32)})


def _concat(a: Ranked, b: Ranked) -> Ranked:
    if len(b.idx) == 0:
        return a
    if len(a.idx) == 0:
        return b
    names = list(dict.fromkeys([*a.source_scores, *b.source_scores]))

    def column(r: Ranked, name: str) -> np.ndarray:
        return r.source_scores.get(name, np.full(len(r.idx), np.nan, dtype=np.float32))

    return Ranked(idx=np.concatenate([a.idx, b.idx]), scores=np.concatenate([a.scores, b.scores]),
                  sources=[*a.sources, *b.sources],
                  source_scores={n: np.concatenate([column(a, n), column(b, n)]) for n in names})


def _source_scores(ranked: Ranked, row: int) -> dict[str, float]:
    out = {}
    for name, column in ranked.source_scores.items():
        value = float(column[row])
        if not np.isnan(value):
            out[name] = round(value, 6)
    return out
