"""Two towers: the torch module and its numpy twin agree (user tower, item tower), training learns tastes, new items
are retrievable from their features (in memory and through a vector store, ranked alike), the saved model keeps its
item tower, and the recall source serves it without torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from domain.learning.content import document_tokens, train_content
from domain.learning.model import ScenarioModel
from domain.learning.storage import load_item_tower
from domain.learning.train import TrainingData, train_scenario_model
from domain.learning.two_tower import Histories, ItemFeatures, Settings, export, numeric_matrix, train_two_tower
from domain.recommend.base import CatalogueView, RecRequest
from domain.recommend.engine import Engine
from domain.recommend.recall import CatalogueIndex, RecallContext
from domain.recommend.recall.two_tower import TwoTowerSource
from domain.scenarios.config import build_config, validate_config
from models.two_tower import TwoTower

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
CLUSTERS, PER_CLUSTER = ("a", "b", "c"), 20
COLD = "new-a"  # in cluster a by its category and tags, with no interactions
FAST = {"maxEpochs": 15, "patience": 4, "timeBudgetSeconds": 30.0, "dim": 16, "targetsPerUser": 8,
        "batchSize": 128, "learningRate": 0.01, "idDropout": 0.3, "minItemUsers": 1}


def items() -> list[dict]:
    docs = [{"item_id": f"{c}{n}", "title": f"item {c}{n}", "categories": [c], "tags": [f"t{c}", f"u{c}"],
             "attributes": {"size": CLUSTERS.index(c) * 10 + n % 3, "code": "x"},
             "published_at": datetime(2023, 1, 1, tzinfo=UTC), "status": "ACTIVE"}
            for c in CLUSTERS for n in range(PER_CLUSTER)]
    return [*docs, {"item_id": COLD, "title": "brand new", "categories": ["a"], "tags": ["ta", "ua"],
                    "attributes": {"size": 1}, "published_at": datetime(2023, 6, 1, tzinfo=UTC), "status": "ACTIVE"}]


def clustered(users: int = 90, length: int = 12) -> TrainingData:
    """Each user views random items of one cluster only: the right answer is the rest of their cluster."""
    rng = np.random.default_rng(1)
    rows = []
    for u in range(users):
        cluster = CLUSTERS[u % len(CLUSTERS)]
        for j, n in enumerate(rng.choice(PER_CLUSTER, length, replace=False)):
            rows.append((f"u{u}", f"{cluster}{n}", "VIEW", None, T0 + u * 3600 + j * 60))
    user_ids, item_ids, types, values, times = zip(*rows, strict=True)
    return TrainingData(items=items(), user_ids=list(user_ids), item_ids=list(item_ids), types=list(types),
                        values=list(values), timestamps=np.array(times, dtype=np.float64))


def tower_config(**params: float) -> dict:
    recall = [{"source": "two_tower", "weight": 1.0, "limit": 50, "params": {**FAST, **params}}]
    return build_config("CUSTOM", {"recall": recall, "fallback": {"sources": ["popular"], "minItems": 1},
                                   "models": {"tune": False}})


@pytest.fixture(scope="module")
def trained() -> ScenarioModel:
    torch.set_num_threads(1)
    return train_scenario_model(clustered(), tower_config(), scenario_id="s", version=1)


def context(model: ScenarioModel | None, history: list[str], exclude: frozenset[str] = frozenset()) -> RecallContext:
    request = RecRequest(user_id="new", limit=10, history=history, exclude=exclude)
    return RecallContext(request=request, index=CatalogueIndex.build(model, None), model=model, config={})


# --- numpy user tower == torch user tower -----------------------------------------------------------------------


@pytest.mark.parametrize(("content", "length"), [(0, 50), (8, 7), (8, 1)])
def test_numpy_user_vector_equals_the_torch_module(content: int, length: int) -> None:
    torch.manual_seed(3)
    catalogue = CatalogueView.from_items(items())
    users = np.r_[np.zeros(5), np.ones(len(catalogue) - 5) * 3]  # five items without an id embedding
    dense = np.random.default_rng(2).standard_normal((len(catalogue), content)).astype(np.float32) if content else None
    features = ItemFeatures.build(catalogue, users, 2, dense)
    module = TwoTower(features.tensors(torch.device("cpu")), vocabulary=features.vocabulary, dim=16, max_len=50)
    with torch.no_grad():  # biases and recency logits away from their initial values, so a mistake in them shows
        for name, p in module.named_parameters():
            if name.endswith("bias") or name == "positions":
                p.add_(torch.randn_like(p) * 0.3)
    module.eval()
    history = np.random.default_rng(length).integers(0, len(catalogue), length)  # catalogue indexes
    codes = torch.as_tensor(np.r_[np.zeros(50 - length, dtype=np.int64), history + 1])[None]
    with torch.no_grad():
        user = module.user_vectors(codes, module.item_vectors(codes))[0].numpy()
        items_torch = module.item_vectors(torch.arange(1, len(catalogue) + 1)).numpy()
    exported = export(module, 0.05)
    assert np.abs(exported.item_vectors - items_torch).max() < 1e-5
    assert np.abs(exported.user_vector(history) - user).max() < 1e-4
    assert exported.user_vector(np.array([], dtype=np.int64)) is None


def perturbed(features: ItemFeatures) -> TwoTower:
    """Return an eval-mode module whose biases are away from their initial values (a mistake in them shows)."""
    module = TwoTower(features.tensors(torch.device("cpu")), vocabulary=features.vocabulary, dim=16, max_len=50)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or name == "positions":
                p.add_(torch.randn_like(p) * 0.3)
    return module.eval()


@pytest.mark.parametrize("content", [0, 8])
def test_numpy_item_tower_equals_the_torch_item_tower_without_ids(content: int) -> None:
    torch.manual_seed(4)
    docs = items()
    catalogue = CatalogueView.from_items(docs)
    model = train_content([document_tokens(d) for d in docs], content) if content else None
    users = np.r_[np.zeros(7), np.ones(len(catalogue) - 7) * 3]  # seven items too rare for an id embedding
    features = ItemFeatures.build(catalogue, users, 2, None if model is None else np.asarray(model.embeddings))
    module = perturbed(features)
    tower = export(module, 0.05, features, model).items
    assert tower is not None and (tower.content is model) and tower.numeric_keys == ("size",)
    with torch.no_grad():
        trained = module.item_vectors(torch.arange(1, len(catalogue) + 1)).numpy()
        module.ids.zero_()  # what a new item has: its features alone
        featured = module.item_vectors(torch.arange(1, len(catalogue) + 1)).numpy()
    assert np.abs(tower.vectors(docs) - featured).max() < 1e-5
    assert np.abs(tower.vectors(docs[:7]) - trained[:7]).max() < 1e-5  # rare items: training's vector exactly
    assert np.abs(tower.vectors(docs[7:]) - trained[7:]).max() > 1e-3  # the others had an id embedding too


def test_a_new_items_vector_comes_from_its_known_features_only(trained: ScenarioModel) -> None:
    tower = trained.two_tower.items
    assert tower is not None
    known = {"item_id": "x", "title": "fresh", "categories": ["a"], "tags": ["ta", "ua"], "attributes": {"size": 1}}
    noisy = {**known, "categories": ["a", "never-seen"], "tags": ["ta", "ua", "unknown"],
             "attributes": {"size": 1, "colour": "red", "weight": True}}
    bare = {"item_id": "y"}
    vectors = tower.vectors([known, noisy, bare])
    assert vectors.shape == (3, 16) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert np.abs(vectors[0] - vectors[1]).max() < 1e-6  # unknown labels and non-numeric attributes add nothing
    item_vectors = trained.two_tower.item_vectors
    nearest = np.argsort(-(item_vectors @ vectors[0]))[:10]
    assert all(trained.catalogue.item_ids[i].startswith(("a", COLD)) for i in nearest)  # among its cluster


def test_features_code_labels_and_standardise_numeric_attributes() -> None:
    catalogue = CatalogueView.from_items(items())
    features = ItemFeatures.build(catalogue, np.r_[np.ones(60), 0], 1)
    assert features.ids[0] == 0 and features.ids[-1] == 0 and features.vocabulary == 60  # the cold item has no id
    assert features.categories.shape == (62, 1) and features.tags.shape == (62, 2)
    assert features.categories[-1, 0] == features.categories[1, 0]  # the cold item shares cluster a's category
    assert features.numeric_keys == ("size",) and features.content.shape == (62, 0)
    keys, values = numeric_matrix([{"n": 1, "flag": True, "s": "7"}, {"n": 3}, {}])
    assert keys == ("n",) and values[:, 0].tolist() == [0.0, -1.0, 1.0, 0.0]  # padding row, then z-scores; 0: missing


def test_histories_hold_out_the_newest_and_sample_only_the_training_part() -> None:
    histories = Histories.build(np.array([0, 12, 14]), np.r_[np.arange(12), 20, 21])
    assert histories.held.tolist() == [1, 0]  # a tenth of 12; a two-item user keeps both
    history, targets = histories.sample(50, 4, np.random.default_rng(0))
    assert len(targets) == 10 + 1 and 12 not in targets  # every item after a first, but item 11 (code 12): held out
    for row, target in zip(history, targets, strict=True):
        real = row[row > 0]
        assert len(real) >= 1 and real[-1] == target - 1 and np.all(np.diff(real) == 1)  # the items just before
    q = histories.target_probabilities(22, 4)  # user 0 gives 4 of its 10 targets an epoch, user 1 its only one
    assert q.sum() == pytest.approx(1.0) and q[0] == q[11] == q[20] == 0  # first items and held ones: never
    assert q[21] == pytest.approx(q[5] * 10 / 4)


def test_settings_defaults_are_the_config_schema_defaults() -> None:
    params = validate_config(build_config("CUSTOM", {"recall": [{"source": "two_tower"}]}))["recall"][0]["params"]
    assert Settings.from_params(params) == Settings()


# --- training and serving --------------------------------------------------------------------------------------


def test_training_learns_the_clusters_and_records_how_it_went(trained: ScenarioModel) -> None:
    info = trained.info["two_tower"]
    assert trained.two_tower is not None and info["device"] in ("cpu", "cuda")
    assert trained.two_tower.item_vectors.shape == (len(trained.catalogue), 16)  # every item, the cold one too
    assert info["numericAttributes"] == ["size"] and 1 <= info["bestEpoch"] <= info["epochs"] <= FAST["maxEpochs"]
    assert info["valNdcg10"] > 0.3  # random ranking of the 61 items: about 0.1


async def test_the_source_recalls_the_users_cluster_first_and_follows_new_events(trained: ScenarioModel) -> None:
    source = TwoTowerSource()
    found = await source.recall(context(trained, ["b1", "b2", "b3", "b4"]), 15)
    ids = [trained.catalogue.item_ids[i] for i in found.idx]
    assert all(i.startswith("b") for i in ids) and not {"b1", "b2", "b3", "b4"} & set(ids)
    assert np.all(np.diff(found.scores) <= 0) and np.all(found.scores > 0)
    moved = await source.recall(context(trained, ["b1", "c1", "c2", "c3", "c4", "c5"]), 5)
    assert all(trained.catalogue.item_ids[i].startswith("c") for i in moved.idx)


async def test_an_item_without_interactions_is_retrievable_by_its_features(trained: ScenarioModel) -> None:
    found = await TwoTowerSource().recall(context(trained, ["a1", "a2", "a3", "a4"]), 30)
    ids = [trained.catalogue.item_ids[i] for i in found.idx]
    outside = min(r for r, i in enumerate(ids) if i[0] in "bc")
    assert COLD in ids[:outside]  # ranked with its cluster, before every item of the others


def serving_view(model: ScenarioModel, *extra: dict) -> CatalogueView:
    """Return the model's catalogue (less a4) with items added after training: what serving holds later."""
    docs = [d for d in items() if d["item_id"] != "a4"]
    return CatalogueView.from_items([*docs, *extra])


FRESH = {"item_id": "fresh-a", "title": "just in", "categories": ["a"], "tags": ["ta", "ua"],
         "attributes": {"size": 2}, "published_at": datetime(2024, 2, 1, tzinfo=UTC), "status": "ACTIVE"}


async def test_an_item_added_after_training_is_recalled_from_its_features(trained: ScenarioModel) -> None:
    index = CatalogueIndex.build(trained, serving_view(trained, FRESH))
    vectors, missing = index.tower_vectors()
    row = index.catalogue.index["fresh-a"]
    assert missing is None and np.abs(vectors[row] - trained.two_tower.items.vectors([FRESH])[0]).max() < 1e-6
    known = trained.catalogue.index["b3"]
    assert np.array_equal(vectors[index.catalogue.index["b3"]], trained.two_tower.item_vectors[known])
    ctx = RecallContext(request=RecRequest(user_id="x", limit=10, history=["a1", "a2", "a3"]), index=index,
                        model=trained, config={})
    found = await TwoTowerSource().recall(ctx, 30)
    ids = [index.catalogue.item_ids[i] for i in found.idx]
    assert "fresh-a" in ids[: min(r for r, i in enumerate(ids) if i[0] in "bc")] and "a4" not in ids


class ExactStore:
    """A VectorSearch answering exactly (brute force) from a space of item vectors, counting its searches."""

    def __init__(self, ids: list[str], vectors: np.ndarray) -> None:
        self.ids, self.vectors, self.calls = ids, vectors, []

    async def search(self, space: str, vector, *, limit: int, exclude_ids=()) -> list[tuple[str, float]]:
        self.calls.append(space)
        scores = self.vectors @ np.asarray(vector, dtype=np.float32)
        order = np.lexsort((np.arange(len(scores)), -scores))
        return [(self.ids[i], float(scores[i])) for i in order if self.ids[i] not in exclude_ids][:limit]


@pytest.mark.parametrize("exclude", [frozenset(), frozenset({"a5", "a6", "c1"})])
async def test_a_vector_store_search_ranks_and_scores_as_the_in_memory_scan(trained: ScenarioModel,
                                                                           exclude: frozenset[str]) -> None:
    index = CatalogueIndex.build(trained, serving_view(trained, FRESH))
    vectors, _ = index.tower_vectors()
    store = ExactStore([*index.catalogue.item_ids, "stale"], np.vstack([vectors, vectors[:1]]))  # one gone item
    request = RecRequest(user_id="x", limit=10, history=["a1", "a2", "b1"], exclude=exclude)
    scan = await TwoTowerSource().recall(RecallContext(request=request, index=index, model=trained, config={}), 20)
    searched = await TwoTowerSource().recall(RecallContext(request=request, index=index, model=trained, config={},
                                                           vectors=store, two_tower_space="tt"), 20)
    assert store.calls == ["tt"]  # one search per request
    assert searched.idx.tolist() == scan.idx.tolist() and np.allclose(searched.scores, scan.scores, rtol=1e-5)
    assert not ({"a1", "a2", "b1"} | exclude) & {index.catalogue.item_ids[i] for i in searched.idx}


async def test_the_source_skips_excluded_items_and_answers_empty_when_it_cannot_answer(trained: ScenarioModel) -> None:
    source = TwoTowerSource()
    first = await source.recall(context(trained, ["a1", "a2"]), 3)
    best = trained.catalogue.item_ids[first.idx[0]]
    found = await source.recall(context(trained, ["a1", "a2"], exclude=frozenset({best})), 3)
    assert best not in [trained.catalogue.item_ids[i] for i in found.idx] and len(found) == 3
    assert len(await source.recall(context(trained, []), 5)) == 0  # a new user
    assert len(await source.recall(context(trained, ["not-an-item"]), 5)) == 0
    untrained = train_scenario_model(clustered(), build_config("CUSTOM", None), scenario_id="s", version=1)
    assert untrained.two_tower is None
    assert len(await source.recall(context(untrained, ["a1"]), 5)) == 0
    assert len(await source.recall(context(None, ["a1"]), 5)) == 0


async def test_the_engine_serves_it_and_a_saved_model_scores_the_same(trained: ScenarioModel, tmp_path: Path) -> None:
    trained.save(tmp_path / "m")
    loaded = ScenarioModel.load(tmp_path / "m")
    history = np.array([trained.catalogue.index[i] for i in ("c1", "c2")])
    assert np.allclose(loaded.two_tower.scores(history), trained.two_tower.scores(history))
    result = await Engine(tower_config(), loaded).recommend(RecRequest(user_id="x", limit=3, history=["c1", "c2"],
                                                                       exclude=frozenset({"c1", "c2"})))
    assert result.items[0].item_id.startswith("c") and result.items[0].sources == ("two_tower",)


def test_a_saved_item_tower_shares_the_scenarios_content_model_until_a_refit_replaces_it(
        trained: ScenarioModel, tmp_path: Path) -> None:
    docs = items()
    content = train_content([document_tokens(d) for d in docs], 8)
    tower = trained.two_tower.items
    rng = np.random.default_rng(5)
    with_content = replace(tower, content=content, content_w=rng.standard_normal((8, 16)).astype(np.float32))
    model = replace(trained, content=content, two_tower=replace(trained.two_tower, items=with_content))
    expected = with_content.vectors([FRESH, *docs[:5]])
    model.save(tmp_path / "shared")
    assert not list((tmp_path / "shared").glob("two_tower.content*"))  # one copy: the scenario's
    loaded = ScenarioModel.load(tmp_path / "shared")
    assert np.abs(loaded.two_tower.items.vectors([FRESH, *docs[:5]]) - expected).max() < 1e-6
    refitted = replace(model, content=train_content([document_tokens(d) for d in docs[:40]], 8))
    refitted.save(tmp_path / "refit")  # the similarity refit's new content model: the tower keeps its own
    assert (tmp_path / "refit" / "two_tower.content.components.npy").exists()
    again = ScenarioModel.load(tmp_path / "refit")
    assert np.abs(again.two_tower.items.vectors([FRESH, *docs[:5]]) - expected).max() < 1e-6
    towers, ids = load_item_tower(tmp_path / "refit")
    assert ids == trained.catalogue.item_ids and np.array_equal(towers.item_vectors, trained.two_tower.item_vectors)
    assert np.abs(towers.new_item_vectors([FRESH]) - expected[:1]).max() < 1e-6


def test_training_stops_at_its_time_budget_and_keeps_a_model() -> None:
    data = clustered(30)
    catalogue = CatalogueView.from_items(data.items)
    indptr = np.arange(0, 30 * 12 + 1, 12)
    items = np.array([catalogue.index[i] for i in data.item_ids])
    towers, info = train_two_tower(catalogue, indptr, items, {**FAST, "timeBudgetSeconds": 0.01, "maxEpochs": 500})
    assert towers is not None and info["stopped"] == "time budget" and info["epochs"] <= 2


def test_no_user_with_two_items_trains_nothing() -> None:
    catalogue = CatalogueView.from_items(items())
    towers, info = train_two_tower(catalogue, np.array([0, 1, 2]), np.array([3, 4]), FAST)
    assert towers is None and info["epochs"] == 0


def test_serving_modules_do_not_import_torch() -> None:
    code = ("import sys; import domain.recommend.recall.two_tower, domain.learning.towers, domain.learning.storage, "
            "domain.recommend.engine, domain.evaluation.runner; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
