"""Fit a scenario's pipeline to its own data: each recall source's key hyperparameters, then the fusion weights.

A template's weights and settings were chosen on one dataset; on another the same blend can score well below its
best single source (the VLOG template on a random split of MovieLens falls short of plain EASE). So every training
with `models.tune` on (the default) fits them again on the scenario's own interactions:

1. **Validation slice.** Each user's newest positive items, a tenth of them (1 to 5; users with fewer than 3 items
   keep all), are held out: the time-ordered slice that SASRec also early-stops on, so no source is scored on an
   item it trained on. At most `VALIDATION_USERS` users are scored (a seeded sample). `models.validation: random`
   draws the held-out items at random from each history instead, for data whose order does not matter (ratings
   collected in bulk), or to mirror a random-split evaluation; a time-ordered slice there favours what is recent
   and misleads the fit.
2. **Hyperparameters**, source by source, heaviest weight first: each source alone, trained on the rest of the data,
   scored on the slice through the serving engine (NDCG@10); a walk on a log scale from the config's value (EASE
   lambda, ALS factors and regularisation, neighbours of item-CF and user-CF, and how fast the weight of older
   history items decays for each), keeping a move only when it gains.
3. **Fusion weights.** With the chosen settings, each validation user's filtered candidates and their normalised
   per-source scores are computed once; coordinate ascent over multiplicative steps of each weight (from the
   config's weights, and from each source alone) maximises NDCG@10 of the fused lists. This is the fusion ranker's
   own arithmetic (domain.recommend.rank), so the fit is exact for the ranking stage.
4. **Check through the whole pipeline.** The config's weights, the fitted ones and each source alone (its weight,
   the others 0) are scored through the complete engine, rerankers and fallback included; the best one is kept. A
   trained pipeline is therefore never worse on its validation slice than the config it started from or its best
   single source.

The classical sources are then trained on all the data with the chosen settings; SASRec is trained once, on all the
data less the slice (its early stopping needs the slice). The search stops early when `tuningBudgetSeconds` runs
out, keeping what it found.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from domain.learning.data import Interactions, TrainingData
from domain.recommend.base import Candidates, RecRequest
from domain.recommend.rank import DEFAULTS as FUSION_DEFAULTS
from domain.recommend.rank import candidate_matrix

HELD_SHARE = 0.1  # of a user's positive items held out, at least one and at most HELD_MAX
HELD_MAX = 5
HELD_MIN_ITEMS = 3  # a user with fewer items is trained on, not validated
MIN_USERS = 50  # with fewer validation users a fit is noise: the config's values are kept
K = 10  # NDCG@K is what is maximised
RECALL_AT = 20  # recall@20 is reported beside it
VALIDATION_USERS = 1000  # users scored; more sharpens little and costs every candidate setting
SEED = 7
MIN_GAIN = 1e-4  # a move must gain this much NDCG@10 to be kept (ties keep the config's value)
SE_RULE = 1.0  # ... and more than this many standard errors of the users' paired differences (see `improves`)
WEIGHT_STEPS = (0.0, 0.25, 0.5, 2.0, 4.0)  # multiplicative moves of one fusion weight
WEIGHT_ROUNDS = 3

# Each tunable source's key settings: (param, lowest, highest, integer?, trained?). The search walks from the
# current value by steps of SCALE while that gains, then refines by sqrt(SCALE), within [lowest, highest]. A setting
# read only at request time (how much the newest history items count) needs no retraining to try.
HISTORY = (("historyHalfLife", 0.5, 100000.0, False, False), ("historyItems", 50, 3200, True, False))
TUNABLE: dict[str, tuple[tuple[str, float, float, bool, bool], ...]] = {
    "ease": (("lambda", 1.0, 1e6, False, True), *HISTORY),
    "als": (("factors", 8, 256, True, True), ("regularization", 1e-4, 100.0, False, True), *HISTORY),
    "item_cf": (("neighbors", 5, 500, True, True), *HISTORY),
    "user_cf": (("neighbors", 5, 500, True, True), *HISTORY),
}
SCALE = 4.0


def validation_tails(lengths: np.ndarray) -> np.ndarray:
    """Return how many of each user's newest items are held out: a tenth, 1 to HELD_MAX, none for users with
    fewer than HELD_MIN_ITEMS items."""
    lengths = np.asarray(lengths, dtype=np.int64)
    held = np.clip(np.floor(lengths * HELD_SHARE), 1, HELD_MAX).astype(np.int64)
    held[lengths < HELD_MIN_ITEMS] = 0
    return held


@dataclass(frozen=True)
class ValidationSlice:
    """Each user's held-out items, in the row and catalogue index space of the full interactions."""

    held: np.ndarray  # int64 per user row: how many positive items are held out
    positions: np.ndarray  # int64 positions in history_items of every held-out item
    users: np.ndarray  # int64 rows scored (held > 0; a seeded sample of at most VALIDATION_USERS)
    targets: dict[int, frozenset[int]]  # scored row -> held-out catalogue indexes
    how: str  # temporal: each user's newest items; random: items drawn at random from the history

    @classmethod
    def of(cls, inter: Interactions, how: str = "temporal", max_users: int = VALIDATION_USERS,
           seed: int = SEED) -> ValidationSlice:
        indptr = inter.history_indptr
        lengths = np.diff(indptr)
        held = validation_tails(lengths)
        rng = np.random.default_rng(seed)
        if how == "temporal":
            rows = np.repeat(np.arange(len(held)), held)
            within = np.arange(int(held.sum())) - np.repeat(np.cumsum(held) - held, held)
            positions = np.repeat(indptr[1:], held) - 1 - within
        else:
            positions = np.concatenate([indptr[u] + rng.choice(lengths[u], held[u], replace=False)
                                        for u in np.flatnonzero(held)] or [np.empty(0, np.int64)])
            rows = np.repeat(np.flatnonzero(held), held[held > 0])
        users = np.flatnonzero(held > 0)
        if len(users) > max_users:
            users = np.sort(rng.choice(users, max_users, replace=False))
        items = inter.history_items[positions]
        by_user: dict[int, list[int]] = {}
        for row, item in zip(rows.tolist(), items.tolist(), strict=True):
            by_user.setdefault(row, []).append(item)
        targets = {int(u): frozenset(by_user[int(u)]) for u in users}
        return cls(held=held, positions=positions.astype(np.int64), users=users, targets=targets, how=how)

    def held_pairs(self, inter: Interactions) -> np.ndarray:
        """Return the held-out (user row, item) pairs as keys row * items + item."""
        rows = np.searchsorted(inter.history_indptr, self.positions, side="right") - 1
        return rows.astype(np.int64) * inter.shape[1] + inter.history_items[self.positions].astype(np.int64)


def without_slice(data: TrainingData, inter: Interactions, item_index: Mapping[str, int],
                  held: ValidationSlice) -> TrainingData:
    """Return the training data less every event of a held-out (user, item) pair."""
    rows = {u: r for r, u in enumerate(inter.user_ids)}
    n_items = inter.shape[1]
    keys = np.array([rows.get(u, -1) * n_items + item_index.get(i, -1) if u in rows and i in item_index else -1
                     for u, i in zip(data.user_ids, data.item_ids, strict=True)], dtype=np.int64)
    keep = ~np.isin(keys, held.held_pairs(inter))
    picked = np.flatnonzero(keep).tolist()
    return TrainingData(items=data.items, user_ids=[data.user_ids[k] for k in picked],
                        item_ids=[data.item_ids[k] for k in picked], types=[data.types[k] for k in picked],
                        values=[data.values[k] for k in picked], timestamps=np.asarray(data.timestamps)[keep])


def run_inline(work: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine that never suspends (the engine over in-memory sources, no vector store) to its end, without
    an event loop: training runs in a worker process, or inside the offline evaluation's own loop."""
    try:
        work.send(None)
    except StopIteration as done:
        return done.value
    work.close()
    raise RuntimeError("the engine awaited a store while fitting: tuning runs over in-memory sources only")


@dataclass
class Scores:
    """A pipeline's figures on the validation slice."""

    ndcg: float
    recall: float
    coverage: float
    per_user: np.ndarray = field(default_factory=lambda: np.zeros(0))  # NDCG@10 of each scored user, in order

    def as_dict(self) -> dict[str, float]:
        return {"ndcg@10": round(self.ndcg, 5), "recall@20": round(self.recall, 5),
                "coverage": round(self.coverage, 5)}


def ndcg_at(ranked: Sequence[int], relevant: AbstractSet[int], k: int = K) -> float:
    """Return binary NDCG@k of a ranked list (catalogue indexes)."""
    gains = sum(1.0 / math.log2(r + 2) for r, i in enumerate(ranked[:k]) if i in relevant)
    ideal = sum(1.0 / math.log2(r + 2) for r in range(min(k, len(relevant))))
    return gains / ideal if ideal else 0.0


@dataclass
class Scorer:
    """Score pipelines (an engine per config) on the validation slice, from the fit part's histories."""

    slice: ValidationSlice
    user_ids: Sequence[str]
    model_for_history: Any  # the model trained on the fit part (its user histories are the inputs)
    catalogue_size: int
    engine_factory: Callable[[Mapping, Any], Any]

    def requests(self, limit: int, users: np.ndarray | None = None) -> Iterable[tuple[int, RecRequest]]:
        model = self.model_for_history
        for row in (self.slice.users if users is None else users).tolist():
            user = self.user_ids[row]
            history = model.user_history(user)
            yield row, RecRequest(user_id=user, limit=limit, history=history, exclude=frozenset(history),
                                  now=model.newest_event, history_events=model.user_events(user))

    def pipeline(self, config: Mapping, model: Any, users: np.ndarray | None = None) -> Scores:
        """Return NDCG@10, recall@20 and coverage of the config's engine over the model (on `users`, a subset of
        the slice's, when given). The model may be another version's: its lists are read by item id."""
        engine = self.engine_factory(config, model)
        index = self.model_for_history.catalogue.index  # the slice's index space, whatever the model's
        per_user: list[float] = []
        recall = 0.0
        shown: set[int] = set()
        for row, request in self.requests(RECALL_AT, users):
            result = run_inline(engine.recommend(request))
            ranked = [index.get(r.item_id, -1) for r in result.items]
            relevant = self.slice.targets[row]
            per_user.append(ndcg_at(ranked, relevant))
            recall += len(relevant.intersection(ranked[:RECALL_AT])) / len(relevant)
            shown.update(ranked[:K])
        n = max(len(per_user), 1)
        shown.discard(-1)
        return Scores(sum(per_user) / n, recall / n, len(shown) / max(self.catalogue_size, 1),
                      np.array(per_user, dtype=np.float64))

    def unseen_by(self, inter: Interactions, newest: float) -> np.ndarray:
        """Return the scored users all of whose held-out items came after `newest` (epoch seconds): a model trained
        on data up to then never saw them."""
        rows = np.searchsorted(inter.history_indptr, self.slice.positions, side="right") - 1
        earliest = np.full(len(inter.user_ids), np.inf)
        np.minimum.at(earliest, rows, inter.history_times[self.slice.positions])
        return self.slice.users[earliest[self.slice.users] > newest]


def compare_champion(scorer: Scorer, inter: Interactions, config: Mapping, served: Scores,
                     champion: Any) -> dict[str, Any]:
    """Score the serving champion on this training's validation slice beside the new pipeline, for promotion.

    Only the users whose held-out items all came after the champion's newest training event count: the champion
    trained on the others' held-out items, which would flatter it (a retraining on little new data would then never
    win). Both pipelines are scored on those users, the champion as it serves (its fitted settings, this config);
    with fewer than MIN_USERS of them nothing is compared and promotion falls back to the figures each version
    recorded on its own slice."""
    newest = champion.newest_event.timestamp()
    users = scorer.unseen_by(inter, newest)
    out: dict[str, Any] = {"version": int(champion.version), "users": len(users)}
    if len(users) < MIN_USERS:
        return {**out, "skipped": f"{len(users)} validation users acted only after the champion's data "
                                  f"(at least {MIN_USERS} are needed)"}
    position = {int(u): k for k, u in enumerate(scorer.slice.users.tolist())}
    new = served.per_user[[position[int(u)] for u in users.tolist()]]
    old = scorer.pipeline(config, champion, users)
    return {**out, "ndcg@10": round(float(new.mean()), 5), "champion_ndcg@10": round(old.ndcg, 5)}


@dataclass
class FusionInputs:
    """Every validation user's filtered candidates as one padded array: users x candidates x sources."""

    names: list[str]
    normalised: np.ndarray  # float32 users x width x sources (0 beyond a user's candidates)
    valid: np.ndarray  # bool users x width
    relevant: np.ndarray  # bool users x width
    ideal: np.ndarray  # float64 per user: IDCG@K of their held-out items
    users: int  # every scored user, also those with no relevant candidate (they add 0)

    @classmethod
    def collect(cls, scorer: Scorer, config: Mapping, model: Any, names: list[str]) -> FusionInputs:
        engine = scorer.engine_factory(config, model)
        params = {**FUSION_DEFAULTS, **{k: v for k, v in (config["ranker"].get("params") or {}).items()
                                        if v is not None}}
        how = "rrf" if params["method"] == "rrf" else str(params["normalize"])
        rows: list[tuple[np.ndarray, np.ndarray, float]] = []
        users = 0
        for row, request in scorer.requests(K):
            users += 1
            per_source: dict[str, Candidates] = run_inline(engine.recall_filtered(request))
            matrix = candidate_matrix(per_source, how, float(params["rrfK"]), size=len(engine.catalogue))
            relevant = np.isin(matrix.idx, list(scorer.slice.targets[row]))
            if not relevant.any():
                continue  # nothing to gain for any weights: counted in `users`, adds 0
            full = np.zeros((len(matrix.idx), len(names)), np.float32)
            for c, name in enumerate(matrix.names):
                full[:, names.index(name)] = matrix.normalised[:, c]
            ideal = sum(1.0 / math.log2(r + 2) for r in range(min(K, len(scorer.slice.targets[row]))))
            rows.append((full, relevant, ideal))
        width = max((len(r[0]) for r in rows), default=0)
        normalised = np.zeros((len(rows), width, len(names)), np.float32)
        valid = np.zeros((len(rows), width), bool)
        relevant = np.zeros((len(rows), width), bool)
        for u, (full, rel, _) in enumerate(rows):
            normalised[u, : len(full)] = full
            valid[u, : len(full)] = True
            relevant[u, : len(full)] = rel
        return cls(names, normalised, valid, relevant, np.array([r[2] for r in rows]), users)

    def ndcg(self, weights: np.ndarray) -> float:
        """Return the mean NDCG@K of the lists the fusion ranker would build with these weights."""
        return float(self.per_user(weights).sum() / max(self.users, 1))

    def per_user(self, weights: np.ndarray) -> np.ndarray:
        """Return each scored user's NDCG@K with these weights (0 for those with no relevant candidate)."""
        out = np.zeros(max(self.users, len(self.ideal)), dtype=np.float64)
        if len(self.ideal) == 0:
            return out
        scores = np.where(self.valid, self.normalised @ weights.astype(np.float32), -np.inf)
        k = min(K, scores.shape[1])
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        hits = np.take_along_axis(self.relevant & self.valid, top, axis=1)
        gains = (hits / np.log2(np.arange(2, k + 2))).sum(axis=1)
        out[: len(self.ideal)] = gains / self.ideal
        return out


def fit_weights(inputs: FusionInputs, starts: Iterable[np.ndarray], deadline: float) -> tuple[np.ndarray, float]:
    """Return the best weights found by coordinate ascent from each start, and their NDCG@K."""
    best_w, best = None, -1.0
    for start in starts:
        w, score = _ascend(inputs, np.asarray(start, dtype=np.float64), deadline)
        if best_w is None or score > best + MIN_GAIN:
            best_w, best = w, score
    assert best_w is not None
    return best_w, best


def _ascend(inputs: FusionInputs, w: np.ndarray, deadline: float) -> tuple[np.ndarray, float]:
    scores = inputs.per_user(w)
    for _ in range(WEIGHT_ROUNDS):
        moved = False
        for s in range(len(w)):
            if time.monotonic() > deadline:
                return w, inputs.ndcg(w)
            positive = w[w > 0]
            scale = float(positive.mean()) if len(positive) else 1.0
            options = [w[s] * m for m in WEIGHT_STEPS] if w[s] > 0 else [scale * m for m in (0.1, 0.25, 1.0)]
            for value in options:
                trial = w.copy()
                trial[s] = value
                if not (trial > 0).any():
                    continue
                got = inputs.per_user(trial)
                if improves(got, scores):
                    w, scores, moved = trial, got, True
        if not moved:
            break
    top = float(w.max())
    return (w / top * 3.0 if top > 0 else w), inputs.ndcg(w)  # the scale is free: keep weights readable (the largest 3)


@dataclass
class Tuning:
    """What the fit chose and why, recorded on the model version."""

    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # source -> settings chosen
    sources: dict[str, float] = field(default_factory=dict)  # source -> NDCG@10 alone (chosen settings)
    trials: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # source -> [{params, ndcg}]
    weights: dict[str, float] = field(default_factory=dict)  # source -> fused weight served
    given: dict[str, float] = field(default_factory=dict)  # source -> the config's weight it started from
    chosen: str = "config"  # config | fitted | single:<source>
    pipelines: dict[str, float] = field(default_factory=dict)  # candidate -> NDCG@10 through the whole engine
    validation: dict[str, float] = field(default_factory=dict)  # the served pipeline's figures
    validation_users: int = 0
    seconds: float = 0.0
    stopped: str = "done"
    served: Scores | None = field(default=None, repr=False)  # the served pipeline's per-user figures (not recorded)
    champion: dict[str, Any] = field(default_factory=dict)  # the serving champion on this slice (compare_champion)

    def serving(self) -> dict[str, dict[str, Any]]:
        """Return the fitted settings read at request time (serving applies them; the others are in the model)."""
        request_time = {name: {p for p, *_, trained in TUNABLE[name] if not trained} for name in TUNABLE}
        return {source: {k: v for k, v in params.items() if k in request_time.get(source, ())}
                for source, params in self.params.items()}

    def as_dict(self) -> dict[str, Any]:
        return {"params": self.params, "sources": self.sources, "trials": self.trials, "weights": self.weights,
                "given": self.given, "serving": self.serving(),
                "chosen": self.chosen, "pipelines": self.pipelines, "validation": self.validation,
                "validationUsers": self.validation_users, "seconds": round(self.seconds, 3),
                "stopped": self.stopped, **({"champion": self.champion} if self.champion else {})}


def improves(new: float | np.ndarray, old: float | np.ndarray) -> bool:
    """Return whether a setting scored `new` beats one scored `old` by more than noise.

    With per-user NDCG@10 (arrays over the same validation users) the mean gain must exceed SE_RULE standard errors
    of the users' paired differences: the one-standard-error rule (Hastie, Tibshirani & Friedman, The Elements of
    Statistical Learning, 2nd ed., section 7.10), which keeps the value a search started from unless a move's gain is
    beyond what the slice's sampling noise gives. Without it a walk over a few hundred users drifts on noise (a
    random slice of ml-latest-small moved `historyHalfLife` to 1 item on gains smaller than their standard error).
    Plain scores only need to gain MIN_GAIN."""
    new_a, old_a = np.atleast_1d(np.asarray(new, dtype=np.float64)), np.atleast_1d(np.asarray(old, dtype=np.float64))
    gain = float(new_a.mean() - old_a.mean())
    if new_a.shape != old_a.shape or len(new_a) < 2:
        return gain > MIN_GAIN
    differences = new_a - old_a
    error = float(differences.std(ddof=1)) / math.sqrt(len(differences))
    return gain > max(MIN_GAIN, SE_RULE * error)


def log_grid(low: float, high: float, integer: bool, step: float = SCALE) -> list[float]:
    """Return values from low to high (both included) a factor `step` apart."""
    values, v = [], low
    while v < high:
        values.append(float(round(v)) if integer else float(v))
        v *= step
    return sorted({*values, float(round(high)) if integer else float(high)})


def tune_value(value: float, low: float, high: float, integer: bool,
               score_of: Callable[[float], float | np.ndarray], deadline: float,
               grid: bool = False, simplest: float | None = None) -> tuple[float, float, list[tuple[float, float]]]:
    """Return the best value found from `value`, its mean score, and every (value, mean score) tried.

    The walk takes steps of SCALE in the direction that gains for as long as it gains, then steps of sqrt(SCALE)
    around the best. With `grid` (a setting read at request time, cheap to try) it first scores the whole range a
    factor SCALE apart, so that a better value beyond a flat stretch is found. A move is kept only when it
    `improves` on the current best (per-user scores: beyond one standard error).

    `simplest` names the value that adds no structure to the model (for the history settings on a random slice:
    every item, no decay). Of the grid's values within one standard error of its best, the one nearest it is kept:
    the one-standard-error rule as ESL 7.10 states it, the most parsimonious model within noise of the best. A
    slice of 1-5 held-out items a user cannot tell a heavy user's 800 newest items from all of them (their NDCG@10
    barely moves), but a random test split of ml-latest-small can: all of them scored 0.3706 there against 0.3675.
    Where order matters (a time-ordered slice) there is no such default and the walk keeps its start."""
    def clip(v: float) -> float:
        v = min(max(v, low), high)
        return float(round(v)) if integer else float(v)

    tried = {clip(value): score_of(clip(value))}
    best = clip(value)
    mean = lambda v: float(np.mean(tried[v]))  # noqa: E731
    if grid:
        for candidate in log_grid(low, high, integer, SCALE * SCALE):
            if candidate not in tried and time.monotonic() <= deadline:
                tried[candidate] = score_of(candidate)
        leader = max(tried, key=mean)
        if simplest is not None:
            near = [v for v in tried if v == leader or not improves(tried[leader], tried[v])]
            best = min(near, key=lambda v: abs(math.log(max(v, 1e-9) / max(clip(simplest), 1e-9))))
        elif improves(tried[leader], tried[best]):
            best = leader
    for factor in (SCALE, math.sqrt(SCALE)):
        moved = True
        while moved and time.monotonic() <= deadline:
            moved = False
            for candidate in (clip(best / factor), clip(best * factor)):
                if candidate not in tried and time.monotonic() <= deadline:
                    tried[candidate] = score_of(candidate)
            leader = max(tried, key=mean)
            if leader != best and improves(tried[leader], tried[best]):
                best, moved = leader, True
    return best, mean(best), sorted((v, mean(v)) for v in tried)


def with_weights(config: Mapping, weights: Mapping[str, float]) -> dict[str, Any]:
    """Return a copy of the config whose recall weights are `weights` (sources not named keep theirs); a source
    weighted 0 leaves the recall list, as serving does (domain.recommend.engine.fitted_config)."""
    out = copy.deepcopy(dict(config))
    out["recall"] = [{**e, "weight": float(weights.get(e["source"], e.get("weight", 1.0)))} for e in out["recall"]
                     if weights.get(e["source"], 1.0) > 0]
    return out


def with_params(config: Mapping, source: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Return a copy of the config with one recall source's params updated."""
    out = copy.deepcopy(dict(config))
    for entry in out["recall"]:
        if entry["source"] == source:
            entry["params"] = {**(entry.get("params") or {}), **params}
    return out


def alone(config: Mapping, source: str) -> dict[str, Any]:
    """Return the config with only one recall source, no rerank and popularity as fallback: the source's own
    ranking, as the hyperparameter search scores it."""
    out = copy.deepcopy(dict(config))
    out["recall"] = [dict(e) for e in out["recall"] if e["source"] == source]
    out["rerank"] = []
    return out
