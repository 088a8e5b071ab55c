"""Training: interaction weighting, popularity in event time, neighbour models, factors, embeddings, storage."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from domain.learning.content import document_tokens, train_content
from domain.learning.data import TrainingData, build_interactions
from domain.learning.model import ScenarioModel
from domain.learning.popularity import decayed_popularity, trending_scores
from domain.learning.similarity import ease, item_cf
from domain.learning.tables import DenseTable
from domain.learning.train import train_scenario_model
from domain.recommend.base import CatalogueView
from domain.scenarios.config import DEFAULT_WEIGHTS, build_config

HOUR = 3600.0
T0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
CLUSTERS = {"action": "a", "drama": "d", "kids": "k"}


def items() -> list[dict]:
    """Three categories of ten items; item 0 of each is its most popular."""
    out = []
    for category, prefix in CLUSTERS.items():
        for n in range(10):
            out.append({"item_id": f"{prefix}{n}", "title": f"{category} story {n}", "categories": [category],
                        "tags": [f"{category}-tag", f"tag{n % 3}"], "attributes": {"durationSeconds": 100},
                        "published_at": datetime(2023, 1, 1 + n, tzinfo=UTC), "status": "ACTIVE"})
    return out


def synthetic(extra: list[tuple[str, str, str, float | None, float]] = ()) -> TrainingData:
    """Ten users per category; each watches items 0..5 of their category in order (0 first), one per minute."""
    rows = []
    for u in range(30):
        prefix = "adk"[u // 10]
        for j in range(6):
            item = (j + u) % 6 if u % 10 else j  # shuffled order, same set of items 0..5
            rows.append((f"u{u}", f"{prefix}{item}", "WATCH", 100.0, T0 + u * 600 + j * 60))
    rows += list(extra)
    users, item_ids, types, values, times = zip(*rows, strict=True)
    return TrainingData(items=items(), user_ids=list(users), item_ids=list(item_ids), types=list(types),
                        values=list(values), timestamps=np.array(times, dtype=np.float64))


def config(*sources: str, **params: dict) -> dict:
    recall = [{"source": s, "weight": 1.0, "limit": 50, "params": params.get(s, {})} for s in sources]
    return build_config("CUSTOM", {"recall": recall, "fallback": {"sources": ["popular"], "minItems": 5}})


def one(user: str, item: str, kind: str, value: float | None, t: float) -> TrainingData:
    return TrainingData(items=items(), user_ids=[user], item_ids=[item], types=[kind], values=[value],
                        timestamps=np.array([t]))


# --- interaction weights ------------------------------------------------------------------------------------


def test_ratings_weigh_by_value_and_watches_by_completion():
    data = TrainingData(
        items=items(), user_ids=["u", "u", "u", "u"], item_ids=["a0", "a1", "a2", "a3"],
        types=["RATING", "RATING", "WATCH", "WATCH"], values=[5.0, 1.0, 100.0, 10.0],
        timestamps=np.array([T0, T0 + 1, T0 + 2, T0 + 3]),
    )
    catalogue = CatalogueView.from_items(data.items)
    inter = build_interactions(data, catalogue, DEFAULT_WEIGHTS)
    row = inter.strength.toarray()[0]
    a0, a1, a2, a3 = (row[catalogue.index[i]] for i in ("a0", "a1", "a2", "a3"))
    assert a0 == pytest.approx(DEFAULT_WEIGHTS["RATING"])  # the best rating counts fully
    assert 0 < a1 < a0  # a poor rating still says "watched", with less weight
    assert a2 == pytest.approx(DEFAULT_WEIGHTS["WATCH"])  # watched to the end (100 of 100 seconds)
    assert 0 < a3 < a2  # a tenth of the clip


def test_negative_interactions_cancel_positive_ones_and_unknown_items_are_dropped():
    data = TrainingData(
        items=items(), user_ids=["u", "u", "u", "u"], item_ids=["a0", "a0", "a1", "missing"],
        types=["VIEW", "DISLIKE", "LIKE", "LIKE"], values=[None, None, None, None],
        timestamps=np.array([T0, T0 + 1, T0 + 2, T0 + 3]),
    )
    catalogue = CatalogueView.from_items(data.items)
    inter = build_interactions(data, catalogue, DEFAULT_WEIGHTS)
    items_of_u = {catalogue.item_ids[i] for i in inter.strength[0].indices}
    assert items_of_u == {"a1"}


def test_history_is_oldest_first_by_each_items_latest_event():
    data = TrainingData(items=items(), user_ids=["u"] * 3, item_ids=["a0", "a1", "a0"],
                        types=["VIEW"] * 3, values=[None] * 3, timestamps=np.array([T0, T0 + 10, T0 + 20]))
    model = train_scenario_model(data, config("popular"), scenario_id="s", version=1)
    assert model.user_history("u") == ["a1", "a0"]
    assert model.user_history("stranger") == []


# --- popularity and trending --------------------------------------------------------------------------------


def test_quiet_scenario_keeps_its_all_time_popularity():
    counts = np.array([100.0, 50.0, 1.0])
    # One recent event on the least popular item: too little recent traffic to overturn the all-time ranking.
    popularity = decayed_popularity(np.array([2]), np.array([T0]), counts, T0, half_life_hours=24)
    assert list(np.argsort(-popularity)) == [0, 1, 2]


def test_busy_scenario_follows_its_recent_shares():
    counts = np.array([10_000.0, 10_000.0, 10_000.0])
    items = np.repeat([0, 1, 2], [100, 5000, 100])  # item 1 dominates the last hours
    times = np.full(len(items), T0)
    popularity = decayed_popularity(items, times, counts, T0 + HOUR, half_life_hours=24)
    assert int(np.argmax(popularity)) == 1
    assert popularity[1] > 5 * popularity[0]


def test_trending_finds_items_rising_over_their_baseline():
    # Item 0 steady (1 event per window), item 1 silent then 6 events in the current window.
    items = np.array([0] * 8 + [1] * 6)
    times = np.array([T0 - (w * 10 + 5) * HOUR for w in range(8)] + [T0 - h * HOUR for h in range(6)])
    scores = trending_scores(items, times, 3, T0, window_hours=10)
    assert scores[1] > 0
    assert scores[0] == 0 and scores[2] == 0


# --- neighbour models ---------------------------------------------------------------------------------------


def test_item_cf_neighbours_are_co_occurring_items_and_never_the_item_itself():
    model = train_scenario_model(synthetic(), config("item_cf"), scenario_id="s", version=1)
    cat = model.catalogue
    neighbours, scores = model.item_cf.row(cat.index["a0"])
    ids = [cat.item_ids[i] for i in neighbours]
    assert set(ids) == {"a1", "a2", "a3", "a4", "a5"}
    assert np.all(np.diff(scores) <= 0)
    assert "a0" not in ids


def test_ease_learns_item_weights_within_the_cap():
    model = train_scenario_model(synthetic(), config("ease", ease={"lambda": 1.0, "maxItems": 10}),
                                 scenario_id="s", version=1)
    cat = model.catalogue
    assert model.info["easeItems"] == 10
    assert len(model.ease.vocabulary) == 10 and model.ease.weights.shape == (10, 10)
    neighbours, _ = model.ease.row(cat.index["d0"])
    assert {cat.item_ids[i][0] for i in neighbours} == {"d"}


def test_item_cf_and_ease_tables_hold_k_neighbours_at_most():
    data = synthetic()
    inter = build_interactions(data, CatalogueView.from_items(data.items), DEFAULT_WEIGHTS)
    assert item_cf(inter.binary(), 2).k == 2
    table, kept = ease(inter.binary(), 10.0, 1000, k=3, dense_max=5)
    assert table.k == 3 and kept == 18  # the 18 items anyone watched


def test_ease_keeps_its_negative_weights_whole_or_pruned_by_magnitude():
    binary = sp.random(60, 12, density=0.3, format="csr", random_state=np.random.default_rng(3), dtype=np.float32)
    binary.data[:] = 1.0
    n_items = binary.shape[1]
    dense, kept = ease(binary, 2.0, 1000)
    assert isinstance(dense, DenseTable) and dense.weights.shape == (kept, kept)
    assert (dense.weights < 0).any()  # items seldom found together predict each other negatively
    pruned, _ = ease(binary, 2.0, 1000, k=4, dense_max=5)
    assert (pruned.scores < 0).any()
    # Each pruned row keeps the 4 weights of largest magnitude of the whole matrix's row.
    for position, item in enumerate(dense.vocabulary.tolist()):
        whole = dense.weights[position]
        strongest = np.sort(np.abs(whole))[-4:]
        kept_row = pruned.scores[item][pruned.neighbors[item] >= 0]
        np.testing.assert_allclose(np.sort(np.abs(kept_row)), strongest, rtol=1e-5)
    # A user's scores are the weighted sum of their items' rows, negative weights included.
    rows = dense.vocabulary[:3].astype(np.int64)
    weights = np.array([0.2, 0.5, 1.0], dtype=np.float32)
    scores = dense.gather(rows, weights, n_items)
    np.testing.assert_allclose(scores[dense.vocabulary], weights @ dense.weights[:3], rtol=1e-6)
    assert not dense.gather(np.array([10_000]), np.ones(1, np.float32), n_items).any()
    # A long history is summed a chunk of rows at a time: the same sums.
    rng = np.random.default_rng(4)
    big = DenseTable(np.arange(0, 300, 2, dtype=np.int32), rng.normal(size=(150, 150)).astype(np.float32))
    rows, weights = rng.choice(np.arange(0, 300, 2), 140, replace=False), rng.random(140).astype(np.float32)
    expected = np.zeros(300, np.float32)
    expected[big.vocabulary] = weights @ big.weights[rows // 2]
    np.testing.assert_allclose(big.gather(rows, weights, 300), expected, rtol=1e-4, atol=1e-4)


def test_als_fold_in_solves_the_users_normal_equations():
    model = train_scenario_model(synthetic(), config("als", als={"factors": 4, "iterations": 5}),
                                 scenario_id="s", version=1)
    als = model.als
    items_, weights = np.array([0, 1, 2]), np.array([1.0, 0.5, 0.25], dtype=np.float32)
    x = als.fold_in(items_, weights)
    y = als.item_factors[items_].astype(np.float64)
    c = als.confidence * weights
    a = als.gram + (y.T * (c - 1)) @ y + als.regularization * np.eye(len(x))
    np.testing.assert_allclose(a @ x, y.T @ c, rtol=1e-3, atol=1e-4)


# --- content ------------------------------------------------------------------------------------------------


def test_content_embeds_new_items_into_the_training_space():
    docs = items()
    content = train_content([document_tokens(d) for d in docs], dim=8)
    again = content.embed(docs[:3])
    np.testing.assert_allclose(again, content.embeddings[:3], atol=1e-5)
    same_category = float(content.embeddings[0] @ content.embeddings[1])
    other_category = float(content.embeddings[0] @ content.embeddings[10])
    assert same_category > other_category


# --- the model ----------------------------------------------------------------------------------------------


def test_training_builds_only_what_the_sources_need():
    model = train_scenario_model(synthetic(), config("popular", "item_cf"), scenario_id="s", version=3)
    assert model.item_cf is not None and model.popularity.shape == (30,)
    assert model.ease is None and model.als is None and model.content is None and model.item_users is None
    assert model.version == 3 and model.newest_event == datetime.fromtimestamp(synthetic().timestamps.max(), UTC)
    everything = config("trending", "ease", "als", "user_cf", "vector")
    full = train_scenario_model(synthetic(), everything, scenario_id="s", version=1)
    assert full.trending is not None and full.ease is not None and full.als is not None
    assert full.item_users is not None and full.content is not None  # vector searches the content space


def test_a_scenario_without_interactions_trains_every_source_empty():
    empty = TrainingData(items=items(), user_ids=[], item_ids=[], types=[], values=[], timestamps=np.array([]))
    model = train_scenario_model(empty, config("trending", "item_cf", "ease", "als", "user_cf", "content"),
                                 scenario_id="s", version=1)
    assert model.user_ids == [] and model.info["easeItems"] == 0
    assert not (model.ease.neighbors >= 0).any() and not (model.item_cf.neighbors >= 0).any()
    assert model.item_embedding("a0") is not None  # content needs items only


def test_progress_is_reported_up_to_done():
    seen: list[tuple[float, str]] = []
    train_scenario_model(synthetic(), config("item_cf"), scenario_id="s", version=1,
                         progress=lambda f, stage: seen.append((f, stage)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and seen[-1] == (1.0, "done")
    assert "item_cf" in {stage for _, stage in seen}


def test_a_saved_model_loads_equal_and_a_resave_replaces_it_atomically(tmp_path: Path):
    sources = config("trending", "item_cf", "ease", "als", "user_cf", "content")
    model = train_scenario_model(synthetic(), sources, scenario_id="s", version=2)
    path = tmp_path / "models" / "s-2"
    model.save(path)
    model.save(path)  # replacing an existing directory leaves no temporary siblings behind
    assert [p.name for p in path.parent.iterdir()] == ["s-2"]
    loaded = ScenarioModel.load(path)
    assert loaded.version == 2 and loaded.newest_event == model.newest_event
    assert loaded.catalogue.item_ids == model.catalogue.item_ids
    assert loaded.user_history("u3") == model.user_history("u3")
    np.testing.assert_array_equal(loaded.ease.weights, model.ease.weights)
    np.testing.assert_array_equal(loaded.ease.vocabulary, model.ease.vocabulary)
    np.testing.assert_array_equal(loaded.item_users.toarray(), model.item_users.toarray())
    np.testing.assert_allclose(loaded.item_embedding("k2"), model.item_embedding("k2"))
    assert loaded.als.confidence == model.als.confidence
    assert loaded.nbytes() == model.nbytes() > 0
    assert not any(p.suffix == ".pkl" for p in path.iterdir())


def test_item_embedding_is_none_without_content_or_for_unknown_items():
    model = train_scenario_model(synthetic(), config("content"), scenario_id="s", version=1)
    assert model.item_embedding("a0") is not None
    assert model.item_embedding("nope") is None
    plain = train_scenario_model(synthetic(), config("popular"), scenario_id="s", version=1)
    assert plain.item_embedding("a0") is None
