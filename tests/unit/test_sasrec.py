"""SASRec: the torch module and its numpy twin agree, training learns an order, the recall source serves it."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import torch

from domain.learning.model import ScenarioModel
from domain.learning.process import _model_metrics
from domain.learning.sasrec import Events, Histories, Settings, export, train_sasrec
from domain.learning.train import TrainingData, train_scenario_model
from domain.recommend.base import RecRequest
from domain.recommend.engine import Engine
from domain.recommend.recall import CatalogueIndex, RecallContext
from domain.recommend.recall.sasrec import SasrecSource
from domain.scenarios.config import build_config, validate_config
from models.sasrec import SASRec

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2024, 1, 1, tzinfo=UTC).timestamp()
N_ITEMS = 40
# Next-item targets (span 1) on every item: the walks below make the next item the one right answer. Epochs, not
# the clock, end the training (a loaded machine must not stop it early).
FAST = {"maxEpochs": 60, "patience": 8, "timeBudgetSeconds": 120.0, "dim": 32, "dropout": 0.1,
        "learningRate": 0.005, "targetSpan": 1, "minItemUsers": 1, "minUsers": 1}


def items() -> list[dict]:
    return [{"item_id": f"i{n}", "title": f"item {n}", "categories": ["c"], "tags": [], "attributes": {},
             "published_at": datetime(2023, 1, 1, tzinfo=UTC), "status": "ACTIVE"} for n in range(N_ITEMS)]


def cycles(users: int = 60, length: int = 16) -> TrainingData:
    """Every user walks the items in one fixed order (i0, i1, ... wrapping), from their own starting point."""
    rows = [(f"u{u}", f"i{(u * 7 + j) % N_ITEMS}", "VIEW", None, T0 + u * 3600 + j * 60)
            for u in range(users) for j in range(length)]
    user_ids, item_ids, types, values, times = zip(*rows, strict=True)
    return TrainingData(items=items(), user_ids=list(user_ids), item_ids=list(item_ids), types=list(types),
                        values=list(values), timestamps=np.array(times, dtype=np.float64))


def sasrec_config(**params: float) -> dict:
    recall = [{"source": "sasrec", "weight": 1.0, "limit": 50, "params": {**FAST, **params}}]
    return build_config("CUSTOM", {"recall": recall, "fallback": {"sources": ["popular"], "minItems": 1},
                                   "models": {"tune": False}})


@pytest.fixture(scope="module")
def trained() -> ScenarioModel:
    return train_scenario_model(cycles(), sasrec_config(), scenario_id="s", version=1)


def context(model: ScenarioModel | None, history: list[str], exclude: frozenset[str] = frozenset()) -> RecallContext:
    request = RecRequest(user_id="new", limit=10, history=history, exclude=exclude)
    return RecallContext(request=request, index=CatalogueIndex.build(model, None), model=model, config={})


# --- numpy forward == torch forward -------------------------------------------------------------------------


@pytest.mark.parametrize(("blocks", "heads", "length", "events"),
                         [(2, 1, 50, False), (2, 2, 7, False), (1, 4, 1, False), (3, 2, 20, False),
                          (2, 1, 50, True), (2, 2, 7, True), (1, 4, 1, True)])
def test_numpy_forward_equals_the_torch_module(blocks: int, heads: int, length: int, events: bool) -> None:
    torch.manual_seed(3)
    features = {"types": 3, "buckets": 16} if events else {}
    module = SASRec(300, max_len=50, dim=32, blocks=blocks, heads=heads, dropout=0.3, **features)
    with torch.no_grad():  # biases, norms and event rows away from their initial 0 / 1, so a mistake in them shows
        for name, p in module.named_parameters():
            if "norm" in name or name.endswith("bias") or name.startswith(("types.", "buckets.")):
                p.add_(torch.randn_like(p) * 0.3)
    module.eval()
    rng = np.random.default_rng(length)
    sequence, types, buckets = rng.integers(1, 301, length), rng.integers(0, 4, length), rng.integers(0, 17, length)

    def padded(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.r_[np.zeros(50 - length, dtype=np.int64), a])[None]

    with torch.no_grad():
        hidden = module(padded(sequence), padded(types), padded(buckets))[0, -1]
        logits = module.item_vectors()[1:] @ hidden
    described = Events(("A", "B", "C"), None, None, np.full((4, 15), np.inf)) if events else None
    exported = export(module, np.arange(300, dtype=np.int32), described)
    assert exported.reads_events == events
    assert np.abs(exported.encode(sequence, types, buckets) - hidden.numpy()).max() < 1e-5
    assert np.abs(exported.logits(sequence, types, buckets) - logits.numpy()).max() < 1e-5


def test_padding_does_not_change_the_outputs_of_real_positions() -> None:
    torch.manual_seed(4)
    module = SASRec(50, max_len=12, dim=16, blocks=2, heads=2).eval()
    short = torch.tensor([[0, 0, 0, 0, 5, 9, 2]])  # the same items, less left padding
    longer = torch.tensor([[0, 0, 0, 0, 0, 0, 0, 0, 0, 5, 9, 2]])
    with torch.no_grad():
        a, b = module(short)[0, -3:], module(longer)[0, -3:]
    assert torch.allclose(a, b, atol=1e-6)


# --- data ------------------------------------------------------------------------------------------------------


def test_windows_make_every_training_item_after_the_first_a_target_once_and_hold_out_the_newest() -> None:
    lengths = [1, 2, 3, 9, 25]
    indptr = np.r_[0, np.cumsum(lengths)]
    items = np.arange(indptr[-1]) % 17 * 3  # model catalogue indexes
    histories = Histories.build(indptr, items)
    assert histories.held.tolist() == [0, 0, 1, 1, 2]  # a tenth, at least one, for users with 3+ items
    windows = histories.windows(max_len=4).items
    assert windows.shape[1] == 5
    targets = windows[:, 1:][windows[:, :-1] > 0]  # a position is trained when it has an input
    expected = [histories.items[s + 1 : e - h] for s, e, h in zip(indptr[:-1], indptr[1:], histories.held,
                                                                   strict=True)]
    assert sorted(targets.tolist()) == sorted(np.concatenate(expected).tolist())
    for row in windows:  # left-padded: once a real item starts, no padding follows
        real = np.flatnonzero(row > 0)
        assert real.tolist() == list(range(real[0], len(row)))
    assert set(histories.vocabulary[histories.items - 1].tolist()) == set(items.tolist())


def test_a_target_span_adds_the_following_items_of_the_training_part_only() -> None:
    histories = Histories.build(np.array([0, 12]), np.arange(12))  # one user: vocabulary positions 1..12
    assert histories.held.tolist() == [1]  # item 12 is held out
    windows = histories.windows(max_len=4, span=3)
    assert windows.types is None and windows.buckets is None  # no events given: the plain model
    assert windows.items.tolist() == [[7, 8, 9, 10, 11, 0, 0], [3, 4, 5, 6, 7, 8, 9], [0, 0, 1, 2, 3, 4, 5]]


def test_rare_items_leave_the_vocabulary_and_the_sequences() -> None:
    items = np.array([5, 6, 7, 5, 6, 8, 5, 9])  # 7, 8 and 9 have one user each
    histories = Histories.build(np.array([0, 3, 6, 8]), items, min_users=2)
    assert histories.vocabulary.tolist() == [5, 6]
    assert histories.indptr.tolist() == [0, 2, 4, 5] and histories.items.tolist() == [1, 2, 1, 2, 1]


def test_settings_defaults_are_the_config_schema_defaults() -> None:
    params = validate_config(build_config("CUSTOM", {"recall": [{"source": "sasrec"}]}))["recall"][0]["params"]
    assert Settings.from_params(params) == Settings()
    assert Settings.from_params({"maxLength": 20, "learningRate": 0.01}).max_length == 20


# --- training ------------------------------------------------------------------------------------------------


def test_training_learns_the_order_and_records_how_it_went(trained: ScenarioModel) -> None:
    info = trained.info["sasrec"]
    assert trained.sasrec is not None
    assert info["loss"] == "softmax" and info["device"] in ("cpu", "cuda")
    assert info["valNdcg10"] > 0.8  # the next items of a fixed walk are predictable
    assert 1 <= info["bestEpoch"] <= info["epochs"] <= FAST["maxEpochs"]
    assert {"sasrec_val_ndcg10", "sasrec_epochs", "sasrec_best_epoch", "sasrec_s"} <= set(_model_metrics(trained))


async def test_the_source_recalls_the_next_item_and_follows_a_new_event(trained: ScenarioModel) -> None:
    source = SasrecSource()
    found = await source.recall(context(trained, ["i3", "i4", "i5"]), 5)
    ids = [trained.catalogue.item_ids[i] for i in found.idx]
    assert ids[0] == "i6" and np.all(np.diff(found.scores) <= 0) and np.all(found.scores > 0)
    moved = await source.recall(context(trained, ["i3", "i4", "i5", "i20"]), 5)
    assert trained.catalogue.item_ids[moved.idx[0]] == "i21"


async def test_the_source_skips_excluded_items_and_answers_empty_when_it_cannot_answer(trained: ScenarioModel) -> None:
    source = SasrecSource()
    found = await source.recall(context(trained, ["i3", "i4", "i5"], exclude=frozenset({"i6"})), 5)
    assert "i6" not in [trained.catalogue.item_ids[i] for i in found.idx] and len(found) == 5
    assert len(await source.recall(context(trained, []), 5)) == 0  # a new user
    assert len(await source.recall(context(trained, ["not-an-item"]), 5)) == 0
    untrained = train_scenario_model(cycles(), build_config("CUSTOM", None), scenario_id="s", version=1)
    assert untrained.sasrec is None
    assert len(await source.recall(context(untrained, ["i3"]), 5)) == 0
    assert len(await source.recall(context(None, ["i3"]), 5)) == 0


async def test_the_engine_serves_it_and_a_saved_model_scores_the_same(trained: ScenarioModel, tmp_path: Path) -> None:
    trained.save(tmp_path / "m")
    loaded = ScenarioModel.load(tmp_path / "m")
    history = np.array([trained.catalogue.index[i] for i in ("i10", "i11")])
    size = len(trained.catalogue)
    assert np.allclose(loaded.sasrec.next_item_scores(history, size), trained.sasrec.next_item_scores(history, size))
    result = await Engine(sasrec_config(), loaded).recommend(RecRequest(user_id="x", limit=3, history=["i10", "i11"],
                                                                        exclude=frozenset({"i10", "i11"})))
    assert result.items[0].item_id == "i12" and result.items[0].sources == ("sasrec",)


def test_a_large_vocabulary_trains_with_a_sampled_softmax_of_many_negatives() -> None:
    data = cycles()
    model = train_scenario_model(data, sasrec_config(fullSoftmaxItems=10, negatives=16), scenario_id="s", version=1)
    assert model.info["sasrec"]["loss"] == "sampled softmax (16)"
    assert model.info["sasrec"]["valNdcg10"] > 0.5


def test_training_stops_at_its_time_budget_and_keeps_a_model() -> None:
    indptr = np.array([0, 16, 32])
    items = np.r_[np.arange(16), np.arange(16) + 8]
    sequence, info = train_sasrec(indptr, items, {**FAST, "timeBudgetSeconds": 0.01, "maxEpochs": 500})
    assert sequence is not None and info["stopped"] == "time budget" and info["epochs"] <= 2


def test_no_user_with_two_items_trains_nothing() -> None:
    sequence, info = train_sasrec(np.array([0, 1, 2]), np.array([3, 4]), FAST)
    assert sequence is None and info["epochs"] == 0


def test_serving_modules_do_not_import_torch() -> None:
    code = ("import sys; import domain.recommend.engine, domain.recommend.service, domain.recommend.serving, "
            "domain.learning.service, domain.learning.model, domain.evaluation.runner; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_too_few_users_train_no_model_and_the_source_stays_empty() -> None:
    model = train_scenario_model(cycles(users=30), sasrec_config(minUsers=31), scenario_id="s", version=1)
    assert model.sasrec is None and "minUsers is 31" in model.info["sasrec"]["skipped"]
    assert len(await SasrecSource().recall(context(model, ["i3", "i4"]), 5)) == 0
