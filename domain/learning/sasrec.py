"""Train SASRec (models.sasrec) on a scenario's user histories, and export it as numpy arrays for serving.

Runs only in the training child process: it is the one module of domain/ that imports torch.

Data: each user's positive items, oldest first, exactly as serving reads a history (domain.learning.data), less
the items of fewer than `minItemUsers` users (too rare to learn; serving skips them too). Each user's newest items
(a tenth, 1 to 5: domain.learning.tuning.validation_tails) are held out as a time-ordered validation slice; the
rest is cut from its newest end into windows of max_len inputs, and every position learns to predict each of the
`targetSpan` items after it (a "dense all-action" objective, Pancha et al., PinnerFormer, KDD 2022). A span of 1
is the original next-item task; a longer one serves a feed better, whose list is consumed over the following items,
not only the next. Chosen on ml-latest-small without its test part (each user's newest fifth of the training part
held out and scored through the serving engine): NDCG@10 0.110 with span 1 and 0.119 with span 8 at learning rate
0.005 and every item; 0.135 with span 8 at 0.01 and minItemUsers 3 (span 16 there: 0.121; minItemUsers 5: 0.131).

Loss: cross-entropy over the full softmax of every item while the vocabulary is at most `fullSoftmaxItems`, else a
sampled softmax over `negatives` uniformly drawn items shared by the batch (uniform draws make the logQ correction a
constant, so it drops out). Many negatives, never one: with a single negative (binary cross-entropy) SASRec is far
behind its softmax-trained form on full-ranking metrics (Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is
BERT4Rec really better than SASRec?", RecSys 2023; Petrov & Macdonald, "gSASRec", RecSys 2023).

Event features: with `eventTypes` (on by default), where the histories hold more than one event type, each position
also reads its event's type; with `eventValues` (off by default), where events hold values (watch seconds, ratings),
its value's bucket (its quantile among the training values of its type, VALUE_BUCKETS at most;
domain.learning.sequences.value_buckets). The event of a position is the user's newest positive event on the item,
the one that places it in the history (domain.learning.data). Without either the model is the plain SASRec. Values
are off by default because on ml-latest-small, the one dataset at hand with values (star ratings, one type), they
did not help SASRec alone on the temporal split: NDCG@10 0.1222 with them, 0.1235 without (mean of seeds 7 and 8,
40 epochs at most); no dataset at hand has several types, and one type trains the plain model.

Early stopping: NDCG@10 of the held-out items over the full vocabulary (the user's training items excluded) after
every epoch; training stops after `patience` epochs without a gain or past its wall-clock budget, and the best
epoch's weights are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from domain.learning.epochs import fit_epochs, over, usable_cores
from domain.learning.params import FromParams
from domain.learning.sequences import SequenceModel, value_buckets, value_edges
from domain.learning.tuning import ndcg_at, validation_tails
from models.sasrec import SASRec

Progress = Callable[[float, str], None]
K = 10  # NDCG@K on the validation slice
VALIDATION_USERS = 5000  # validating on more users sharpens nothing that matters and costs every epoch
LOGIT_FLOATS = 1 << 26  # a batch's logits hold at most this many floats (256 MiB), for the loss and its gradient
VALUE_BUCKETS = 16  # value buckets per event type (fewer where its values take fewer distinct quantiles)


@dataclass(frozen=True)
class Settings(FromParams):
    """SASRec's size and training; the scenario config's `sasrec` params (camelCase) override the defaults."""

    max_length: int = 50
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    dropout: float = 0.2
    target_span: int = 8
    min_item_users: int = 3
    min_users: int = 200  # fewer users with an order to learn from: not trained, the other sources serve
    learning_rate: float = 1e-2
    batch_size: int = 128
    max_epochs: int = 200
    patience: int = 10
    time_budget_seconds: float = 150.0
    full_softmax_items: int = 50_000
    negatives: int = 2048
    event_types: bool = True
    event_values: bool = False
    seed: int = 7


@dataclass(frozen=True)
class Histories:
    """Users' items as vocabulary positions (1..V), oldest first, split into a training part and a held-out tail."""

    vocabulary: np.ndarray  # int32: model catalogue index of vocabulary position p + 1
    indptr: np.ndarray  # int64 (users + 1) over items
    items: np.ndarray  # int64 vocabulary positions
    held: np.ndarray  # int64 per user: how many of the newest items are held out for validation
    events: Events | None = None  # each item's event type row and value bucket (None: the model reads neither)

    @classmethod
    def build(cls, indptr: np.ndarray, items: np.ndarray, min_users: int = 1,
              held: np.ndarray | None = None, events: EventColumns | None = None) -> Histories:
        """Map model catalogue indexes to a vocabulary of the items of at least min_users users (the others leave
        the sequences, as serving drops items the model does not know), and choose each held-out tail.

        `held` gives each user's held-out tail in the unfiltered history (the training's validation slice,
        domain.learning.tuning), so that SASRec never trains on an item the blend is fitted to predict; without it
        the tail is chosen here by the same rule. `events` (aligned with items) become the model's event features
        where the kept items have more than one type or any value."""
        indptr, items = np.asarray(indptr, dtype=np.int64), np.asarray(items, dtype=np.int64)
        lengths = np.diff(indptr)
        users = np.repeat(np.arange(len(lengths)), lengths)
        if held is None:
            held = validation_tails(lengths)
        in_tail = np.arange(len(items)) - indptr[users] >= np.repeat(lengths - np.asarray(held), lengths)
        kept = np.bincount(items)[items] >= min_users if len(items) else np.ones(0, dtype=bool)
        held = np.bincount(users[kept & in_tail], minlength=len(lengths)).astype(np.int64)
        items, users = items[kept], users[kept]
        indptr = np.r_[0, np.cumsum(np.bincount(users, minlength=len(lengths)))].astype(np.int64)
        vocabulary, positions = np.unique(items, return_inverse=True)
        features = Events.of(events.kept(kept)) if events is not None else None
        return cls(vocabulary.astype(np.int32), indptr, positions.astype(np.int64) + 1, held, features)

    @property
    def train_lengths(self) -> np.ndarray:
        return np.diff(self.indptr) - self.held

    def windows(self, max_len: int, span: int = 1) -> Windows:
        """Return the training parts cut from their newest end into windows of max_len inputs, left-padded, each
        followed by the `span` items after its last input (0 past the training part), with the inputs' events."""
        lengths = self.train_lengths
        count = np.where(lengths >= 2, -(-(lengths - 1) // max_len), 0)
        users = np.repeat(np.arange(len(lengths)), count)
        within = np.arange(int(count.sum())) - np.repeat(np.cumsum(count) - count, count)
        starts = self.indptr[users]
        ends = starts + lengths[users] - within * max_len  # one past the item after the last input
        idx = ends[:, None] - (max_len + 1) + np.arange(max_len + span)
        real = (idx >= starts[:, None]) & (idx < (starts + lengths[users])[:, None])
        clipped = np.clip(idx, 0, len(self.items) - 1)
        inputs = (clipped[:, :max_len], real[:, :max_len])
        return Windows(np.where(real, self.items[clipped], 0), *self._events_at(*inputs))

    def _events_at(self, idx: np.ndarray, real: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Return the type rows and value buckets at item positions idx (0 where not real), or None for each the
        model does not read."""
        if self.events is None or not len(self.items):
            return None, None
        types, buckets = self.events.types, self.events.buckets  # int32 below: half the memory of the windows' ids
        return (None if types is None else np.where(real, types[idx], 0).astype(np.int32),
                None if buckets is None else np.where(real, buckets[idx], 0).astype(np.int32))

    def validation(self, max_len: int, rng: np.random.Generator) -> Validation:
        """Return the inputs (the newest max_len training items) and targets of up to VALIDATION_USERS users."""
        users = np.flatnonzero((self.held > 0) & (self.train_lengths > 0))
        if len(users) > VALIDATION_USERS:
            users = np.sort(rng.choice(users, VALIDATION_USERS, replace=False))
        starts, ends = self.indptr[users], self.indptr[users] + self.train_lengths[users]
        idx = ends[:, None] - max_len + np.arange(max_len)
        real = idx >= starts[:, None]
        inputs = np.where(real, self.items[np.maximum(idx, 0)], 0)
        types, buckets = self._events_at(np.maximum(idx, 0), real)
        seen_rows = np.repeat(np.arange(len(users)), ends - starts)
        seen = self.items[np.concatenate([np.arange(s, e) for s, e in zip(starts, ends, strict=True)])] \
            if len(users) else np.empty(0, np.int64)
        targets = [set(self.items[e : e + h].tolist()) for e, h in zip(ends, self.held[users], strict=True)]
        return Validation(inputs, seen_rows, seen, targets, types, buckets)


@dataclass(frozen=True)
class EventColumns:
    """The event behind each history item, aligned with the items (domain.learning.data.Interactions)."""

    types: np.ndarray  # int: index into names
    values: np.ndarray  # float: NaN where the event has none
    names: tuple[str, ...]

    def kept(self, mask: np.ndarray) -> EventColumns:
        return EventColumns(np.asarray(self.types)[mask], np.asarray(self.values, dtype=np.float64)[mask], self.names)

    def reading(self, *, types: bool, values: bool) -> EventColumns:
        """Return the columns with the types (as one type) or the values (as none) hidden where not read."""
        return EventColumns(self.types if types else np.zeros(len(self.types), dtype=np.int64),
                            self.values if values else np.full(len(self.values), np.nan), self.names)


@dataclass(frozen=True)
class Events:
    """The event features the model reads: type rows (1.., one per type seen) and value buckets, per item."""

    names: tuple[str, ...]  # the type of each row from 1
    types: np.ndarray | None  # int64 rows; None: one type only, nothing to tell apart
    buckets: np.ndarray | None  # int64 buckets (0: no value); None: no values
    edges: np.ndarray | None  # value_edges of the buckets

    @classmethod
    def of(cls, columns: EventColumns) -> Events | None:
        """Return the features of the kept items' events; None when they have one type and no value."""
        present, rows = np.unique(np.asarray(columns.types, dtype=np.int64), return_inverse=True)
        values = np.asarray(columns.values, dtype=np.float64)
        typed, valued = len(present) > 1, bool(np.isfinite(values).any())
        if not typed and not valued:
            return None
        type_rows = rows.astype(np.int64) + 1 if typed else None
        names = tuple(columns.names[t] for t in present.tolist()) if typed else ()
        edges = value_edges(values, type_rows, len(names), VALUE_BUCKETS) if valued else None
        buckets = value_buckets(edges, values, type_rows) if edges is not None else None
        return cls(names, type_rows, buckets, edges)


@dataclass(frozen=True)
class Windows:
    """Training windows: inputs and targets (windows x (max_len + span)) and the inputs' event features."""

    items: np.ndarray
    types: np.ndarray | None  # windows x max_len
    buckets: np.ndarray | None

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Validation:
    """The validation slice: each user's input window, training items (excluded from ranking) and held-out items."""

    inputs: np.ndarray  # users x max_len, left-padded vocabulary positions
    seen_rows: np.ndarray  # int64: row of each (row, item) pair to exclude
    seen_items: np.ndarray  # int64 vocabulary positions
    targets: list[set[int]]
    types: np.ndarray | None = None  # users x max_len type rows of the inputs (None: not read)
    buckets: np.ndarray | None = None  # users x max_len value buckets of the inputs

    def __len__(self) -> int:
        return len(self.targets)


def train_sasrec(indptr: np.ndarray, items: np.ndarray, params: Mapping[str, Any],
                 progress: Progress | None = None, held: np.ndarray | None = None,
                 events: EventColumns | None = None) -> tuple[SequenceModel | None, dict[str, Any]]:
    """Train on users' histories (model catalogue indexes, oldest first); return the best epoch's export and info.

    `held`: each user's newest items kept out of training and used for early stopping (see Histories.build).
    `events`: the event behind each item, read as features as `eventTypes` and `eventValues` say.
    Returns (None, info) when fewer than `minUsers` users have two items to learn an order from.
    """
    settings = Settings.from_params(params)
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    threads = usable_cores()
    torch.set_num_threads(threads)  # explicit: the default may count cores this process cannot use
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    histories = Histories.build(indptr, items, settings.min_item_users, held,
                                None if events is None else
                                events.reading(types=settings.event_types, values=settings.event_values))
    windows = histories.windows(settings.max_length, settings.target_span)
    info: dict[str, Any] = {"device": device.type, "threads": threads, "items": len(histories.vocabulary),
                            "windows": len(windows), "loss": _loss_name(settings, len(histories.vocabulary)),
                            "eventFeatures": _feature_names(histories.events)}
    learners = int((histories.train_lengths >= 2).sum())
    if len(windows) == 0 or learners < settings.min_users:
        # A transformer over a few dozen users learns noise; the scenario's other sources serve until it grows.
        return None, {**info, "epochs": 0, "seconds": round(time.perf_counter() - started, 3),
                      "skipped": f"{learners} users with two items or more; minUsers is {settings.min_users}"}
    features = histories.events
    model = SASRec(len(histories.vocabulary), max_len=settings.max_length, dim=settings.dim,
                   blocks=settings.blocks, heads=settings.heads, dropout=settings.dropout,
                   types=len(features.names) if features is not None and features.types is not None else 0,
                   buckets=VALUE_BUCKETS if features is not None and features.buckets is not None else 0).to(device)
    fit = _fit(model, windows, histories.validation(settings.max_length, rng), settings, rng, device, started,
               progress)
    info.update(fit, seconds=round(time.perf_counter() - started, 3))
    return export(model, histories.vocabulary, features), info


def _feature_names(events: Events | None) -> list[str]:
    if events is None:
        return []
    return [name for name, on in (("types", events.types is not None), ("values", events.buckets is not None)) if on]


def _loss_name(settings: Settings, vocabulary: int) -> str:
    return "softmax" if vocabulary <= settings.full_softmax_items else f"sampled softmax ({settings.negatives})"


def _fit(model: SASRec, windows: Windows, validation: Validation, settings: Settings, rng: np.random.Generator,
         device: torch.device, started: float, progress: Progress | None) -> dict[str, Any]:
    """Train epoch by epoch, keep the best epoch's weights in the model; return what happened."""
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, betas=(0.9, 0.98))
    batch = _batch_size(settings, model.items.num_embeddings - 1)

    def run_epoch() -> float:
        return _epoch(model, optimizer, windows, batch, settings, rng, device, started)

    validate = (lambda: _ndcg(model, validation, device)) if len(validation) else None
    return {**fit_epochs(model, settings, started, run_epoch, validate, progress, "sasrec"),
            "validationUsers": len(validation)}


def _batch_size(settings: Settings, vocabulary: int) -> int:
    """Return the batch size, smaller where a full softmax's logits would not fit LOGIT_FLOATS."""
    width = vocabulary if vocabulary <= settings.full_softmax_items else settings.negatives + 1
    return int(max(1, min(settings.batch_size, LOGIT_FLOATS // (settings.max_length * width))))


def _epoch(model: SASRec, optimizer: torch.optim.Optimizer, windows: Windows, batch: int, settings: Settings,
           rng: np.random.Generator, device: torch.device, started: float) -> float:
    """Run one pass over the windows in random order (stopping early past the time budget); return the mean loss."""
    order = rng.permutation(len(windows))
    total, batches = 0.0, 0
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        chunk = torch.as_tensor(windows.items[rows], device=device)
        n = settings.max_length
        targets = torch.stack([chunk[:, j + 1 : j + 1 + n] for j in range(settings.target_span)], dim=-1)
        events = (_tensor(windows.types, rows, device), _tensor(windows.buckets, rows, device))
        loss = _loss(model, chunk[:, :n], events, targets, settings, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total, batches = total + loss.item(), batches + 1
        if over(settings, started):
            break
    return total / max(batches, 1)


def _tensor(array: np.ndarray | None, rows: np.ndarray, device: torch.device) -> torch.Tensor | None:
    return None if array is None else torch.as_tensor(array[rows], device=device)


def _loss(model: SASRec, inputs: torch.Tensor, events: tuple[torch.Tensor | None, torch.Tensor | None],
          targets: torch.Tensor, settings: Settings, rng: np.random.Generator) -> torch.Tensor:
    """Return the mean cross-entropy of the items after every real position (targets: batch x length x span; 0 is
    no item), each against the full softmax, or a sampled one over a large vocabulary."""
    real = inputs > 0
    hidden, target = model(inputs, *events)[real], targets[real]
    present = target > 0
    vectors = model.item_vectors()
    vocabulary = vectors.shape[0] - 1
    if vocabulary <= settings.full_softmax_items:
        log_p = torch.log_softmax(hidden @ vectors[1:].T, dim=-1).gather(1, (target - 1).clamp(min=0))
        return -(log_p * present).sum() / present.sum()
    negatives = torch.as_tensor(rng.integers(1, vocabulary + 1, settings.negatives), device=hidden.device)
    hits = (negatives[None, :, None] == target[:, None, :]).any(-1)  # a drawn item that is a target is no negative
    sampled = torch.logsumexp((hidden @ vectors[negatives].T).masked_fill(hits, float("-inf")), dim=1)
    positive = (hidden[:, None, :] * vectors[target]).sum(-1)
    return ((torch.logaddexp(positive, sampled[:, None]) - positive) * present).sum() / present.sum()


@torch.no_grad()
def _ndcg(model: SASRec, validation: Validation, device: torch.device, batch: int = 256) -> float:
    """Return the mean NDCG@K of the held-out items, ranking the whole vocabulary less each user's training items."""
    model.eval()
    vectors = model.item_vectors()
    total = 0.0
    for start in range(0, len(validation), batch):
        stop = min(start + batch, len(validation))
        inputs = torch.as_tensor(validation.inputs[start:stop], device=device)
        rows = np.arange(start, stop)
        events = (_tensor(validation.types, rows, device), _tensor(validation.buckets, rows, device))
        scores = model(inputs, *events)[:, -1] @ vectors.T  # column 0 is padding
        scores[:, 0] = -float("inf")
        pairs = (validation.seen_rows >= start) & (validation.seen_rows < stop)
        rows = torch.as_tensor(validation.seen_rows[pairs] - start, device=device)
        scores[rows, torch.as_tensor(validation.seen_items[pairs], device=device)] = -float("inf")
        top = torch.topk(scores, K, dim=1).indices.cpu().numpy()
        total += sum(ndcg_at(row.tolist(), validation.targets[start + r], K) for r, row in enumerate(top))
    return total / len(validation)


def export(model: SASRec, vocabulary: np.ndarray, events: Events | None = None) -> SequenceModel:
    """Return the module's weights as the numpy arrays that serving's forward pass reads (with the event types'
    names and the value buckets' edges the module's event embeddings were trained with)."""
    state = {k: v.detach().to("cpu", torch.float32).numpy().copy() for k, v in model.state_dict().items()}
    names = {"attn_norm_w": ("attn_norm.weight", False), "attn_norm_b": ("attn_norm.bias", False),
             "wq": ("query.weight", True), "bq": ("query.bias", False), "wk": ("key.weight", True),
             "bk": ("key.bias", False), "wv": ("value.weight", True), "bv": ("value.bias", False),
             "wo": ("out.weight", True), "bo": ("out.bias", False), "ffn_norm_w": ("ffn_norm.weight", False),
             "ffn_norm_b": ("ffn_norm.bias", False), "w1": ("ffn_in.weight", True), "b1": ("ffn_in.bias", False),
             "w2": ("ffn_out.weight", True), "b2": ("ffn_out.bias", False)}

    def stacked(key: str, transpose: bool) -> np.ndarray:
        layers = [state[f"blocks.{b}.{key}"] for b in range(len(model.blocks))]
        return np.ascontiguousarray(np.stack([w.T if transpose else w for w in layers]))

    return SequenceModel(
        items=np.asarray(vocabulary, dtype=np.int32), item_embeddings=state["items.weight"],
        positions=state["positions.weight"], blocks={n: stacked(k, t) for n, (k, t) in names.items()},
        norm_w=state["norm.weight"], norm_b=state["norm.bias"], heads=model.heads,
        event_types=events.names if events is not None and model.types is not None else (),
        type_embeddings=state.get("types.weight"), bucket_embeddings=state.get("buckets.weight"),
        value_edges=events.edges if events is not None and model.buckets is not None else None,
    )
