"""SASRec's event features: each history item's event type and value reach the model in training and in serving,
built from the stored interactions, the saved model and the live events in Redis, and a new event's type changes
the next answer."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from domain.learning.data import build_interactions
from domain.learning.forget import without_users
from domain.learning.model import ScenarioModel
from domain.learning.sasrec import EventColumns, Events, Histories
from domain.learning.sequences import value_buckets, value_edges
from domain.learning.train import TrainingData, train_scenario_model
from domain.realtime.keys import RECENT_KEPT, parse_recent, recent_event, recent_member
from domain.recommend.base import CatalogueView, RecRequest
from domain.recommend.history import request_history
from domain.recommend.recall import CatalogueIndex, RecallContext
from domain.recommend.recall.sasrec import SasrecSource
from domain.scenarios.config import build_config
from models.cache import UserState

T0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
N_ITEMS = 40
STEP = {"VIEW": 1, "LIKE": 3}  # the next item is 1 on after a VIEW, 3 on after a LIKE
FAST = {"maxEpochs": 60, "patience": 8, "timeBudgetSeconds": 120.0, "dim": 32, "dropout": 0.1,
        "learningRate": 0.005, "targetSpan": 1, "minItemUsers": 1, "minUsers": 1}


def items(n: int = N_ITEMS) -> list[dict]:
    return [{"item_id": f"i{k}", "title": f"item {k}", "categories": ["c"], "tags": [], "attributes": {},
             "published_at": datetime(2023, 1, 1, tzinfo=UTC), "status": "ACTIVE"} for k in range(n)]


def data(rows: list[tuple[str, str, str, float | None, float]], n: int = N_ITEMS) -> TrainingData:
    user_ids, item_ids, types, values, times = zip(*rows, strict=True)
    return TrainingData(items=items(n), user_ids=list(user_ids), item_ids=list(item_ids), types=list(types),
                        values=list(values), timestamps=np.array(times, dtype=np.float64))


def typed_walks(users: int = 150, length: int = 10) -> TrainingData:
    """Each user walks the items from a random start; the type of each event says how far the next item is."""
    rng = np.random.default_rng(5)
    rows = []
    for u in range(users):
        item = int(rng.integers(N_ITEMS))
        for j in range(length):
            kind = "VIEW" if rng.random() < 0.5 else "LIKE"
            rows.append((f"u{u}", f"i{item}", kind, None, T0 + u * 3600 + j * 60))
            item = (item + STEP[kind]) % N_ITEMS
    return data(rows)


def sasrec_config(**params: object) -> dict:
    recall = [{"source": "sasrec", "weight": 1.0, "limit": 50, "params": {**FAST, **params}}]
    return build_config("CUSTOM", {"recall": recall, "fallback": {"sources": ["popular"], "minItems": 1},
                                   "models": {"tune": False}})


@pytest.fixture(scope="module")
def typed() -> ScenarioModel:
    # Small batches: enough steps for the type rows, which start at zero, to matter within a few epochs.
    settings = sasrec_config(batchSize=16, maxEpochs=15, learningRate=0.01, timeBudgetSeconds=600.0)
    return train_scenario_model(typed_walks(), settings, scenario_id="s", version=1)


def top(model: ScenarioModel, history: list[str], events: list[tuple[str | None, float | None]]) -> str:
    request = RecRequest(user_id="new", limit=5, history=history, history_events=events, exclude=frozenset(history))
    ctx = RecallContext(request=request, index=CatalogueIndex.build(model, None), model=model, config={})
    found = asyncio.run(SasrecSource().recall(ctx, 5))
    return model.catalogue.item_ids[found.idx[0]]


# --- what training reads -----------------------------------------------------------------------------------------


def test_each_history_item_carries_the_type_and_value_of_its_newest_positive_event() -> None:
    rows = [("u", "i1", "VIEW", None, T0 + 1), ("u", "i1", "RATING", 4.0, T0 + 3),  # newest positive: the rating
            ("u", "i2", "WATCH", 120.0, T0 + 2), ("u", "i2", "DISLIKE", None, T0 + 4),  # the pair is negative: gone
            ("u", "i3", "VIEW", None, T0 + 5),
            ("u", "i4", "WATCH", 300.0, T0 + 6), ("u", "i4", "SKIP", None, T0 + 7),  # SKIP is no positive event
            ("v", "i3", "WATCH", 30.0, T0 + 1)]
    source = data(rows, 6)
    inter = build_interactions(source, CatalogueView.from_items(source.items),
                               {"VIEW": 1, "RATING": 2, "WATCH": 3, "DISLIKE": -5, "SKIP": -1})
    assert inter.user_ids == ["u", "v"]
    names = [inter.event_types[t] for t in inter.history_types.tolist()]
    assert inter.history_items.tolist() == [1, 3, 4, 3]
    assert names == ["RATING", "VIEW", "WATCH", "WATCH"]
    assert np.array_equal(inter.history_values, np.array([4.0, np.nan, 300.0, 30.0], np.float32), equal_nan=True)


def test_histories_read_only_the_features_that_vary_and_follow_the_items_they_keep() -> None:
    indptr, items = np.array([0, 3, 6]), np.array([5, 6, 7, 5, 6, 8])  # 7 and 8 have one user each
    one_type = EventColumns(np.zeros(6, np.int64), np.full(6, np.nan), ("VIEW",))
    assert Histories.build(indptr, items, 2, events=one_type).events is None  # the plain model

    rated = EventColumns(np.zeros(6, np.int64), np.array([1.0, 5.0, 3.0, 2.0, 4.0, 1.0]), ("RATING",))
    kept = Histories.build(indptr, items, 2, events=rated).events
    assert kept is not None and kept.types is None and kept.names == ()
    assert kept.buckets.tolist() == value_buckets(kept.edges, np.array([1.0, 5.0, 2.0, 4.0]), None).tolist()
    assert kept.buckets.tolist() == [1, 4, 2, 3]  # four distinct ratings kept: a bucket each, in order

    two = EventColumns(np.array([2, 0, 2, 2, 0, 1]), np.full(6, np.nan), ("LIKE", "SHARE", "VIEW"))
    mixed = Histories.build(indptr, items, 2, events=two).events
    assert mixed is not None and mixed.buckets is None
    assert mixed.names == ("LIKE", "VIEW")  # SHARE went with item 8: only the types of kept items get a row
    assert mixed.types.tolist() == [2, 1, 2, 1]


def test_value_buckets_are_quantiles_within_each_type_and_zero_without_a_value() -> None:
    rows = np.array([1, 1, 1, 1, 2, 2, 2, 2])
    values = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 200.0, 3000.0, 40000.0])
    edges = value_edges(values, rows, 2, 4)
    assert edges.shape == (3, 3)
    stars = value_buckets(edges, np.array([1.0, 2.0, 3.0, 4.0, np.nan]), np.array([1, 1, 1, 1, 1]))
    seconds = value_buckets(edges, np.array([10.0, 200.0, 3000.0, 40000.0]), np.array([2, 2, 2, 2]))
    assert stars.tolist() == [1, 2, 3, 4, 0] and seconds.tolist() == [1, 2, 3, 4]  # each scale spread over all
    # A type unknown to the model (row 0) is bucketed among every value.
    assert value_buckets(edges, np.array([1.0, 40000.0]), np.array([0, 0])).tolist() == [1, 4]


def test_training_windows_carry_each_input_items_event() -> None:
    columns = EventColumns(np.array([0, 1, 0, 1, 0, 1, 1]), np.array([1, 2, 3, 4, 5, 6, np.nan]), ("A", "B"))
    histories = Histories.build(np.array([0, 7]), np.arange(7), events=columns)  # the newest item is held out
    windows = histories.windows(max_len=4, span=1)
    assert windows.items.tolist() == [[2, 3, 4, 5, 6], [0, 0, 0, 1, 2]]  # 4 inputs, then the target
    assert windows.types.tolist() == [[2, 1, 2, 1], [0, 0, 0, 1]]  # type rows of the inputs, 0 on padding
    assert windows.buckets[0].tolist() == histories.events.buckets[1:5].tolist()
    assert windows.buckets[1].tolist() == [0, 0, 0, histories.events.buckets[0]] and windows.buckets.min() >= 0


# --- training and serving ----------------------------------------------------------------------------------------


def test_training_learns_what_an_event_type_says_about_the_next_item(typed: ScenarioModel) -> None:
    assert typed.sasrec is not None and typed.sasrec.reads_events
    assert typed.sasrec.event_types == ("LIKE", "VIEW") and typed.sasrec.bucket_embeddings is None
    assert typed.info["sasrec"]["eventFeatures"] == ["types"]
    # Without the types the next item is a coin toss between two: NDCG@10 about 0.8 at best.
    assert typed.info["sasrec"]["valNdcg10"] > 0.95
    history = ["i10", "i11", "i12"]
    assert top(typed, history, [("VIEW", None)] * 3) == "i13"
    assert top(typed, history, [("VIEW", None)] * 2 + [("LIKE", None)]) == "i15"


def test_the_same_walks_without_event_types_train_the_plain_model() -> None:
    plain = train_scenario_model(typed_walks(users=40), sasrec_config(eventTypes=False, maxEpochs=2),
                                 scenario_id="s", version=1)
    assert plain.sasrec is not None and not plain.sasrec.reads_events
    assert plain.info["sasrec"]["eventFeatures"] == []
    assert plain.history_types is None and plain.user_events("u1") == []  # nothing kept for the request


def test_values_are_read_when_asked_and_bucketed_at_serving_as_in_training(tmp_path: Path) -> None:
    walks = typed_walks(users=40)
    rated = data([(u, i, "RATING", float(1 + n % 5), t) for n, (u, i, t) in
                  enumerate(zip(walks.user_ids, walks.item_ids, walks.timestamps.tolist(), strict=True))])
    default = train_scenario_model(rated, sasrec_config(maxEpochs=1), scenario_id="s", version=1)
    assert not default.sasrec.reads_events and default.history_types is None  # values are off by default
    model = train_scenario_model(rated, sasrec_config(eventValues=True, maxEpochs=1), scenario_id="s", version=1)
    sequence = model.sasrec
    assert model.info["sasrec"]["eventFeatures"] == ["values"] and sequence.type_embeddings is None
    assert sequence.value_edges.shape == (1, 15) and sequence.bucket_embeddings.shape[0] == 17
    assert model.user_events("u0")[:2] == [("RATING", 1.0), ("RATING", 2.0)]
    idx = np.array([model.catalogue.index[i] for i in ("i1", "i2", "i3")])
    inputs = sequence.inputs(idx, ["RATING", None, "RATING"], np.array([1.0, 5.0, np.nan]))
    assert inputs.types is None and inputs.buckets.tolist() == [1, 5, 0]  # five stars, five buckets; 0: none
    model.save(tmp_path / "m")
    loaded = ScenarioModel.load(tmp_path / "m").sasrec
    assert np.array_equal(loaded.value_edges, sequence.value_edges)
    assert np.allclose(loaded.next_item_scores(idx, 40, ["RATING"] * 3, np.array([1.0, 5.0, 3.0])),
                       sequence.next_item_scores(idx, 40, ["RATING"] * 3, np.array([1.0, 5.0, 3.0])))


def test_serving_maps_a_type_the_model_never_saw_to_row_zero(typed: ScenarioModel) -> None:
    sequence = typed.sasrec
    assert sequence.type_rows(["LIKE", "VIEW", "PURCHASE", None]).tolist() == [1, 2, 0, 0]
    idx = np.array([typed.catalogue.index[i] for i in ("i10", "i11")])
    unknown = sequence.inputs(idx, ["PURCHASE", None], np.array([np.nan, np.nan]))
    assert unknown.types.tolist() == [0, 0]
    assert np.allclose(sequence.encode(unknown.items, unknown.types), sequence.encode(unknown.items, None))
    assert not np.allclose(sequence.encode(unknown.items, np.array([2, 1])), sequence.encode(unknown.items, None))


def test_a_request_without_events_reads_the_trained_users_own_events(typed: ScenarioModel) -> None:
    history, events = typed.user_history("u3"), typed.user_events("u3")
    assert len(events) == len(history) and {t for t, _ in events} <= {"VIEW", "LIKE"}
    assert typed.user_events("u3", 4) == events[-4:] and typed.user_events("nobody") == []


def test_a_saved_model_keeps_the_events_and_serves_the_same(typed: ScenarioModel, tmp_path: Path) -> None:
    typed.save(tmp_path / "m")
    loaded = ScenarioModel.load(tmp_path / "m")
    assert loaded.sasrec.event_types == typed.sasrec.event_types and loaded.event_types == typed.event_types
    assert loaded.user_events("u7") == typed.user_events("u7")
    history = ["i20", "i23"]
    assert top(loaded, history, [("LIKE", None)] * 2) == top(typed, history, [("LIKE", None)] * 2) == "i26"


def test_erasing_a_user_takes_their_events_with_their_history(typed: ScenarioModel) -> None:
    row = typed.user_index["u2"]
    kept = without_users(typed, np.array([row]))
    assert "u2" not in kept.user_index and len(kept.history_types) == len(kept.history_items)
    assert kept.user_events("u5") == typed.user_events("u5")


# --- the request's history -----------------------------------------------------------------------------------


def member(ts: int, item: str, kind: str, value: float | None = None, scenario: str = "s") -> str:
    return recent_member(ts, item, scenario, kind, f"e{ts}", value)


def state(seen: set[str], recent: list[str], *, pending: bool = False) -> UserState:
    return UserState(version=1, answer=None, seen=seen, recent=tuple(recent), pending=pending)


def test_a_recent_member_carries_the_events_value_and_older_members_still_parse() -> None:
    assert recent_event(member(5, "i1", "WATCH", 42.5)) == (5, "i1", "s", "WATCH", 42.5)
    assert parse_recent(member(5, "i1", "WATCH", 42.5)) == (5, "i1", "s", "WATCH")
    older = json.dumps([5, "i1", "s", "LIKE", "e5"])  # written before members held the value
    assert recent_event(older) == (5, "i1", "s", "LIKE", None)


def test_live_items_follow_the_trained_ones_in_time_order_with_their_events(typed: ScenarioModel) -> None:
    trained = typed.user_history("u1")
    recent = [member(30, "x50", "LIKE"), member(10, "x60", "VIEW", 3.0), member(20, "x70", "LIKE"),
              member(40, "x60", "LIKE", 9.0),  # x60 again, newer: its newest event places it
              member(50, "x80", "LIKE", scenario="other"),  # another scenario's event: not this history's
              member(5, trained[-1], "VIEW"),  # a trained item: stays where training put it
              "not a member"]  # nothing the consumer wrote: skipped
    history, events = request_history(typed, "u1", "s", state({"x50", "x60", "x70", trained[-1]}, sorted(recent)))
    assert history == [*trained, "x70", "x50", "x60"]
    assert events == [*typed.user_events("u1", 200), ("LIKE", None), ("LIKE", None), ("LIKE", 9.0)]


def test_live_items_the_consumer_has_not_applied_come_last_else_first(typed: ScenarioModel) -> None:
    trained = typed.user_history("u1")
    kept = [member(ts, f"x{ts}", "VIEW") for ts in range(RECENT_KEPT)]  # full: older events were dropped
    seen = {"x1", "x2", "zz"}  # zz has no recent event
    waiting, _ = request_history(typed, "u1", "s", state(seen, kept, pending=True))
    assert waiting[len(trained):] == ["x1", "x2", "zz"]  # events wait for the consumer: zz is the newest
    settled, events = request_history(typed, "u1", "s", state(seen, kept))
    assert settled[len(trained):] == ["zz", "x1", "x2"]  # all applied and some dropped: zz is older
    assert events[-3:] == [(None, None), ("VIEW", None), ("VIEW", None)]
    few, _ = request_history(typed, "u1", "s", state(seen, kept[:3]))
    assert few[len(trained):] == ["x1", "x2", "zz"]  # nothing was ever dropped: not applied yet, the newest
    alone, _ = request_history(None, "u1", "s", state({"b", "a"}, []))
    assert alone == ["a", "b"]  # no recent events (Redis fake, new user): id order, as before


def test_a_new_events_type_changes_the_models_input_and_answer(typed: ScenarioModel) -> None:
    trained = typed.user_history("u1")
    # Two live items in a row, neither they nor what may follow them among the user's training items.
    start = next(k for k in range(N_ITEMS) if not {f"i{(k + d) % N_ITEMS}" for d in range(5)} & set(trained))
    first, second = f"i{start}", f"i{(start + 1) % N_ITEMS}"
    answers = []
    for kind in ("VIEW", "LIKE"):
        recent = [member(1, first, "VIEW"), member(2, second, kind)]
        history, events = request_history(typed, "u1", "s", state({first, second, *trained}, recent))
        assert history == [*trained, first, second] and events[-2:] == [("VIEW", None), (kind, None)]
        answers.append(top(typed, history, events))
    assert answers == [f"i{(start + 2) % N_ITEMS}", f"i{(start + 4) % N_ITEMS}"]
