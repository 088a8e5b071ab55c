"""The dcn ranker: the torch module and its numpy twin agree, training learns a planted cross of two features, the
served ranking is the trained one (same features in training and serving), it falls back to fusion when untrained,
served lists with attributed clicks become training lists, and its params are validated by name."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from domain.errors import BadInput
from domain.learning.data import ServedLists, TrainingData, build_interactions
from domain.learning.dcn import export, train_dcn
from domain.learning.model import ScenarioModel
from domain.learning.ranking import ListCollector, RankingLists, ideal_dcg, served_lists
from domain.learning.train import _engine, train_scenario_model
from domain.learning.tuning import run_inline
from domain.recommend.base import RecRequest
from domain.recommend.engine import Engine
from domain.recommend.features import FeatureSpec
from domain.scenarios.config import build_config, validate_config
from models.dcn import DCN
from tests.unit.test_tuning import CLUSTERS, PER_CLUSTER, T0
from tests.unit.test_tuning import clustered as tuning_clustered

ROOT = Path(__file__).resolve().parents[2]
SPEC = FeatureSpec(("ease",))  # 3 source columns and the general ones
FAST = {"timeBudgetSeconds": 3.0, "maxEpochs": 30, "patience": 4}


def items() -> list[dict]:
    return [{"item_id": f"i{n}", "title": f"item {n}", "categories": [f"c{n % 3}"], "tags": [],
             "attributes": {"price": float(n)}, "published_at": datetime(2023, 1, 1 + n % 20, tzinfo=UTC),
             "status": "ACTIVE"} for n in range(CLUSTERS * PER_CLUSTER)]


def clustered(users: int = 120, length: int = 14, seed: int = 3) -> TrainingData:
    """The tuning tests' taste clusters, over items with a price."""
    return tuning_clustered(users, length, seed, catalogue=items())


def config(ranker: str = "dcn", **params: object) -> dict:
    return build_config("CUSTOM", {
        "recall": [
            {"source": "ease", "weight": 1.0, "limit": 40, "params": {"lambda": 50.0}},
            {"source": "item_cf", "weight": 1.0, "limit": 40, "params": {"neighbors": 20}},
            {"source": "popular", "weight": 1.0, "limit": 40, "params": {}},
        ],
        "features": {"item": ["price"]},
        "ranker": {"name": ranker, "params": {**FAST, **params}} if ranker == "dcn" else {"name": ranker},
        "rerank": [], "fallback": {"sources": ["popular"], "minItems": 10},
        "models": {"tune": False},
    })


@pytest.fixture(scope="module")
def data() -> TrainingData:
    return clustered()


@pytest.fixture(scope="module")
def trained(data: TrainingData) -> ScenarioModel:
    return train_scenario_model(data, config(), scenario_id="s", version=1)


def planted(lists: int, width: int, seed: int) -> RankingLists:
    """Lists whose one positive is the candidate with the largest product of two features: a cross, which no
    weighted sum of the features ranks."""
    rng = np.random.default_rng(seed)
    names = SPEC.names
    a, b = names.index("popularity"), names.index("categoryShare")
    out = []
    for _ in range(lists):
        rows = rng.normal(size=(width, len(names))).astype(np.float32)
        labels = np.zeros(width, bool)
        labels[np.argmax(rows[:, a] * rows[:, b])] = True
        out.append((rows, labels, 1.0))
    return RankingLists.of(out, len(names))


@pytest.mark.parametrize(("cross", "deep"), [(2, 2), (3, 0), (0, 1)])
def test_numpy_forward_equals_the_torch_module(cross: int, deep: int) -> None:
    torch.manual_seed(0)
    d = len(SPEC.names)
    module = DCN(d, cross_layers=cross, hidden=16, deep_layers=deep, dropout=0.3)
    with torch.no_grad():
        for layer in module.cross:  # they start at 0 (the identity): give them something to compute
            layer.weight.normal_(std=0.3)
            layer.bias.normal_(std=0.3)
    module.eval()
    rng = np.random.default_rng(1)
    rows = rng.normal(size=(300, d)).astype(np.float32) * 3 + 1
    mean, scale = rng.normal(size=d).astype(np.float32), rng.uniform(0.5, 2.0, d).astype(np.float32)
    scale[4] = 0.0  # a feature constant in training is ignored
    ranker = export(module, SPEC, mean, scale)
    with torch.no_grad():
        expected = module(torch.as_tensor((rows - mean) * scale)).numpy()
    np.testing.assert_allclose(ranker.score(rows), expected, rtol=1e-4, atol=1e-4)


def test_training_learns_a_planted_cross_of_two_features() -> None:
    train, stop, test = planted(200, 40, 1), planted(60, 40, 2), planted(100, 40, 3)
    # A fixed number of epochs (a budget far off), so that a loaded machine trains the same.
    params = {"timeBudgetSeconds": 120.0, "maxEpochs": 15, "patience": 15, "learningRate": 0.01}
    ranker, info = train_dcn(train, stop, SPEC, params)
    scores = ranker.score(test.rows)
    ndcg = []
    for k in range(len(test)):
        span = slice(test.offsets[k], test.offsets[k + 1])
        rank = int((scores[span] > scores[span][test.labels[span]][0]).sum())
        ndcg.append(1.0 / math.log2(rank + 2) if rank < 10 else 0.0)
    # Chance (one positive among 40) is 0.11; the best weighted sum of the features (no cross, no deep layer) 0.34.
    assert np.mean(ndcg) > 0.7 and info["valNdcg10"] > 0.7
    assert info["epochs"] == 15 and info["threads"] == 1


def test_a_trained_ranker_is_gated_against_fusion_and_recorded(trained: ScenarioModel) -> None:
    info = trained.info["ranker"]
    assert info["chosen"] in ("dcn", "fusion") and info["lists"]["validation"] > 20
    assert (trained.ranker is not None) == (info["chosen"] == "dcn")
    gate = info["gate"]
    assert gate["users"] > 0 and set(gate) == {"users", "dcn", "fusion"}
    assert trained.info["tuning"]["validation"] == gate[info["chosen"]]  # the version's metrics: what is served
    if info["chosen"] == "dcn":  # served only when it beats fusion there (by more than noise)
        assert gate["dcn"]["ndcg@10"] > gate["fusion"]["ndcg@10"]
    assert "attributes.price" in info["features"] and info["seconds"] < 30


def test_the_served_ranking_is_the_rankers_order_over_the_training_features(trained: ScenarioModel) -> None:
    """The engine's list with a ranker equals the order of its scores over the rows training builds."""
    cfg = validate_config(config())
    collector = ListCollector.build(cfg, trained, _engine)
    model = replace(trained, ranker=random_ranker(collector.spec))
    history = model.user_history("u5")
    request = RecRequest(user_id="u5", limit=10, history=history, exclude=frozenset(history), now=model.newest_event)
    idx, rows = collector.candidates(request)
    expected = [model.catalogue.item_ids[i] for i in idx[np.lexsort((idx, -model.ranker.score(rows)))][:10]]
    served = run_inline(Engine(cfg, model).recommend(request))
    assert [r.item_id for r in served.items] == expected
    assert all(r.score > 0 for r in served.items)
    fusion = run_inline(Engine(config("fusion"), model).recommend(request))
    assert [r.item_id for r in fusion.items] != expected  # a random ranker: the test would see fusion's order


def random_ranker(spec: FeatureSpec, seed: int = 0):
    """Return an exported DCN with random weights over the spec's features (inputs standardised as they are)."""
    torch.manual_seed(seed)
    d = len(spec.names)
    module = DCN(d, cross_layers=2, hidden=8, deep_layers=1)
    with torch.no_grad():
        for layer in module.cross:
            layer.weight.normal_(std=0.3)
    return export(module.eval(), spec, np.zeros(d, np.float32), np.ones(d, np.float32))


def test_without_a_trained_ranker_dcn_ranks_as_fusion(data: TrainingData, trained: ScenarioModel) -> None:
    untrained = replace(trained, ranker=None)
    for user in ("u1", "u2", "new"):
        history = untrained.user_history(user)
        request = RecRequest(user_id=user, limit=10, history=history, exclude=frozenset(history),
                             now=untrained.newest_event)
        dcn = run_inline(Engine(config(), untrained).recommend(request))
        fusion = run_inline(Engine(config("fusion"), untrained).recommend(request))
        assert [(r.item_id, r.score) for r in dcn.items] == [(r.item_id, r.score) for r in fusion.items]


def test_a_scenario_too_small_to_validate_serves_fusion_and_says_so() -> None:
    model = train_scenario_model(clustered(users=30), config(), scenario_id="s", version=1)
    assert model.ranker is None and model.info["ranker"]["chosen"] == "fusion"
    assert "fewer than 50 validation users" in model.info["ranker"]["skipped"]


def test_the_ranker_survives_a_save_and_load(tmp_path: Path, trained: ScenarioModel) -> None:
    model = replace(trained, ranker=random_ranker(FeatureSpec(("ease", "item_cf", "popular"), ("price",))))
    model.save(tmp_path / "m")
    loaded = ScenarioModel.load(tmp_path / "m")
    rows = np.random.default_rng(0).normal(size=(50, len(model.ranker.spec.names))).astype(np.float32)
    assert loaded.ranker is not None and loaded.ranker.spec == model.ranker.spec
    np.testing.assert_array_equal(loaded.ranker.score(rows), model.ranker.score(rows))


def test_served_lists_with_attributed_clicks_become_training_lists(data: TrainingData,
                                                                   trained: ScenarioModel) -> None:
    cfg = validate_config(config())
    catalogue = trained.catalogue
    inter = build_interactions(data, catalogue, cfg["interactionWeights"])
    # u1 is served before their first event, u3 after their first two (users' events start at T0 + 600 u).
    served = ServedLists(
        user_ids=["u1", "u2", "u3", "nobody"], served_at=np.array([T0 + 500, T0 + 1300, T0 + 1900, T0 + 100]),
        items=[["i1", "i2", "i3", "gone"], ["i4", "i5"], ["i6", "i7", "i8"], ["i9", "i10"]],
        events=[[("i2", "CLICK"), ("gone", "CLICK")], [("i4", "SKIP")],
                [("i7", "CLICK"), ("i7", "SKIP"), ("i8", "LIKE")], [("i10", "CLICK")]],
    )
    collector = ListCollector.build(cfg, trained, _engine)
    lists = served_lists(collector, served, inter, cfg["interactionWeights"], deadline=math.inf)
    # Newest first: u3, u1, nobody; u2's list has no positive (a SKIP) and is left out. i7's CLICK (2) outweighs
    # its SKIP (-1); i8's LIKE counts; the unknown item is dropped.
    assert [labels.tolist() for _, labels, _ in lists] == [[False, True, True], [False, True, False], [False, True]]
    width = len(collector.spec.names)
    assert [rows.shape for rows, _, _ in lists] == [(3, width), (3, width), (2, width)]
    assert [ideal for _, _, ideal in lists] == [ideal_dcg(2), ideal_dcg(1), ideal_dcg(1)]
    # Each user's history before the serve time only.
    length = collector.spec.names.index("historyLength")
    assert [float(rows[0, length]) for rows, _, _ in lists] == pytest.approx([math.log1p(2), 0.0, 0.0])


@pytest.mark.parametrize(("params", "field"), [
    ({"crossLayers": 9}, "input.config.ranker.params.crossLayers"),
    ({"learningRate": 0}, "input.config.ranker.params.learningRate"),
    ({"loss": "hinge"}, "input.config.ranker.params.loss"),
    ({"timeBudgetSeconds": -1}, "input.config.ranker.params.timeBudgetSeconds"),
])
def test_bad_dcn_params_are_refused_by_name(params: dict, field: str) -> None:
    with pytest.raises(BadInput) as caught:
        validate_config({"recall": [{"source": "ease"}], "ranker": {"name": "dcn", "params": params}})
    assert caught.value.field == field


def test_an_unknown_dcn_param_is_refused() -> None:
    with pytest.raises(BadInput) as caught:
        validate_config({"recall": [{"source": "ease"}], "ranker": {"name": "dcn", "params": {"layers": 2}}})
    assert caught.value.field.startswith("input.config.ranker.params") and "layers" in caught.value.message


def test_serving_modules_do_not_import_torch() -> None:
    code = ("import sys; import domain.recommend.dcn, domain.recommend.engine, domain.learning.rankers, "
            "domain.learning.ranking, domain.learning.train, domain.learning.model; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_a_template_switched_to_dcn_takes_the_dcn_params_only() -> None:
    config = build_config("VLOG", {"ranker": {"name": "dcn", "params": {"crossLayers": 3}}})
    assert config["ranker"]["name"] == "dcn" and config["ranker"]["params"]["crossLayers"] == 3
    assert "method" not in config["ranker"]["params"]  # fusion's params are not merged into it
    same = build_config("VLOG", {"ranker": {"params": {"method": "rrf"}}})
    assert same["ranker"] == {"name": "fusion", "params": {"method": "rrf", "normalize": "minmax", "rrfK": 60.0}}


def test_the_gate_serves_fusion_when_the_ranker_is_worse(data: TrainingData, monkeypatch) -> None:
    """A ranker that reverses fusion's order loses on the gate users: the version serves fusion and says why."""
    import domain.learning.dcn as dcn

    def reversed_fusion(train, stop, spec, params, progress=None):
        module = DCN(len(spec.names), cross_layers=1, hidden=4, deep_layers=1)
        module.start_from(spec.names.index("fusion"))
        with torch.no_grad():
            module.out.weight.neg_()
        d = len(spec.names)
        return export(module.eval(), spec, np.zeros(d, np.float32), np.ones(d, np.float32)), {"seconds": 0.0}

    monkeypatch.setattr(dcn, "train_dcn", reversed_fusion)
    model = train_scenario_model(data, config(), scenario_id="s", version=1)
    info = model.info["ranker"]
    assert model.ranker is None and info["chosen"] == "fusion"
    assert info["gate"]["dcn"]["ndcg@10"] < info["gate"]["fusion"]["ndcg@10"]
    assert model.info["tuning"]["validation"] == info["gate"]["fusion"]
