"""Train the two-tower model (models.two_tower) on a scenario's user histories and item features, and export it as
numpy arrays for serving (domain.learning.towers).

Runs only in the training child process: with domain.learning.sasrec, the only modules of domain/ importing torch.

Data: each user's positive items, oldest first (domain.learning.data), every one kept: an item too rare for an id
embedding (fewer than `minItemUsers` users) still has its features. Each user's newest items (a tenth, 1 to 5:
domain.learning.tuning.validation_tails) are held out as a time-ordered validation slice. Every epoch draws up to
`targetsPerUser` target positions per user in the rest; an example is the target and the `maxLength` items before it.

Loss: a softmax over the batch's targets (in-batch negatives), each logit less the log of its item's probability
of being a target in a batch (logQ correction, Yi et al., RecSys 2019): without it, popular items, which are
everyone's negatives far more often than the catalogue's share, are pushed down for being popular. A batch's
repeats of the user's own target are no negatives. Ids are dropped at random (`idDropout`), so the item tower learns
to place an item from its features alone: the vectors of items without interactions come from those.

Early stopping: NDCG@10 of the held-out items over the whole catalogue (the user's training items excluded), scored
by the dot product as serving scores, after every epoch; training stops after `patience` epochs without a gain or
past its wall-clock budget, and the best epoch's weights are kept.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from domain.learning.content import ContentModel
from domain.learning.epochs import fit_epochs, over, usable_cores
from domain.learning.item_tower import CLIP, ItemTower, coded, is_number
from domain.learning.params import FromParams
from domain.learning.towers import TowerModel
from domain.learning.tuning import ndcg_at, validation_tails
from domain.recommend.base import CatalogueView
from models.two_tower import TwoTower

Progress = Callable[[float, str], None]
K = 10  # NDCG@K on the validation slice
VALIDATION_USERS = 5000
MAX_NUMERIC = 16  # numeric attributes read (the most common ones)
MIN_TAG_ITEMS = 2  # a tag on one item relates it to nothing


@dataclass(frozen=True)
class Settings(FromParams):
    """The model's size and training; the scenario config's `two_tower` params (camelCase) override the defaults."""

    max_length: int = 50
    dim: int = 64
    id_dropout: float = 0.1
    min_item_users: int = 2
    targets_per_user: int = 32
    learning_rate: float = 1e-2
    batch_size: int = 256
    temperature: float = 0.05
    max_epochs: int = 100
    patience: int = 5
    time_budget_seconds: float = 90.0
    seed: int = 7


# --- item features ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ItemFeatures:
    """Every catalogue item's features by code (catalogue index + 1; row 0 is padding), as models.two_tower reads,
    and how they were coded (what the exported item tower needs to code a new item the same way)."""

    ids: np.ndarray  # int64: id embedding row (0: no id embedding)
    categories: np.ndarray  # int64 (items + 1) x width, label codes from 1, 0 padding
    tags: np.ndarray
    numeric: np.ndarray  # float32 (items + 1) x attributes, standardised, 0 where missing
    content: np.ndarray  # float32 (items + 1) x content dim (0 columns without a content model)
    numeric_keys: tuple[str, ...]
    category_labels: tuple[str, ...] = ()  # the label of code i + 1
    tag_labels: tuple[str, ...] = ()
    numeric_mean: np.ndarray = field(default_factory=lambda: np.zeros(0))  # float64 per numeric key
    numeric_scale: np.ndarray = field(default_factory=lambda: np.ones(0))

    @property
    def vocabulary(self) -> int:
        return int(self.ids.max()) if len(self.ids) else 0

    @classmethod
    def build(cls, catalogue: CatalogueView, users: np.ndarray, min_users: int,
              content: np.ndarray | None = None) -> ItemFeatures:
        """Return the features; `users`: training users per item, which decides who has an id embedding."""
        has_id = np.asarray(users) >= min_users
        ids = np.zeros(len(catalogue) + 1, dtype=np.int64)
        ids[1:][has_id] = np.arange(1, int(has_id.sum()) + 1)
        numeric = NumericCoding.fit(catalogue.attributes)
        width = 0 if content is None else content.shape[1]
        dense = np.zeros((len(catalogue) + 1, width), dtype=np.float32)
        if content is not None:
            dense[1:] = content
        categories, tags = label_codes(catalogue.categories, 1), label_codes(catalogue.tags, MIN_TAG_ITEMS)
        return cls(ids, label_matrix(catalogue.categories, categories), label_matrix(catalogue.tags, tags),
                   numeric.values, dense, numeric.keys, categories, tags, numeric.mean, numeric.scale)

    def tensors(self, device: torch.device) -> dict[str, torch.Tensor]:
        return {name: torch.as_tensor(getattr(self, name), device=device)
                for name in ("ids", "categories", "tags", "numeric", "content")}


def label_codes(labels: Sequence[Sequence[str]], min_items: int) -> tuple[str, ...]:
    """Return the labels of at least min_items items, sorted: label i is coded i + 1."""
    counts = Counter(label for own in labels for label in set(own))
    return tuple(sorted(k for k, c in counts.items() if c >= min_items))


def label_matrix(labels: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> np.ndarray:
    """Return each item's first MAX_LABELS distinct labels of the vocabulary, coded from 1, as rows of a
    zero-padded matrix with a padding row 0 on top."""
    code = {label: i + 1 for i, label in enumerate(vocabulary)}
    rows = [coded(own, code) for own in labels]
    out = np.zeros((len(labels) + 1, max([1, *map(len, rows)])), dtype=np.int64)
    for r, row in enumerate(rows, start=1):
        out[r, : len(row)] = row
    return out


@dataclass(frozen=True)
class NumericCoding:
    """The MAX_NUMERIC most common numeric attributes (on two items at least), each item's standardised values
    (clipped to +-CLIP, 0 where missing) with a padding row 0 on top, and the mean and scale they were standardised
    with."""

    keys: tuple[str, ...]
    values: np.ndarray  # float32 (items + 1) x keys
    mean: np.ndarray  # float64 per key
    scale: np.ndarray  # float64 per key

    @classmethod
    def fit(cls, attributes: Sequence[Mapping[str, Any]]) -> NumericCoding:
        coverage = Counter(key for own in attributes for key, value in own.items() if is_number(value))
        keys = tuple(k for k, c in sorted(coverage.items(), key=lambda kc: (-kc[1], kc[0])) if c >= 2)[:MAX_NUMERIC]
        values = np.full((len(attributes) + 1, len(keys)), np.nan, dtype=np.float64)
        for r, own in enumerate(attributes, start=1):
            for c, key in enumerate(keys):
                if is_number(value := own.get(key)):
                    values[r, c] = float(value)
        mean, scale = np.zeros(len(keys)), np.ones(len(keys))
        if keys:
            present = values[1:]
            mean, std = np.nanmean(present, axis=0), np.nanstd(present, axis=0)
            scale = np.where(std > 0, std, 1.0)
            values = np.clip((values - mean) / scale, -CLIP, CLIP)
        return cls(keys, np.nan_to_num(values, nan=0.0).astype(np.float32), mean, scale)


def numeric_matrix(attributes: Sequence[Mapping[str, Any]]) -> tuple[tuple[str, ...], np.ndarray]:
    """Return the numeric attributes read and their standardised values (see NumericCoding)."""
    coding = NumericCoding.fit(attributes)
    return coding.keys, coding.values


# --- examples --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Histories:
    """Users' items as catalogue indexes, oldest first, and how many of each user's newest are held out."""

    indptr: np.ndarray  # int64 (users + 1)
    items: np.ndarray  # int64 catalogue indexes
    held: np.ndarray  # int64 per user

    @classmethod
    def build(cls, indptr: np.ndarray, items: np.ndarray, held: np.ndarray | None = None) -> Histories:
        indptr, items = np.asarray(indptr, dtype=np.int64), np.asarray(items, dtype=np.int64)
        held = validation_tails(np.diff(indptr)) if held is None else np.asarray(held, dtype=np.int64)
        return cls(indptr, items, held)

    @property
    def train_lengths(self) -> np.ndarray:
        return np.diff(self.indptr) - self.held

    def draws(self, per_user: int) -> np.ndarray:
        """Return how many targets each user gives an epoch: up to per_user, one per item after their first."""
        return np.clip(self.train_lengths - 1, 0, per_user)

    def users_per_item(self, n_items: int) -> np.ndarray:
        """Return each item's training users (the held-out tails left out)."""
        return np.bincount(self.items[self._train_mask()], minlength=n_items)

    def target_probabilities(self, n_items: int, per_user: int) -> np.ndarray:
        """Return each item's probability of being an epoch's target: the logQ of the in-batch softmax."""
        lengths, draws = self.train_lengths, self.draws(per_user)
        rate = np.where(lengths > 1, draws / np.maximum(lengths - 1, 1), 0.0)  # per position after the first
        users = np.repeat(np.arange(len(lengths)), np.diff(self.indptr))
        first = np.arange(len(self.items)) == self.indptr[users]
        weights = np.where(self._train_mask() & ~first, rate[users], 0.0)
        counts = np.bincount(self.items, weights=weights, minlength=n_items)
        return counts / max(counts.sum(), 1e-12)

    def _train_mask(self) -> np.ndarray:
        lengths = np.diff(self.indptr)
        users = np.repeat(np.arange(len(lengths)), lengths)
        return np.arange(len(self.items)) - self.indptr[users] < self.train_lengths[users]

    def sample(self, per_user: int, max_len: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Return an epoch's examples: left-padded histories of codes (catalogue index + 1) and target codes."""
        draws = self.draws(per_user)
        users = np.repeat(np.arange(len(draws)), draws)
        lengths = self.train_lengths[users]
        targets = 1 + (rng.random(len(users)) * (lengths - 1)).astype(np.int64)  # a position after the first
        starts = self.indptr[users]
        return _windows(self.items, starts, starts + targets, max_len), self.items[starts + targets] + 1

    def validation(self, max_len: int, rng: np.random.Generator) -> Validation:
        """Return up to VALIDATION_USERS users' newest max_len training items, training items and held-out items."""
        users = np.flatnonzero((self.held > 0) & (self.train_lengths > 0))
        if len(users) > VALIDATION_USERS:
            users = np.sort(rng.choice(users, VALIDATION_USERS, replace=False))
        starts, ends = self.indptr[users], self.indptr[users] + self.train_lengths[users]
        seen = [self.items[s:e] for s, e in zip(starts, ends, strict=True)]
        targets = [set(self.items[e : e + h].tolist()) for e, h in zip(ends, self.held[users], strict=True)]
        return Validation(_windows(self.items, starts, ends, max_len), seen, targets)


def _windows(items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int) -> np.ndarray:
    """Return the codes of items[max(start, end - max_len):end] per row, left-padded with 0."""
    idx = ends[:, None] - max_len + np.arange(max_len)
    return np.where(idx >= starts[:, None], items[np.clip(idx, 0, max(len(items) - 1, 0))] + 1, 0)


@dataclass(frozen=True)
class Validation:
    """The validation slice: each user's input window (codes), training items (excluded) and held-out items."""

    inputs: np.ndarray  # users x max_len, left-padded codes
    seen: list[np.ndarray]  # catalogue indexes per user
    targets: list[set[int]]  # catalogue indexes per user

    def __len__(self) -> int:
        return len(self.targets)


# --- training --------------------------------------------------------------------------------------------------


def train_two_tower(catalogue: CatalogueView, indptr: np.ndarray, items: np.ndarray, params: Mapping[str, Any],
                    content: ContentModel | None = None, progress: Progress | None = None,
                    held: np.ndarray | None = None) -> tuple[TowerModel | None, dict[str, Any]]:
    """Train on users' histories (catalogue indexes, oldest first) and the catalogue's features (`content`: the
    content model, its embeddings aligned with the catalogue, when the scenario has one); return the best epoch's
    export and info. `held`: each user's newest items kept out of training and used for early stopping.

    Returns (None, info) when no user has two items to learn from.
    """
    settings = Settings.from_params(params)
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    threads = usable_cores()
    torch.set_num_threads(threads)  # explicit: the default may count cores this process cannot use
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    histories = Histories.build(indptr, items, held)
    n = len(catalogue)
    dense = None if content is None else np.asarray(content.embeddings)
    features = ItemFeatures.build(catalogue, histories.users_per_item(n), settings.min_item_users, dense)
    examples = int(histories.draws(settings.targets_per_user).sum())
    info: dict[str, Any] = {"device": device.type, "threads": threads, "items": n, "idItems": features.vocabulary,
                            "examplesPerEpoch": examples, "numericAttributes": list(features.numeric_keys),
                            "contentDim": int(features.content.shape[1])}
    if examples == 0:
        return None, {**info, "epochs": 0, "seconds": round(time.perf_counter() - started, 3)}
    model = TwoTower(features.tensors(device), vocabulary=features.vocabulary, dim=settings.dim,
                     max_len=settings.max_length, id_dropout=settings.id_dropout).to(device)
    log_q = torch.as_tensor(np.log(np.maximum(histories.target_probabilities(n, settings.targets_per_user), 1e-12)),
                            dtype=torch.float32, device=device)
    fit = _fit(model, histories, log_q, histories.validation(settings.max_length, rng), settings, rng, device,
               started, progress)
    info.update(fit, seconds=round(time.perf_counter() - started, 3))
    return export(model, settings.temperature, features, content), info


def _fit(model: TwoTower, histories: Histories, log_q: torch.Tensor, validation: Validation, settings: Settings,
         rng: np.random.Generator, device: torch.device, started: float,
         progress: Progress | None) -> dict[str, Any]:
    """Train epoch by epoch, keep the best epoch's weights in the model; return what happened."""
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate)

    def run_epoch() -> float:
        history, targets = histories.sample(settings.targets_per_user, settings.max_length, rng)
        return _epoch(model, optimizer, history, targets, log_q, settings, rng, device, started)

    validate = (lambda: _ndcg(model, validation, device)) if len(validation) else None
    return {**fit_epochs(model, settings, started, run_epoch, validate, progress, "two_tower"),
            "validationUsers": len(validation)}


def _epoch(model: TwoTower, optimizer: torch.optim.Optimizer, history: np.ndarray, targets: np.ndarray,
           log_q: torch.Tensor, settings: Settings, rng: np.random.Generator, device: torch.device,
           started: float) -> float:
    """Run one pass over the examples in random order (stopping early past the time budget); return the mean loss."""
    order = rng.permutation(len(targets))
    total, batches = 0.0, 0
    for start in range(0, len(order), settings.batch_size):
        chosen = order[start : start + settings.batch_size]
        loss = _loss(model, torch.as_tensor(history[chosen], device=device),
                     torch.as_tensor(targets[chosen], device=device), log_q, settings.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, batches = total + loss.item(), batches + 1
        if over(settings, started):
            break
    return total / max(batches, 1)


def _loss(model: TwoTower, history: torch.Tensor, targets: torch.Tensor, log_q: torch.Tensor,
          temperature: float) -> torch.Tensor:
    """Return the in-batch softmax cross-entropy with the logQ correction (targets are codes, log_q by index)."""
    users, items = model(history, targets)
    logits = users @ items.T / temperature - log_q[targets - 1][None, :]
    same = (targets[None, :] == targets[:, None]) & ~torch.eye(len(targets), dtype=torch.bool, device=targets.device)
    logits = logits.masked_fill(same, float("-inf"))  # another row's copy of my target is no negative
    return F.cross_entropy(logits, torch.arange(len(targets), device=targets.device))


@torch.no_grad()
def _ndcg(model: TwoTower, validation: Validation, device: torch.device, batch: int = 512) -> float:
    """Return the mean NDCG@K of the held-out items, ranking the catalogue less each user's training items."""
    model.eval()
    vectors = _all_items(model)
    total = 0.0
    for start in range(0, len(validation), batch):
        inputs = torch.as_tensor(validation.inputs[start : start + batch], device=device)
        scores = model.user_vectors(inputs, model.item_vectors(inputs)) @ vectors.T
        for r, seen in enumerate(validation.seen[start : start + batch]):
            scores[r, torch.as_tensor(seen, device=device)] = -float("inf")
        top = torch.topk(scores, min(K, scores.shape[1]), dim=1).indices.cpu().numpy()
        total += sum(ndcg_at(row.tolist(), validation.targets[start + r], K) for r, row in enumerate(top))
    return total / len(validation)


def _all_items(model: TwoTower) -> torch.Tensor:
    codes = torch.arange(1, len(model.ids), device=model.ids.device)
    return model.item_vectors(codes)


@torch.no_grad()
def export(model: TwoTower, temperature: float, features: ItemFeatures | None = None,
           content: ContentModel | None = None) -> TowerModel:
    """Return every catalogue item's vector and the user tower's weights as the numpy arrays serving reads; with the
    features' coding, the item tower too (`content`: the content model whose embeddings it read)."""
    model.eval()
    codes = torch.arange(1, len(model.ids), device=model.ids.device)
    return TowerModel(
        item_vectors=_array(model.item_vectors(codes)), item_preferences=_array(model.item_preferences(codes)),
        positions=_array(model.positions), user_in_w=_array(model.user_in.weight.T),
        user_in_b=_array(model.user_in.bias), user_out_w=_array(model.user_out.weight.T),
        user_out_b=_array(model.user_out.bias), temperature=float(temperature),
        items=None if features is None else _item_tower(model, features, content),
    )


def _item_tower(model: TwoTower, features: ItemFeatures, content: ContentModel | None) -> ItemTower:
    """Return the item tower's weights with the features' coding: a new item's vector without the id embedding."""
    dim = model.item_in.in_features

    def linear(layer: torch.nn.Linear | None, width: int) -> tuple[np.ndarray, np.ndarray]:
        if layer is None:
            return np.zeros((width, dim), np.float32), np.zeros(dim, np.float32)
        bias = layer.bias if layer.bias is not None else torch.zeros(dim)
        return _array(layer.weight.T), _array(bias)

    numeric_w, numeric_b = linear(model.numeric_map, 0)
    content_w, _ = linear(model.content_map, 0)
    item_in_w, item_in_b = linear(model.item_in, dim)
    item_out_w, item_out_b = linear(model.item_out, dim)
    return ItemTower(
        categories=features.category_labels, tags=features.tag_labels, numeric_keys=features.numeric_keys,
        numeric_mean=np.asarray(features.numeric_mean, np.float64),
        numeric_scale=np.asarray(features.numeric_scale, np.float64),
        category_embedding=_array(model.category_embedding.weight), tag_embedding=_array(model.tag_embedding.weight),
        numeric_w=numeric_w, numeric_b=numeric_b, content_w=content_w, item_in_w=item_in_w, item_in_b=item_in_b,
        item_out_w=item_out_w, item_out_b=item_out_b, content=content if content_w.shape[0] else None,
    )


def _array(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())
