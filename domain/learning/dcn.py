"""Train the DCN-v2 ranker (models.dcn) on ranking lists, and export it as numpy arrays for serving.

Runs only in the training child process: with sasrec.py and two_tower.py, one of the modules of domain/ that import
torch. The lists come from domain.learning.ranking: each is one user's candidates (feature rows) with the items the
user went on to take (or clicked in a served list) as positives.

Loss: a listwise softmax cross-entropy over each list (the mean log-probability of its positives among its
candidates, a ListNet-style objective, Cao et al., ICML 2007), or `loss: bce`, a binary cross-entropy per candidate.
Each step reads `negatives` of a list's non-positive candidates drawn at random, all of them when fewer: with
uniform draws the softmax over the sample estimates the softmax over the list. Early stopping: NDCG@10 of the
stopping lists (other users') after every epoch; the best epoch's weights are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from domain.learning.epochs import fit_epochs, over
from domain.learning.params import FromParams
from domain.learning.rankers import RankerModel
from domain.learning.ranking import K, RankingLists
from domain.recommend.features import FeatureSpec
from models.dcn import DCN

Progress = Callable[[float, str], None]
# The matrices are small (a batch is a few thousand rows of a few dozen features): a second thread costs more in
# synchronisation than it saves (on the 2-core machine under load, 25 ms a step with one thread, 160 ms with two).
THREADS = 1
START = "fusion"  # the feature the output starts from: training corrects fusion's ranking
CONSTANT = 1e-4  # a feature whose standard deviation is below this share of its size is ignored (its scale is 0)


@dataclass(frozen=True)
class Settings(FromParams):
    """The ranker's size and training; the scenario config's `dcn` ranker params (camelCase) override these."""

    cross_layers: int = 2
    hidden: int = 32
    deep_layers: int = 2
    dropout: float = 0.1
    loss: str = "softmax"
    negatives: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-5
    batch_lists: int = 32
    max_epochs: int = 200
    patience: int = 8
    time_budget_seconds: float = 45.0
    seed: int = 7


def train_dcn(train: RankingLists, stop: RankingLists, spec: FeatureSpec, params: Mapping[str, Any],
              progress: Progress | None = None) -> tuple[RankerModel, dict[str, Any]]:
    """Train on `train`, early-stop on `stop` (both with at least one list); return the best epoch's export and
    what happened."""
    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _train(train, stop, spec, Settings.from_params(params), progress)
    finally:
        torch.set_num_threads(previous)


def _train(train: RankingLists, stop: RankingLists, spec: FeatureSpec, settings: Settings,
           progress: Progress | None) -> tuple[RankerModel, dict[str, Any]]:
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    mean, std = train.rows.mean(axis=0, dtype=np.float64), train.rows.std(axis=0, dtype=np.float64)
    constant = std <= CONSTANT * np.maximum(1.0, np.abs(mean))
    scale = np.where(constant, 0.0, 1.0 / np.where(constant, 1.0, std)).astype(np.float32)
    mean = mean.astype(np.float32)
    standard = train.standardised(mean, scale), stop.standardised(mean, scale)
    model = DCN(len(spec.names), cross_layers=settings.cross_layers, hidden=settings.hidden,
                deep_layers=settings.deep_layers, dropout=settings.dropout).to(device)
    if scale[spec.names.index(START)] > 0:
        model.start_from(spec.names.index(START))
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    initial = _ndcg(model, standard[1], device)

    def run_epoch() -> float:
        return _epoch(model, optimizer, standard[0], settings, rng, device, started)

    fit = fit_epochs(model, settings, started, run_epoch, lambda: _ndcg(model, standard[1], device), progress, "dcn")
    fit["startNdcg10"] = round(initial, 5)
    info = {"device": device.type, "threads": THREADS,
            "ignoredFeatures": [n for n, s in zip(spec.names, scale.tolist(), strict=True) if s == 0.0],
            "trainLists": len(train), "stopLists": len(stop), "loss": settings.loss, **fit,
            "seconds": round(time.perf_counter() - started, 3)}
    return export(model, spec, mean, scale), info


def _epoch(model: DCN, optimizer: torch.optim.Optimizer, lists: RankingLists, settings: Settings,
           rng: np.random.Generator, device: torch.device, started: float) -> float:
    """Run one pass over the lists in random order (stopping early past the time budget); return the mean loss."""
    order = rng.permutation(len(lists))
    total, batches = 0.0, 0
    for start in range(0, len(order), settings.batch_lists):
        rows, labels, valid = _batch(lists, order[start : start + settings.batch_lists], settings.negatives, rng)
        logits = model(torch.as_tensor(rows, device=device))
        loss = _loss(logits, torch.as_tensor(labels, device=device), torch.as_tensor(valid, device=device),
                     settings.loss)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, batches = total + loss.item(), batches + 1
        if over(settings, started):
            break
    return total / max(batches, 1)


def _loss(logits: torch.Tensor, labels: torch.Tensor, valid: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "bce":
        return torch.nn.functional.binary_cross_entropy_with_logits(logits[valid], labels[valid].float())
    log_p = torch.log_softmax(logits.masked_fill(~valid, float("-inf")), dim=1)
    positives = labels & valid
    per_list = -(log_p.masked_fill(~positives, 0.0)).sum(dim=1) / positives.sum(dim=1).clamp(min=1)
    return per_list.mean()


def _batch(lists: RankingLists, chosen: np.ndarray, negatives: int | None,
           rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return the chosen lists padded into arrays (lists x width x features, labels, valid), each list keeping its
    positives and at most `negatives` of its other rows (drawn at random; all when None)."""
    picked = []
    for k in chosen.tolist():
        rows = np.arange(lists.offsets[k], lists.offsets[k + 1])
        if negatives is not None and rng is not None and len(rows) > negatives:
            positive = lists.labels[rows]
            others = rows[~positive]
            rows = np.concatenate([rows[positive], rng.choice(others, min(negatives, len(others)), replace=False)])
        picked.append(rows)
    width = max(len(r) for r in picked)
    out = np.zeros((len(picked), width, lists.rows.shape[1]), dtype=np.float32)
    labels = np.zeros((len(picked), width), dtype=bool)
    valid = np.zeros((len(picked), width), dtype=bool)
    for i, rows in enumerate(picked):
        out[i, : len(rows)], labels[i, : len(rows)], valid[i, : len(rows)] = lists.rows[rows], lists.labels[rows], True
    return out, labels, valid


@torch.no_grad()
def _ndcg(model: DCN, lists: RankingLists, device: torch.device, batch: int = 64) -> float:
    """Return the mean NDCG@K of the lists ranked by the model (each list's ideal counts every relevant item)."""
    model.eval()
    total = 0.0
    for start in range(0, len(lists), batch):
        chosen = np.arange(start, min(start + batch, len(lists)))
        rows, labels, valid = _batch(lists, chosen, None, None)
        scores = model(torch.as_tensor(rows, device=device)).masked_fill(~torch.as_tensor(valid, device=device),
                                                                          float("-inf"))
        top = torch.topk(scores, min(K, scores.shape[1]), dim=1).indices.cpu().numpy()
        hits = np.take_along_axis(labels & valid, top, axis=1)
        gains = (hits / np.log2(np.arange(2, top.shape[1] + 2))).sum(axis=1)
        total += float((gains / lists.ideal[chosen]).sum())
    return total / max(len(lists), 1)


def export(model: DCN, spec: FeatureSpec, mean: np.ndarray, scale: np.ndarray) -> RankerModel:
    """Return the module's weights (and the standardisation) as the numpy arrays serving's forward pass reads."""
    state = {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in model.state_dict().items()}
    d = len(spec.names)
    cross_w = np.stack([state[f"cross.{k}.weight"].T for k in range(len(model.cross))]) if len(model.cross) \
        else np.zeros((0, d, d), np.float32)
    cross_b = np.stack([state[f"cross.{k}.bias"] for k in range(len(model.cross))]) if len(model.cross) \
        else np.zeros((0, d), np.float32)
    deep = tuple((np.ascontiguousarray(state[f"deep.{k}.weight"].T), state[f"deep.{k}.bias"])
                 for k in range(len(model.deep)))
    return RankerModel(spec=spec, mean=mean, scale=scale, cross_w=np.ascontiguousarray(cross_w), cross_b=cross_b,
                       deep=deep, out_w=state["out.weight"][0], out_b=state["out.bias"])
