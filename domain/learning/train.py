"""Train a scenario's model: only what its recall sources need, plus popularity (the last-resort fallback)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from domain.learning.content import document_tokens, train_content
from domain.learning.data import Interactions, TrainingData, build_interactions
from domain.learning.factors import train_als
from domain.learning.model import ScenarioModel
from domain.learning.popularity import decayed_popularity, trending_scores
from domain.learning.sequences import SequenceModel
from domain.learning.similarity import ease, item_cf, item_users
from domain.recommend.base import CatalogueView
from domain.scenarios.config import validate_config

__all__ = ["TrainingData", "refit_similarity", "train_scenario_model"]

CONTENT_DIM = 32
SIMILARITY_MODELS = ("item_cf", "content")  # what a SIMILARITY job refits
TRAINED_SOURCES = ("item_cf", "ease", "als", "user_cf", "content", "sasrec")  # each one training step
Progress = Callable[[float, str], None]


class _Steps:
    """Report progress between training steps and record each step's seconds."""

    def __init__(self, progress: Progress | None, total: int) -> None:
        self._progress, self._total, self._done = progress, max(total, 1), 0
        self.seconds: dict[str, float] = {}

    def run(self, name: str, work: Callable[[], Any]) -> Any:
        if self._progress is not None:
            self._progress(self._done / self._total, name)
        start = time.perf_counter()
        result = work()
        self.seconds[name] = round(time.perf_counter() - start, 3)
        self._done += 1
        return result

    def within(self) -> Progress | None:
        """Return a progress callback for the running step: its own 0..1 moves the job across the step's share."""
        if self._progress is None:
            return None
        report, done, total = self._progress, self._done, self._total
        return lambda fraction, stage: report((done + min(max(fraction, 0.0), 1.0)) / total, stage)

    def finish(self) -> None:
        if self._progress is not None:
            self._progress(1.0, "done")


def train_scenario_model(data: TrainingData, config: Mapping, *, scenario_id: str, version: int,
                         progress: Progress | None = None) -> ScenarioModel:
    """Train what the config's recall sources need from the interactions and item documents."""
    config = validate_config(config)  # defaults filled, so a partial config trains the same as its stored form
    sources = _sources(config)
    steps = _Steps(progress, 3 + sum(name in sources for name in TRAINED_SOURCES))
    catalogue = steps.run("catalogue", lambda: CatalogueView.from_items(data.items))
    inter = steps.run("interactions", lambda: build_interactions(data, catalogue, config["interactionWeights"]))
    now = inter.newest if np.isfinite(inter.newest) else time.time()
    model = steps.run("popularity", lambda: _base_model(inter, catalogue, config, sources, now, scenario_id, version))
    _train_sources(model, inter, data, sources, steps)
    model.info = {"seconds": steps.seconds, "users": len(inter.user_ids), "items": len(catalogue),
                  "pairs": int(inter.strength.nnz), "sources": sorted(sources), **model.info}
    steps.finish()
    return model


def _sources(config: Mapping) -> dict[str, Mapping[str, Any]]:
    """Return the params of each recall source the config uses (fallback sources included)."""
    sources = {s["source"]: s.get("params") or {} for s in config["recall"]}
    for name in config.get("fallback", {}).get("sources", ()):
        sources.setdefault(name, {})
    if "vector" in sources:
        sources.setdefault("content", {})  # the user vector lives in the content embedding space
    return sources


def _base_model(inter: Interactions, catalogue: CatalogueView, config: Mapping, sources: Mapping[str, Mapping],
                now: float, scenario_id: str, version: int) -> ScenarioModel:
    popularity_cfg = config.get("popularity", {})
    half_life = sources.get("popular", {}).get("halfLifeHours") or popularity_cfg.get("halfLifeHours", 72.0)
    counts = np.asarray((inter.strength > 0).sum(axis=0)).ravel().astype(np.float32)
    model = ScenarioModel(
        scenario_id=scenario_id, version=version, trained_at=datetime.now(UTC),
        newest_event=datetime.fromtimestamp(now, UTC), catalogue=catalogue, user_ids=inter.user_ids,
        history_indptr=inter.history_indptr, history_items=inter.history_items, counts=counts,
        popularity=decayed_popularity(inter.event_items, inter.event_times, counts, now, half_life),
        info={"popularityHalfLifeHours": half_life},
    )
    if "trending" in sources:
        window = sources["trending"].get("windowHours") or popularity_cfg.get("trendingWindowHours", 24.0)
        model.trending = trending_scores(inter.event_items, inter.event_times, len(catalogue), now, window)
        model.info["trendingWindowHours"] = window
    return model


def _train_sources(model: ScenarioModel, inter: Interactions, data: TrainingData,
                   sources: Mapping[str, Mapping[str, Any]], steps: _Steps) -> None:
    n_items = len(model.catalogue)
    if "item_cf" in sources:
        k = int(sources["item_cf"].get("neighbors", 50))
        model.item_cf = steps.run("item_cf", lambda: item_cf(inter.binary(), k))
    if "ease" in sources:
        params = sources["ease"]
        model.ease, kept = steps.run("ease", lambda: ease(inter.binary(), float(params.get("lambda", 500.0)),
                                                          int(params.get("maxItems", 20000))))
        model.info["easeItems"] = kept
    if "als" in sources:
        params = sources["als"]
        model.als = steps.run("als", lambda: train_als(
            inter.strength, factors=int(params.get("factors", 64)), iterations=int(params.get("iterations", 15)),
            regularization=float(params.get("regularization", 0.01))))
    if "user_cf" in sources:
        model.item_users = steps.run("user_cf", lambda: item_users(
            inter.history_indptr, inter.history_items, inter.history_times, n_items))
    if "content" in sources:
        docs = [document_tokens(i) for i in data.items]
        model.content = steps.run("content", lambda: train_content(docs, CONTENT_DIM))
    if "sasrec" in sources:
        model.sasrec = steps.run("sasrec", lambda: _sasrec(model, inter, sources["sasrec"], steps.within()))


def _sasrec(model: ScenarioModel, inter: Interactions, params: Mapping[str, Any],
            progress: Progress | None) -> SequenceModel | None:
    # Imported here: torch loads only in a process that trains a scenario using it (the training child).
    from domain.learning.sasrec import train_sasrec

    sequence, info = train_sasrec(inter.history_indptr, inter.history_items, params, progress)
    model.info["sasrec"] = info
    return sequence


def refit_similarity(base: ScenarioModel, data: TrainingData, config: Mapping, *, version: int,
                     progress: Progress | None = None) -> ScenarioModel:
    """Refit the item-similarity models the config uses (item-CF neighbours, content embeddings) from current data.

    They are refitted over the base model's catalogue, so every other array (popularity, EASE, ALS, histories) keeps
    its index space and is copied from the base; items added since the base was trained join at the next training.
    """
    config = validate_config(config)
    sources = _sources(config)
    refitted = [name for name in SIMILARITY_MODELS if name in sources]
    steps = _Steps(progress, 1 + len(refitted))
    catalogue = base.catalogue
    inter = steps.run("interactions", lambda: build_interactions(data, catalogue, config["interactionWeights"]))
    model = replace(base, version=version, trained_at=datetime.now(UTC), info=dict(base.info))
    if "item_cf" in sources:
        k = int(sources["item_cf"].get("neighbors", 50))
        model.item_cf = steps.run("item_cf", lambda: item_cf(inter.binary(), k))
    if "content" in sources:
        docs = [document_tokens(item) for item in _catalogue_documents(catalogue, data.items)]
        model.content = steps.run("content", lambda: train_content(docs, CONTENT_DIM))
    model.info.update(seconds=steps.seconds, refitted=refitted, basedOn=base.version,
                      pairs=int(inter.strength.nnz))
    steps.finish()
    return model


def _catalogue_documents(catalogue: CatalogueView, items: list[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Return an item document per catalogue row: the current one, or what the catalogue kept of a removed item."""
    current = {d["item_id"]: d for d in items}
    return [
        current.get(item_id) or {"title": catalogue.titles[i], "categories": catalogue.categories[i],
                                 "tags": catalogue.tags[i], "attributes": catalogue.attributes[i],
                                 "published_at": _epoch(catalogue.published_at[i])}
        for i, item_id in enumerate(catalogue.item_ids)
    ]


def _epoch(value: float) -> float | None:
    return float(value) if np.isfinite(value) else None
