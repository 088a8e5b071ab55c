"""Self-tuning at training: the validation slice, the fusion-weight fit, the settings search and the guarantee that a
trained pipeline is never worse on its slice than its config's weights or its best single source."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import numpy as np
import pytest

from domain.learning.data import TrainingData, build_interactions
from domain.learning.train import refit_similarity, train_scenario_model
from domain.learning.tuning import (
    MIN_USERS,
    FusionInputs,
    Scorer,
    ValidationSlice,
    fit_weights,
    improves,
    run_inline,
    tune_value,
    with_weights,
    without_slice,
)
from domain.recommend.base import CatalogueView
from domain.recommend.engine import Engine
from domain.scenarios.config import build_config

T0 = 1_700_000_000.0
CLUSTERS, PER_CLUSTER = 4, 15


def items() -> list[dict]:
    return [{"item_id": f"i{n}", "title": f"item {n}", "categories": [f"c{n % 3}"], "tags": [], "attributes": {},
             "published_at": datetime(2023, 1, 1, tzinfo=UTC), "status": "ACTIVE"}
            for n in range(CLUSTERS * PER_CLUSTER)]


def clustered(users: int = 160, length: int = 14, seed: int = 3, catalogue: list[dict] | None = None) -> TrainingData:
    """Each user views items of one taste cluster in random order (and a few random others), over time."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(users):
        cluster = u % CLUSTERS
        own = rng.permutation(PER_CLUSTER)[:length] + cluster * PER_CLUSTER
        for j, item in enumerate(own.tolist()):
            if rng.random() < 0.15:
                item = int(rng.integers(CLUSTERS * PER_CLUSTER))
            rows.append((f"u{u}", f"i{item}", "VIEW", None, T0 + u * 600 + j * 60))
    user_ids, item_ids, types, values, times = zip(*rows, strict=True)
    return TrainingData(items=catalogue or items(), user_ids=list(user_ids), item_ids=list(item_ids), types=list(types),
                        values=list(values), timestamps=np.asarray(times, dtype=np.float64))


def config(**models: object) -> dict:
    return build_config("CUSTOM", {
        "recall": [
            {"source": "ease", "weight": 1.0, "limit": 50, "params": {"lambda": 50.0}},
            {"source": "item_cf", "weight": 1.0, "limit": 50, "params": {"neighbors": 20}},
            {"source": "popular", "weight": 3.0, "limit": 50, "params": {}},
        ],
        "rerank": [], "fallback": {"sources": ["popular"], "minItems": 10},
        "models": {"tune": True, "tuningBudgetSeconds": 120.0, **models},
    })


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return clustered()


@pytest.fixture(scope="module")
def tuned(data: TrainingData):
    return train_scenario_model(data, config(), scenario_id="s", version=1)


def test_the_temporal_slice_holds_out_each_users_newest_items(data: TrainingData) -> None:
    catalogue = CatalogueView.from_items(data.items)
    inter = build_interactions(data, catalogue, {"VIEW": 1.0})
    held = ValidationSlice.of(inter)
    assert len(held.users) == len(inter.user_ids)  # 14 items each: every user validated, a tenth = 1 item
    for row in held.users.tolist()[:20]:
        user = inter.user_ids[row]
        mine = sorted((t, i) for u, i, t in zip(data.user_ids, data.item_ids, data.timestamps, strict=True)
                      if u == user)
        newest = catalogue.index[mine[-1][1]]
        assert held.targets[row] == frozenset({newest})


def test_without_slice_drops_exactly_the_held_out_pairs(data: TrainingData) -> None:
    catalogue = CatalogueView.from_items(data.items)
    inter = build_interactions(data, catalogue, {"VIEW": 1.0})
    for how in ("temporal", "random"):
        held = ValidationSlice.of(inter, how)
        fit = build_interactions(without_slice(data, inter, catalogue.index, held), catalogue, {"VIEW": 1.0})
        before = {(u, int(i)) for u, row in zip(inter.user_ids, inter.strength.tolil().rows, strict=True) for i in row}
        after = {(u, int(i)) for u, row in zip(fit.user_ids, fit.strength.tolil().rows, strict=True) for i in row}
        gone = {(inter.user_ids[r], int(i)) for r in held.users.tolist() for i in held.targets[r]}
        assert gone and gone <= before - after
        assert len(before - after) == int(held.held.sum())  # nothing else went


def test_the_random_slice_draws_from_the_whole_history(data: TrainingData) -> None:
    inter = build_interactions(data, CatalogueView.from_items(data.items), {"VIEW": 1.0})
    held = ValidationSlice.of(inter, "random")
    newest = inter.history_indptr[1:] - 1
    rows = np.searchsorted(inter.history_indptr, held.positions, side="right") - 1
    assert (held.positions != newest[rows]).mean() > 0.5  # mostly not the newest item


def test_the_fusion_fit_scores_exactly_what_the_engine_ranks(data: TrainingData) -> None:
    cfg = config()
    catalogue = CatalogueView.from_items(data.items)
    inter = build_interactions(data, catalogue, cfg["interactionWeights"])
    held = ValidationSlice.of(inter)
    model = train_scenario_model(without_slice(data, inter, catalogue.index, held), {**cfg, "models": {
        **cfg["models"], "tune": False}}, scenario_id="s", version=1)
    scorer = Scorer(held, inter.user_ids, model, len(catalogue), Engine)
    names = [e["source"] for e in cfg["recall"]]
    inputs = FusionInputs.collect(scorer, cfg, model, names)
    for weights in ([1.0, 1.0, 3.0], [3.0, 0.5, 0.1], [0.2, 2.0, 0.0]):
        engine_ndcg = scorer.pipeline(with_weights(cfg, dict(zip(names, weights, strict=True))), model).ndcg
        assert inputs.ndcg(np.array(weights)) == pytest.approx(engine_ndcg, abs=1e-9)


def test_coordinate_ascent_finds_the_informative_source() -> None:
    rng = np.random.default_rng(0)
    users, width = 300, 40
    relevant = rng.random((users, width)) < 0.05
    relevant[:, 0] = True
    informative = np.where(relevant, 0.6, 0.0) + rng.random((users, width)) * 0.5
    noise = rng.random((users, width))
    inputs = FusionInputs(["good", "noise"], np.stack([informative, noise], axis=-1).astype(np.float32),
                          np.ones((users, width), bool), relevant,
                          np.array([sum(1 / math.log2(r + 2) for r in range(min(10, int(n))))
                                    for n in relevant.sum(axis=1)]), users)
    start = np.array([1.0, 3.0])
    weights, score = fit_weights(inputs, [start], deadline=float("inf"))
    assert weights[0] > 2 * weights[1]
    assert score > inputs.ndcg(start) + 0.05


def test_the_settings_search_walks_to_the_best_value_on_a_log_scale() -> None:
    tried = []

    def score(value: float) -> float:
        tried.append(value)
        return -abs(math.log(value / 37.0))

    best, _, trials = tune_value(300.0, 1.0, 1e6, False, score, deadline=float("inf"))
    assert best == pytest.approx(37.5)  # 300 -> 75 -> 18.75 (steps of 4) -> 37.5 (a step of 2)
    assert len(trials) == len(set(tried)) <= 7
    far, _, _ = tune_value(2.0, 0.5, 1e5, False, lambda v: -abs(math.log(v / 5000.0)), deadline=float("inf"))
    assert far == pytest.approx(4096.0)  # walks on while it gains: 2 -> 8 -> ... -> 8192, back to 4096


def test_the_champion_is_scored_only_on_the_users_it_never_trained_on(data: TrainingData, tuned) -> None:
    # Users act one after the other, 14 views a minute apart: users 80-159, and user 79's last views, come after.
    cut = T0 + 80 * 600
    keep = np.asarray(data.timestamps) < cut
    older = TrainingData(items=data.items, user_ids=[u for u, k in zip(data.user_ids, keep, strict=True) if k],
                         item_ids=[i for i, k in zip(data.item_ids, keep, strict=True) if k],
                         types=[t for t, k in zip(data.types, keep, strict=True) if k],
                         values=[v for v, k in zip(data.values, keep, strict=True) if k],
                         timestamps=np.asarray(data.timestamps)[keep])
    champion = train_scenario_model(older, config(tune=False), scenario_id="s", version=1)
    new = train_scenario_model(data, config(tuningBudgetSeconds=20.0), scenario_id="s", version=2, champion=champion)
    compared = new.info["tuning"]["champion"]
    assert compared["version"] == 1 and compared["users"] == 81  # user 79's held-out (newest) view is after the cut
    assert 0.0 < compared["champion_ndcg@10"] <= 1.0 and 0.0 < compared["ndcg@10"] <= 1.0
    # A champion trained on everything saw every held-out item: nothing fair is left to compare.
    stale = train_scenario_model(data, config(tuningBudgetSeconds=20.0), scenario_id="s", version=3, champion=tuned)
    assert stale.info["tuning"]["champion"]["users"] == 0 and "skipped" in stale.info["tuning"]["champion"]


def test_a_move_is_kept_only_beyond_one_standard_error_of_the_paired_differences() -> None:
    rng = np.random.default_rng(5)
    # Two settings equally good: per-user NDCG shares each user's difficulty, plus independent noise.
    accepted = 0
    for _ in range(4000):
        base = rng.uniform(0.0, 0.6, 300)
        old, new = base + rng.normal(0, 0.1, 300), base + rng.normal(0, 0.1, 300)
        accepted += improves(new, old)
    # Under no true gain a one-SE rule lets through P(Z > 1) = 15.9% of moves (one-sided), not half as the plain
    # comparison does; the t distribution with 299 degrees of freedom is that close to the normal.
    assert 0.14 < accepted / 4000 < 0.18
    base = rng.uniform(0.0, 0.6, 300)
    assert improves(base + 0.02 + rng.normal(0, 0.05, 300), base)  # a real gain of 4 SE is kept
    assert not improves(base + rng.normal(0, 0.05, 300) + 0.001, base)  # below the noise: not kept
    assert improves(0.3002, 0.3) and not improves(0.30005, 0.3)  # plain scores: MIN_GAIN decides


def test_a_request_time_setting_is_searched_across_its_range_before_the_walk() -> None:
    # Flat from the start up to 1,000, better beyond: the walk alone never leaves the start; the grid does.
    score = lambda v: np.full(50, 0.3 if v >= 1000 else 0.1)  # noqa: E731
    walked, _, _ = tune_value(2.0, 0.5, 1e5, False, score, deadline=float("inf"))
    assert walked == 2.0
    gridded, value, _ = tune_value(2.0, 0.5, 1e5, False, score, deadline=float("inf"), grid=True)
    assert gridded >= 1000 and value == pytest.approx(0.3)


def test_a_history_setting_within_noise_of_the_best_keeps_its_simplest_value() -> None:
    rng = np.random.default_rng(3)
    base = rng.uniform(0.0, 0.6, 400)
    noise = {v: rng.normal(0, 0.05, 400) for v in (50.0, 200.0, 800.0, 3200.0, 100.0, 400.0, 1600.0)}
    for values in noise.values():
        values -= values.mean()  # each value's mean is what is added; paired differences' standard error ~0.0035
    # 800 leads by a tenth of a standard error: every item (3,200, the top of the range) is kept.
    flat = lambda v: base + noise.get(v, 0) + (0.0003 if v == 800 else 0.0)  # noqa: E731
    kept, _, _ = tune_value(200, 50, 3200, True, flat, deadline=float("inf"), grid=True, simplest=3200)
    assert kept == 3200
    # Without `simplest` the walk keeps its start (no move beats it beyond noise).
    assert tune_value(200, 50, 3200, True, flat, deadline=float("inf"), grid=True)[0] == 200
    # A value better by several standard errors wins over the simplest.
    steep = lambda v: base + noise.get(v, 0) + (0.05 if v <= 100 else 0.0)  # noqa: E731
    kept, _, _ = tune_value(200, 50, 3200, True, steep, deadline=float("inf"), grid=True, simplest=3200)
    assert kept <= 100


def test_a_trained_pipeline_is_never_worse_on_its_slice_than_its_config_or_a_single_source(tuned) -> None:
    tuning = tuned.info["tuning"]
    chosen = tuning["pipelines"][tuning["chosen"]]
    assert set(tuning["pipelines"]) >= {"config", "fitted"}
    assert any(label.startswith("single:") for label in tuning["pipelines"])
    assert all(chosen >= score for score in tuning["pipelines"].values())
    assert tuning["validation"]["ndcg@10"] == chosen
    assert set(tuning["params"]) == {"ease", "item_cf"}
    assert set(tuning["params"]["ease"]) == {"lambda", "historyHalfLife", "historyItems"}
    assert tuning["trials"]["ease"][0]["params"] == {"lambda": 50.0}  # the search starts from the config's value
    assert tuning["validationUsers"] >= MIN_USERS


def test_popularity_alone_loses_its_weight_to_the_taste_sources(tuned) -> None:
    weights = tuned.info["tuning"]["weights"]
    assert weights["popular"] < max(weights["ease"], weights["item_cf"])


def test_serving_uses_the_fitted_weights_unless_tuning_is_off(tuned) -> None:
    fitted = {k: v for k, v in tuned.info["tuning"]["weights"].items() if v > 0}
    engine = Engine(config(), tuned)
    served = {e["source"]: e["weight"] for e in engine.config["recall"]}
    assert served == fitted
    params = tuned.info["tuning"]["params"]
    for entry in engine.config["recall"]:
        if entry["source"] in params:  # the request-time settings it fitted are served too
            assert entry["params"]["historyHalfLife"] == params[entry["source"]]["historyHalfLife"]
            assert entry["params"]["historyItems"] == params[entry["source"]]["historyItems"]
    as_written = {e["source"]: e["weight"] for e in Engine(config(tune=False), tuned).config["recall"]}
    assert as_written == {"ease": 1.0, "item_cf": 1.0, "popular": 3.0}
    # A config (or an experiment variant) whose weights differ from those training started from serves its own.
    variant = config()
    variant["recall"][2]["weight"] = 0.5
    assert {e["source"]: e["weight"] for e in Engine(variant, tuned).config["recall"]} == {
        "ease": 1.0, "item_cf": 1.0, "popular": 0.5}


def test_no_fit_without_enough_users_or_with_tuning_off(data: TrainingData) -> None:
    few = clustered(users=MIN_USERS - 10)
    assert "tuning" not in train_scenario_model(few, config(), scenario_id="s", version=1).info
    assert "tuning" not in train_scenario_model(data, config(tune=False), scenario_id="s", version=1).info


def test_a_spent_budget_keeps_what_was_found(data: TrainingData) -> None:
    model = train_scenario_model(data, config(tuningBudgetSeconds=1.0), scenario_id="s", version=1)
    tuning = model.info["tuning"]
    assert tuning["stopped"] == "time budget"
    assert "config" in tuning["pipelines"] and tuning["weights"]


class _Suspend:
    def __await__(self):  # noqa: ANN204 - a bare awaitable that yields once, as a store's reply would
        yield


def test_run_inline_refuses_a_coroutine_that_waits() -> None:
    async def waits() -> None:
        await _Suspend()

    with pytest.raises(RuntimeError, match="in-memory"):
        run_inline(waits())


def test_the_hourly_similarity_refit_keeps_the_fitted_settings_and_weights(tuned, data: TrainingData) -> None:
    import copy
    from dataclasses import replace

    info = copy.deepcopy(tuned.info)
    info["tuning"]["params"]["item_cf"]["neighbors"] = 7  # as if the fit had chosen 7 (the config says 20)
    refit = refit_similarity(replace(tuned, info=info), data, config(), version=2)
    assert refit.item_cf.neighbors.shape[1] == 7
    assert refit.info["tuning"] == info["tuning"]  # so serving keeps the fitted weights


def test_on_a_random_slice_history_settings_within_noise_read_every_item_undecayed(data: TrainingData) -> None:
    # The users view their cluster's items in random order: no recency to learn, so the simplest history wins.
    model = train_scenario_model(data, config(validation="random"), scenario_id="s", version=1)
    params = model.info["tuning"]["params"]
    for source in ("ease", "item_cf"):
        assert params[source]["historyItems"] == 3200 and params[source]["historyHalfLife"] == 100000.0
