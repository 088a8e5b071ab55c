"""Fit the learned ranker (`ranker: {name: dcn}`) during training, on the tuning's validation slice and on the lists
served to users, and serve it only where it beats fusion.

0. **Gate users.** A fifth of the validation users (seeded) is set aside before anything is fitted: the sources'
   settings, the fusion weights and the ranker are all fitted on the other users (`split_gate`), so the gate
   compares two rankings neither of which has seen its users.
1. **Lists.** For every other validation user the serving engine over the model of the fit part (the data less the
   slice) recalls and filters the candidates, exactly as a request would; their feature rows
   (domain.recommend.features) form one list whose positives are the user's held-out items and whose negatives are
   the other candidates. Where the scenario has impressions with attributed events (`TrainingData.served`), each
   served list with a positive becomes a list too: its items are the candidates (features computed for the user's
   history before the serve time, at that time), positive where the attributed events' interaction weights sum
   above 0 (a CLICK, a LIKE, a long WATCH; not a SKIP).
2. **Training** (domain.learning.dcn, where torch loads) on those lists, early-stopped on the lists of a fifth of
   these users (seeded), the others training.
3. **Gate.** The gate users are scored through the whole engine (filters, rerankers, fallback) twice: with the
   trained ranker and with fusion (the fitted weights). The ranker is served only when its NDCG@10 is higher by more
   than noise (one standard error of the users' paired differences: domain.learning.tuning.improves); otherwise the
   version serves fusion, so a version with `ranker: dcn` is never worse there than the fusion it started from, and
   costs no serving time for a gain the slice cannot tell from chance. Both figures and the choice are recorded
   (`model.info["ranker"]`), and the served one is the version's validation figure (`metrics`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np

from domain.learning.data import Interactions, ServedLists
from domain.learning.tuning import MIN_USERS, SEED, K, Scorer, Tuning, ValidationSlice, improves, run_inline
from domain.recommend.base import RecRequest, StageContext
from domain.recommend.features import FeatureSpec, ItemTable, request_features
from domain.recommend.rank import CandidateMatrix, candidate_matrix
from domain.recommend.recall import RecallContext

Progress = Callable[[float, str], None]
GATE_SHARE = 0.2  # of the validation users: the gate, kept out of every fit (settings, weights, ranker)
STOP_SHARE = 0.2  # of the other validation users: the ranker's early stopping; the rest train it
MIN_LISTS = 20  # fewer training lists: nothing to learn from, fusion serves
SERVED_LISTS = 2000  # served lists with a positive turned into training lists, newest first
SERVED_SHARE = 0.3  # of the ranker's time budget, for computing the served lists' features


@dataclass(frozen=True)
class RankingLists:
    """Lists of candidates as feature rows, concatenated: list k is rows[offsets[k]:offsets[k + 1]]."""

    rows: np.ndarray  # float32 rows x features
    labels: np.ndarray  # bool per row: a positive
    offsets: np.ndarray  # int64 lists + 1
    ideal: np.ndarray  # float64 per list: IDCG@K of all its relevant items (also those no source recalled)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @classmethod
    def of(cls, lists: Sequence[tuple[np.ndarray, np.ndarray, float]], width: int) -> RankingLists:
        """Return the lists given as (rows, labels, ideal) triples."""
        lengths = [len(rows) for rows, _, _ in lists]
        return cls(np.concatenate([r for r, _, _ in lists]) if lists else np.zeros((0, width), np.float32),
                   np.concatenate([y for _, y, _ in lists]) if lists else np.zeros(0, bool),
                   np.r_[0, np.cumsum(lengths)].astype(np.int64), np.array([i for _, _, i in lists], np.float64))

    def standardised(self, mean: np.ndarray, scale: np.ndarray) -> RankingLists:
        """Return the lists with every row standardised ((x - mean) * scale)."""
        return replace(self, rows=((self.rows - mean) * scale).astype(np.float32))


def ideal_dcg(relevant: int) -> float:
    """Return IDCG@K of a list with that many relevant items."""
    return sum(1.0 / math.log2(r + 2) for r in range(min(K, relevant)))


@dataclass
class ListCollector:
    """Candidates and their feature rows for one request, as the serving engine would rank them."""

    engine: Any  # domain.recommend.engine.Engine over the fit part's model
    model: Any
    spec: FeatureSpec
    table: ItemTable

    @classmethod
    def build(cls, config: Mapping, model: Any, engine_factory: Callable[[Mapping, Any], Any]) -> ListCollector:
        engine = engine_factory(config, model)
        spec = FeatureSpec.of(engine.config, engine.catalogue)
        table = ItemTable.build(engine.catalogue, engine.index.counts, engine.index.popularity, spec.attributes)
        return cls(engine, model, spec, table)

    def candidates(self, request: RecRequest, extra: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Return the request's filtered candidates (with the `extra` catalogue indexes added) and their rows."""
        engine = self.engine
        per_source = run_inline(engine.recall_filtered(request))
        matrix = candidate_matrix(per_source, "minmax", size=len(engine.catalogue))
        if extra is not None:
            matrix = with_rows(matrix, extra)
        recall = RecallContext(request=request, index=engine.index, model=self.model, config=engine.config)
        stage = StageContext(request=request, catalogue=engine.catalogue, params={}, config=engine.config,
                             recall=recall)
        return matrix.idx, request_features(per_source, matrix, stage, self.spec, self.table)


def with_rows(matrix: CandidateMatrix, extra: np.ndarray) -> CandidateMatrix:
    """Return the matrix with rows added for the catalogue indexes in `extra` that it lacks (recalled by none)."""
    idx = np.union1d(matrix.idx, extra)
    at = np.searchsorted(idx, matrix.idx)
    normalised = np.zeros((len(idx), len(matrix.names)), np.float32)
    raw = np.full((len(idx), len(matrix.names)), np.nan, np.float32)
    normalised[at], raw[at] = matrix.normalised, matrix.raw
    return CandidateMatrix(idx, matrix.names, normalised, raw)


def validation_lists(collector: ListCollector, scorer: Scorer) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Return a list per scored user whose candidates hold one of their held-out items."""
    out = []
    for row, request in scorer.requests(K):
        targets = scorer.slice.targets[row]
        idx, rows = collector.candidates(request)
        labels = np.isin(idx, list(targets))
        if labels.any():
            out.append((rows, labels, ideal_dcg(len(targets))))
    return out


def served_lists(collector: ListCollector, served: ServedLists, inter: Interactions, weights: Mapping[str, float],
                 deadline: float) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Return a list per served list with a positive (newest first, at most SERVED_LISTS), its items as candidates."""
    catalogue = collector.engine.catalogue
    rows_of = {u: r for r, u in enumerate(inter.user_ids)}
    out = []
    for k in np.argsort(-served.served_at, kind="stable").tolist():
        if len(out) >= SERVED_LISTS or time.monotonic() > deadline:
            break
        idx, labels = _served_labels(served.items[k], served.events[k], catalogue.index, weights)
        if not labels.any() or len(idx) < 2:
            continue
        at = float(served.served_at[k])
        history, events = _history_before(inter, rows_of.get(served.user_ids[k]), at)
        ids = [catalogue.item_ids[i] for i in history.tolist()]
        request = RecRequest(user_id=served.user_ids[k], limit=K, history=ids, exclude=frozenset(ids),
                             now=datetime.fromtimestamp(at, UTC), history_events=events)
        candidates, rows = collector.candidates(request, extra=idx)
        out.append((rows[np.searchsorted(candidates, idx)], labels, ideal_dcg(int(labels.sum()))))
    return out


def _served_labels(items: Iterable[str], events: Iterable[tuple[str, str]], index: Mapping[str, int],
                   weights: Mapping[str, float]) -> tuple[np.ndarray, np.ndarray]:
    """Return a served list's distinct known items (ascending catalogue indexes) and whether each is a positive."""
    idx = np.unique(np.array([index[i] for i in items if i in index], dtype=np.int64))
    total: dict[int, float] = {}
    for item, kind in events:
        if item in index:
            total[index[item]] = total.get(index[item], 0.0) + float(weights.get(kind, 0.0))
    return idx, np.array([total.get(i, 0.0) > 0 for i in idx.tolist()], dtype=bool)


def _history_before(inter: Interactions, row: int | None,
                    at: float) -> tuple[np.ndarray, list[tuple[str | None, float | None]]]:
    """Return a user's positive items (oldest first) whose newest event came before `at` (catalogue indexes), with
    each one's event type and value (as serving passes them to sasrec)."""
    if row is None:
        return np.empty(0, np.int64), []
    start, end = inter.history_indptr[row], inter.history_indptr[row + 1]
    before = inter.history_times[start:end] < at
    names, values = inter.event_types, inter.history_values[start:end][before].tolist()
    events = [(names[t], None if v != v else v)  # v != v: NaN, no value
              for t, v in zip(inter.history_types[start:end][before].tolist(), values, strict=True)]
    return np.asarray(inter.history_items[start:end][before], dtype=np.int64), events


def untrained() -> tuple[None, dict[str, Any]]:
    """Return what a training too small for its validation slice records: no ranker, fusion serves."""
    return None, {"name": "dcn", "chosen": "fusion",
                  "skipped": f"fewer than {MIN_USERS} validation users: fusion serves, with the config's weights"}


def split_gate(held: ValidationSlice) -> tuple[ValidationSlice, ValidationSlice]:
    """Return the slice of the users every fit may read and the gate's (a seeded GATE_SHARE of the scored users)."""
    gate = _share(held.users, GATE_SHARE, SEED)
    return _only(held, np.setdiff1d(held.users, gate)), _only(held, gate)


def fit_ranker(config: Mapping, model: Any, scorer: Scorer, gate: ValidationSlice, inter: Interactions,
               served: ServedLists | None, tuning: Tuning,
               progress: Progress | None = None) -> tuple[Any, dict[str, Any]]:
    """Train the config's dcn ranker on the fit part's model (`inter`: its interactions) and the scorer's users;
    return its export (None when fusion is to serve) and what happened (`chosen`, both pipelines' figures on the
    gate users). The tuning's validation figures become the gate's figures of the ranking served."""
    started = time.monotonic()
    params = config["ranker"]["params"]  # defaults filled in by the config's validation
    collector = ListCollector.build(config, model, scorer.engine_factory)
    train, stop, counts = _lists(collector, scorer, served, inter, config["interactionWeights"],
                                 started + SERVED_SHARE * float(params["timeBudgetSeconds"]))
    base = {"name": "dcn", "lists": counts, "features": collector.spec.names}
    gated = replace(scorer, slice=gate)
    if len(train) < MIN_LISTS or not len(stop):
        tuning.validation = gated.pipeline(config, model).as_dict()
        return None, {**base, "chosen": "fusion", "seconds": round(time.monotonic() - started, 3),
                      "skipped": f"{counts} lists with a positive; at least {MIN_LISTS} to train and 1 to stop on"}
    from domain.learning.dcn import train_dcn  # torch loads only where a scenario uses the ranker

    export, info = train_dcn(train, stop, collector.spec, params, progress)
    fusion, learned = gated.pipeline(config, model), gated.pipeline(config, replace(model, ranker=export))
    chosen = "dcn" if improves(learned.per_user, fusion.per_user) else "fusion"
    tuning.validation = (learned if chosen == "dcn" else fusion).as_dict()
    return (export if chosen == "dcn" else None), {
        **base, **info, "chosen": chosen, "trainSeconds": info["seconds"],
        "seconds": round(time.monotonic() - started, 3),
        "gate": {"users": len(gate.users), "dcn": learned.as_dict(), "fusion": fusion.as_dict()}}


def _lists(collector: ListCollector, scorer: Scorer, served: ServedLists | None, inter: Interactions,
           weights: Mapping[str, float], deadline: float) -> tuple[RankingLists, RankingLists, dict[str, int]]:
    """Return the training lists (validation users', then served lists), the early-stopping lists (a seeded
    STOP_SHARE of the validation users') and how many there are of each."""
    stopping = _share(scorer.slice.users, STOP_SHARE, SEED + 1)
    train = validation_lists(collector, _restricted(scorer, np.setdiff1d(scorer.slice.users, stopping)))
    from_served = served_lists(collector, served, inter, weights, deadline) if served else []
    stop = validation_lists(collector, _restricted(scorer, stopping))
    counts = {"validation": len(train), "served": len(from_served), "stop": len(stop)}
    width = len(collector.spec.names)
    return RankingLists.of(train + from_served, width), RankingLists.of(stop, width), counts


def _share(users: np.ndarray, share: float, seed: int) -> np.ndarray:
    """Return a seeded `share` of the users (at least one), ascending."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(users, min(len(users), max(1, round(share * len(users)))), replace=False))


def _only(held: ValidationSlice, users: np.ndarray) -> ValidationSlice:
    return replace(held, users=users, targets={int(u): held.targets[int(u)] for u in users.tolist()})


def _restricted(scorer: Scorer, users: np.ndarray) -> Scorer:
    return replace(scorer, slice=_only(scorer.slice, users))
