"""Train a scenario's model: only what its recall sources need, plus popularity (the last-resort fallback)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from domain.learning.content import document_tokens, train_content
from domain.learning.data import Interactions, TrainingData, build_interactions
from domain.learning.factors import train_als
from domain.learning.model import ScenarioModel
from domain.learning.popularity import decayed_popularity, trending_scores
from domain.learning.ranking import fit_ranker, split_gate, untrained
from domain.learning.sequences import SequenceModel
from domain.learning.similarity import ease, item_cf, item_users
from domain.learning.towers import TowerModel
from domain.learning.tuning import (
    MIN_USERS,
    TUNABLE,
    FusionInputs,
    Scorer,
    Tuning,
    ValidationSlice,
    alone,
    compare_champion,
    fit_weights,
    tune_value,
    with_params,
    with_weights,
    without_slice,
)
from domain.recommend.base import CatalogueView
from domain.recommend.engine import Engine
from domain.scenarios.config import validate_config

__all__ = ["TrainingData", "refit_similarity", "train_scenario_model"]

CONTENT_DIM = 32
SIMILARITY_MODELS = ("item_cf", "content")  # what a SIMILARITY job refits
TRAINED_SOURCES = ("item_cf", "ease", "als", "user_cf", "content", "sasrec", "two_tower")  # each one training step
Progress = Callable[[float, str], None]
SINGLES_CHECKED = 2  # sources alone scored through the whole engine (the best by the fusion-stage fit)
SEARCH_SHARE = 0.6  # of the tuning budget, for the sources' settings; the rest for the fusion weights
FUSION_MIN_S = 10.0


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
                         progress: Progress | None = None, champion: ScenarioModel | None = None) -> ScenarioModel:
    """Train what the config's recall sources need from the interactions and item documents; with `models.tune`
    on, first fit the sources' settings and the fusion weights on the data's validation slice, and score the serving
    `champion` there beside the new pipeline (domain.learning.tuning.compare_champion)
    (domain.learning.tuning); with `ranker: dcn`, also the learned ranker there (domain.learning.ranking)."""
    config = validate_config(config)  # defaults filled, so a partial config trains the same as its stored form
    sources = _sources(config)
    ranker = config["ranker"]["name"]
    tune = ranker == "dcn" or (bool(config["models"]["tune"]) and ranker == "fusion")  # dcn trains on the slice
    steps = _Steps(progress, 3 + tune + sum(name in sources for name in TRAINED_SOURCES))
    catalogue = steps.run("catalogue", lambda: CatalogueView.from_items(data.items))
    inter = steps.run("interactions", lambda: build_interactions(data, catalogue, config["interactionWeights"]))
    now = inter.newest if np.isfinite(inter.newest) else time.time()
    fit: _Fit | None = None
    if tune:
        fit = steps.run("tuning", lambda: _tune(data, inter, catalogue, config, sources, scenario_id, steps.within(),
                                                champion))
        if fit is not None:
            sources = {name: {**params, **fit.tuning.params.get(name, {})} for name, params in sources.items()}
    model = steps.run("popularity", lambda: _base_model(inter, catalogue, config, sources, now, scenario_id, version))
    _train_sources(model, inter, data, sources, steps, learned=fit.learned if fit is not None else None)
    if model.sasrec is None or not model.sasrec.reads_events:  # the history's events are kept for sasrec only
        model.history_types, model.history_values, model.event_types = None, None, ()
    model.info = {"seconds": steps.seconds, "users": len(inter.user_ids), "items": len(catalogue),
                  "pairs": int(inter.strength.nnz), "sources": sorted(sources), **model.info}
    if fit is not None:
        model.info["tuning"] = fit.tuning.as_dict()
    if ranker == "dcn":
        model.ranker, model.info["ranker"] = (fit.learned if fit is not None else {}).get("ranker") or untrained()
    steps.finish()
    return model


LEARNED = ("sasrec", "two_tower")  # trained once, by the tuning (they early-stop on its slice), then served as is
Learned = dict[str, tuple[Any, dict[str, Any]]]  # source -> (its export, its training info)


@dataclass
class _Fit:
    """The tuning's outcome, and the learned models it trained (on the data less the validation slice)."""

    tuning: Tuning
    learned: Learned


SOURCE_PARTS = {"ease": ("ease", "info.easeItems"), "als": ("als",), "item_cf": ("item_cf",),
                "user_cf": ("item_users",)}  # the model fields each tuned source trains


def _tune(data: TrainingData, inter: Interactions, catalogue: CatalogueView, config: Mapping,
          sources: Mapping[str, Mapping[str, Any]], scenario_id: str, progress: Progress | None,
          champion: ScenarioModel | None = None) -> _Fit | None:
    """Fit the sources' settings and the fusion weights on the validation slice; None when the data is too small."""
    started = time.monotonic()
    budget = float(config["models"]["tuningBudgetSeconds"])
    # The settings search stops at its share of the budget: the fusion fit after it matters most and is kept.
    search_deadline, deadline = started + SEARCH_SHARE * budget, started + budget
    report = progress or (lambda fraction, stage: None)
    held = ValidationSlice.of(inter, str(config["models"]["validation"]))
    if len(held.users) < MIN_USERS:
        return None
    gate = None
    if config["ranker"]["name"] == "dcn":  # the ranker's gate users stay out of every fit (domain.learning.ranking)
        held, gate = split_gate(held)
    tuning = Tuning(validation_users=len(held.users))
    fit_data = without_slice(data, inter, catalogue.index, held)
    fit_inter = build_interactions(fit_data, catalogue, config["interactionWeights"])
    fit_now = fit_inter.newest if np.isfinite(fit_inter.newest) else time.time()
    base = _base_model(fit_inter, catalogue, config, sources, fit_now, scenario_id, 0)
    scorer = Scorer(held, inter.user_ids, base, len(catalogue), _engine)
    chosen = {name: dict(params) for name, params in sources.items()}
    parts: dict[str, ScenarioModel] = {}
    searched = bool(config["models"]["tune"])  # off: only a dcn ranker is trained, on the config's own settings
    order = sorted((e for e in config["recall"] if e["source"] in TUNABLE and searched),
                   key=lambda e: -float(e.get("weight", 1)))
    for done, entry in enumerate(order):
        name = entry["source"]
        report(0.05 + 0.45 * done / max(len(order), 1), f"tuning {name}")
        parts[name] = _tune_source(name, chosen, config, base, fit_inter, fit_data, scorer, tuning,
                                   search_deadline)
    report(0.5, "learned models")
    fit_model = _fit_model(base, parts, fit_inter, fit_data, chosen)
    trained = time.monotonic()
    learned = _learned(fit_model, inter, fit_inter, chosen, held)
    deadline += time.monotonic() - trained  # the learned models keep their own budgets
    for name, (export, _) in learned.items():
        setattr(fit_model, name, export)
    report(0.8, "fusion weights")
    tuned = with_config_params(config, chosen)
    if searched:
        _fit_fusion(tuned, fit_model, scorer, tuning, deadline)
    if gate is not None:
        report(0.9, "ranker")
        learned["ranker"] = fit_ranker(with_weights(tuned, tuning.weights), fit_model, scorer, gate, fit_inter,
                                       data.served, tuning)
    tuning.params = {name: {key: chosen[name][key] for key, *_ in TUNABLE[name] if key in chosen[name]}
                     for name in parts}
    if champion is not None:
        report(0.95, "scoring the champion")
        tuning.champion = _against(champion, scorer, inter, config, tuning)
    tuning.seconds = time.monotonic() - started - sum(float(info.get("seconds") or 0.0) for _, info in learned.values())
    if time.monotonic() > deadline or tuning.stopped == "time budget":
        tuning.stopped = "time budget"
    report(1.0, "tuned")
    return _Fit(tuning, learned)


def _against(champion: ScenarioModel, scorer: Scorer, inter: Interactions, config: Mapping,
             tuning: Tuning) -> dict[str, Any]:
    """Return the champion's figures beside the new pipeline's on this slice, or why there are none."""
    if tuning.served is None:  # a learned ranker's figures are on its own gate users (domain.learning.ranking)
        return {"version": int(champion.version), "skipped": "the learned ranker is checked on its own users"}
    try:
        return compare_champion(scorer, inter, config, tuning.served, champion)
    except Exception as exc:  # noqa: BLE001 - an old artifact that no longer runs must not fail the new version
        return {"version": int(champion.version), "skipped": f"the champion did not run ({type(exc).__name__}: {exc})"}


def _engine(config: Mapping, model: ScenarioModel) -> Engine:
    return Engine(config, model)


def _tune_source(name: str, chosen: dict[str, dict[str, Any]], config: Mapping, base: ScenarioModel,
                 fit_inter: Interactions, fit_data: TrainingData, scorer: Scorer, tuning: Tuning,
                 deadline: float) -> ScenarioModel:
    """Search the source's settings one after the other; return the model part trained with the best ones."""
    trained: dict[tuple, ScenarioModel] = {}

    request_time = {param for param, *_, trained in TUNABLE[name] if not trained}

    def part(params: Mapping[str, Any]) -> ScenarioModel:
        key = tuple(sorted((k, v) for k, v in params.items() if k not in request_time))
        if key not in trained:
            model = replace(base, info=dict(base.info))
            _train_sources(model, fit_inter, fit_data, {name: params}, _Steps(None, 1))
            trained[key] = model
        return trained[key]

    trials: list[dict[str, Any]] = []
    for param, low, high, integer, _ in TUNABLE[name]:
        start = float(chosen[name].get(param) or _default(name, param))

        def score_of(value: float, param: str = param, integer: bool = integer) -> np.ndarray:
            params = {**chosen[name], param: int(value) if integer else value}
            scores = scorer.pipeline(alone(with_config_params(config, {name: params}), name), part(params))
            trials.append({"params": {param: params[param]}, "ndcg@10": round(scores.ndcg, 5)})
            return scores.per_user

        # On a random slice, where the order of a history means nothing, a history setting is simplest at its top:
        # every item read, none decayed (see tune_value). On a time-ordered one recency is the prior: no default.
        simplest = high if param in request_time and scorer.slice.how == "random" else None
        value, _, _ = tune_value(start, low, high, integer, score_of, deadline, grid=param in request_time,
                                 simplest=simplest)
        if time.monotonic() > deadline:
            tuning.stopped = "time budget"
        chosen[name][param] = int(value) if integer else value
    tuning.trials[name] = trials
    return part(chosen[name])


def _default(source: str, param: str) -> float:
    from domain.recommend.recall.context import HISTORY_CAP, HISTORY_HALF_LIFE
    from domain.scenarios.stages import RECALL_PARAMS

    default = RECALL_PARAMS[source]["properties"][param]["default"]
    if default is None:  # null: the engine's own
        return float({"historyHalfLife": HISTORY_HALF_LIFE, "historyItems": HISTORY_CAP}[param])
    return float(default)


def _fit_model(base: ScenarioModel, parts: Mapping[str, ScenarioModel], fit_inter: Interactions,
               fit_data: TrainingData, chosen: Mapping[str, Mapping[str, Any]]) -> ScenarioModel:
    """Return the fit part's model with every classical source: the tuned parts as trained, the others now."""
    model = replace(base, info=dict(base.info))
    rest = {name: params for name, params in chosen.items() if name not in parts and name not in LEARNED}
    _train_sources(model, fit_inter, fit_data, rest, _Steps(None, len(rest)))
    for name, part in parts.items():
        for attr in SOURCE_PARTS[name]:
            if attr.startswith("info."):
                model.info[attr[5:]] = part.info.get(attr[5:])
            else:
                setattr(model, attr, getattr(part, attr))
    return model


def _learned(fit_model: ScenarioModel, inter: Interactions, fit_inter: Interactions,
             chosen: Mapping[str, Mapping[str, Any]], held: ValidationSlice) -> Learned:
    """Train the learned models the config uses, once. On a time-ordered slice they train on all the data and
    early-stop on the slice; a random slice is not a tail of the sequences, so they then train on the data less the
    slice, holding out their own tail."""
    on, tails = (inter, held.held) if held.how == "temporal" else (fit_inter, None)
    out: Learned = {}
    if "sasrec" in chosen:
        out["sasrec"] = _sasrec_fit(on, chosen["sasrec"], tails)
    if "two_tower" in chosen:
        from domain.learning.two_tower import train_two_tower  # torch loads only where a scenario uses it

        out["two_tower"] = train_two_tower(fit_model.catalogue, on.history_indptr, on.history_items,
                                           chosen["two_tower"], fit_model.content, None, tails)
    return out


def _fit_fusion(config: Mapping, model: ScenarioModel, scorer: Scorer, tuning: Tuning, deadline: float) -> None:
    """Fit the fusion weights on the fit model, then keep the best of the config's, the fitted and each source
    alone, scored through the whole engine."""
    names = [e["source"] for e in config["recall"]]
    given = np.array([float(e.get("weight", 1.0)) for e in config["recall"]])
    inputs = FusionInputs.collect(scorer, config, model, names)
    singles = [np.eye(len(names))[i] * 3.0 for i in range(len(names))]
    # The ascent is cheap (seconds): it always gets FUSION_MIN_S, even when the settings search overran.
    fitted, _ = fit_weights(inputs, [given, *singles], max(deadline, time.monotonic() + FUSION_MIN_S))
    alone_ndcg = [inputs.ndcg(single) for single in singles]
    tuning.sources = {name: round(score, 5) for name, score in zip(names, alone_ndcg, strict=True)}
    by_alone = sorted(range(len(names)), key=lambda i: -alone_ndcg[i])
    candidates = {"config": given, "fitted": fitted,
                  **{f"single:{names[i]}": singles[i] for i in by_alone[:SINGLES_CHECKED]}}
    scores = {}
    always = {"config", "fitted", *(f"single:{names[i]}" for i in by_alone[:1])}
    for label, weights in candidates.items():
        if label not in always and time.monotonic() > deadline:
            continue
        scores[label] = scorer.pipeline(with_weights(config, dict(zip(names, weights.tolist(), strict=True))), model)
    best = max(scores, key=lambda label: (scores[label].ndcg, label == "config"))
    tuning.chosen = best
    tuning.pipelines = {label: round(s.ndcg, 5) for label, s in scores.items()}
    tuning.weights = {n: round(float(w), 4) for n, w in zip(names, candidates[best].tolist(), strict=True)}
    tuning.given = {n: float(w) for n, w in zip(names, given.tolist(), strict=True)}
    tuning.validation = scores[best].as_dict()
    tuning.served = scores[best]


def with_config_params(config: Mapping, chosen: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Return the config with each named recall source's params replaced by the chosen ones."""
    out = dict(config)
    for name, params in chosen.items():
        out = with_params(out, name, params)
    return out


def _sasrec_fit(inter: Interactions, params: Mapping[str, Any], held: np.ndarray | None,
                progress: Progress | None = None) -> tuple[SequenceModel | None, dict[str, Any]]:
    learners = int((np.diff(inter.history_indptr) >= 2).sum())
    need = int(params.get("minUsers") or _default("sasrec", "minUsers"))
    if learners < need:  # decided before torch loads: a small scenario's training stays light
        return None, {"epochs": 0, "seconds": 0.0,
                      "skipped": f"{learners} users with two items or more; minUsers is {need}"}
    from domain.learning.sasrec import EventColumns, train_sasrec  # torch loads only where a scenario uses it

    events = EventColumns(inter.history_types, inter.history_values, inter.event_types)
    return train_sasrec(inter.history_indptr, inter.history_items, params, progress, held, events)


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
    if "sasrec" in sources:  # the request's history passes them to a sasrec trained with event features
        model.history_types, model.history_values = inter.history_types, inter.history_values
        model.event_types = inter.event_types
    if "trending" in sources:
        window = sources["trending"].get("windowHours") or popularity_cfg.get("trendingWindowHours", 24.0)
        model.trending = trending_scores(inter.event_items, inter.event_times, len(catalogue), now, window)
        model.info["trendingWindowHours"] = window
    return model


def _train_sources(model: ScenarioModel, inter: Interactions, data: TrainingData,
                   sources: Mapping[str, Mapping[str, Any]], steps: _Steps,
                   learned: Learned | None = None) -> None:
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
    learned = learned or {}
    if "sasrec" in learned:  # trained by the tuning
        model.sasrec, model.info["sasrec"] = learned["sasrec"]
    elif "sasrec" in sources:
        model.sasrec = steps.run("sasrec", lambda: _sasrec(model, inter, sources["sasrec"], steps.within()))
    if "two_tower" in learned:
        model.two_tower, model.info["two_tower"] = learned["two_tower"]
    elif "two_tower" in sources:  # after content: the item tower reads the content embeddings when there are some
        model.two_tower = steps.run("two_tower", lambda: _two_tower(model, inter, sources["two_tower"],
                                                                    steps.within()))


def _sasrec(model: ScenarioModel, inter: Interactions, params: Mapping[str, Any],
            progress: Progress | None) -> SequenceModel | None:
    sequence, info = _sasrec_fit(inter, params, None, progress)
    model.info["sasrec"] = info
    return sequence


def _two_tower(model: ScenarioModel, inter: Interactions, params: Mapping[str, Any],
               progress: Progress | None) -> TowerModel | None:
    # Imported here: torch loads only in a process that trains a scenario using it (the training child).
    from domain.learning.two_tower import train_two_tower

    towers, info = train_two_tower(model.catalogue, inter.history_indptr, inter.history_items, params, model.content,
                                   progress)
    model.info["two_tower"] = info
    return towers


def refit_similarity(base: ScenarioModel, data: TrainingData, config: Mapping, *, version: int,
                     progress: Progress | None = None) -> ScenarioModel:
    """Refit the item-similarity models the config uses (item-CF neighbours, content embeddings) from current data.

    They are refitted over the base model's catalogue, so every other array (popularity, EASE, ALS, histories) keeps
    its index space and is copied from the base; items added since the base was trained join at the next training.
    """
    config = validate_config(config)
    fitted = (base.info.get("tuning") or {}).get("params") or {}  # the settings the base's training chose
    sources = {name: {**params, **fitted.get(name, {})} for name, params in _sources(config).items()}
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
