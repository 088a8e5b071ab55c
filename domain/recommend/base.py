"""What every pipeline stage shares: the request, the catalogue view, candidate lists, the stage Protocols and the
registry that scenario configs name stages through.

Adding a stage is one file (a class with a `name`) and one `register(...)` line; `domain.scenarios.stages` lists
the names a config may use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, runtime_checkable

import numpy as np
from redis.exceptions import RedisError

from models.cache import CacheUnavailable
from models.vectors.protocol import VectorStoreError

if TYPE_CHECKING:
    from domain.recommend.recall.context import RecallContext

# A recall source failing for one of these lost its store; anything else is a fault of its own.
STORE_FAILURES = (ConnectionError, OSError, RedisError, CacheUnavailable, VectorStoreError)


@dataclass(frozen=True, slots=True)
class RecRequest:
    """One ask for recommendations, as the serving layer (or the offline evaluation) builds it."""

    user_id: str
    limit: int
    history: Sequence[str] = ()  # the user's items, oldest first (training history and live interactions)
    # The type and value (None: unknown) of the event behind each of the newest history items, aligned with the end
    # of `history` (fewer entries: the older items' events are unknown). Read by sasrec with event features.
    history_events: Sequence[tuple[str | None, float | None]] = ()
    exclude: frozenset[str] = frozenset()  # never return these (seen items when excludeSeen, already-served pages)
    context: Mapping[str, Any] = field(default_factory=dict)  # request context (region, device, ...)
    category_prefs: Mapping[str, float] = field(default_factory=dict)  # from the profile, strongest first
    tag_prefs: Mapping[str, float] = field(default_factory=dict)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))  # time reference for decay and rules
    debug: bool = False
    page_size: int | None = None  # items per served page (per-page rerankers); None: the whole list is one page

    @property
    def page(self) -> int:
        """Return the served page size: page_size when given, else limit."""
        return self.page_size if self.page_size else self.limit


@dataclass(frozen=True, slots=True)
class Recommendation:
    item_id: str
    score: float
    sources: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RecResult:
    items: list[Recommendation]
    debug: dict[str, Any] | None = None


@dataclass
class CatalogueView:
    """Item metadata as aligned arrays; the item index space every model array and candidate list uses."""

    item_ids: list[str]
    titles: list[str | None]
    categories: list[tuple[str, ...]]
    tags: list[tuple[str, ...]]
    attributes: list[Mapping[str, Any]]
    published_at: np.ndarray  # float64 epoch seconds, NaN when unknown
    active: np.ndarray  # bool: status ACTIVE and not deleted
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {item_id: i for i, item_id in enumerate(self.item_ids)}

    def __len__(self) -> int:
        return len(self.item_ids)

    @classmethod
    def from_items(cls, items: Iterable[Mapping[str, Any]]) -> CatalogueView:
        """Build from item documents (MongoDB dicts: item_id, title, categories, tags, attributes, published_at,
        status)."""
        rows = list(items)
        published = [r.get("published_at") for r in rows]
        return cls(
            item_ids=[r["item_id"] for r in rows],
            titles=[r.get("title") for r in rows],
            categories=[tuple(r.get("categories") or ()) for r in rows],
            tags=[tuple(r.get("tags") or ()) for r in rows],
            attributes=[r.get("attributes") or {} for r in rows],
            published_at=np.array([_epoch(p) for p in published], dtype=np.float64),
            active=np.array([(r.get("status") or "ACTIVE") == "ACTIVE" for r in rows], dtype=bool),
        )

    def indexes(self, item_ids: Iterable[str]) -> np.ndarray:
        """Return the indexes of the known ids among item_ids, in order (unknown ids are skipped)."""
        get = self.index.get
        found = np.array([get(i, -1) for i in item_ids], dtype=np.int64)
        return found[found >= 0] if len(found) and found.min() < 0 else found

    def mask(self, item_ids: Iterable[str]) -> np.ndarray:
        """Return a bool mask over the catalogue: True for the known ids among item_ids."""
        out = np.zeros(len(self.item_ids), dtype=bool)
        out[self.indexes(item_ids)] = True
        return out

    @cached_property
    def category_codes(self) -> LabelCodes:
        """Return each item's distinct categories as integer codes (built once per view)."""
        return LabelCodes.build(self.categories)


@dataclass(frozen=True)
class LabelCodes:
    """Per-item label sets as CSR arrays: item i has labels codes[indptr[i]:indptr[i + 1]] (distinct)."""

    indptr: np.ndarray  # int64, items + 1
    codes: np.ndarray  # int64 label codes
    vocabulary: int  # number of distinct labels

    @classmethod
    def build(cls, labels: Sequence[Sequence[str]]) -> LabelCodes:
        """Encode label lists (duplicates within an item counted once)."""
        vocabulary: dict[str, int] = {}
        codes: list[int] = []
        lengths = np.zeros(len(labels) + 1, dtype=np.int64)
        for row, own in enumerate(labels):
            distinct = dict.fromkeys(own)
            codes.extend(vocabulary.setdefault(label, len(vocabulary)) for label in distinct)
            lengths[row + 1] = len(distinct)
        return cls(np.cumsum(lengths), np.asarray(codes, dtype=np.int64), len(vocabulary))

    def rows(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (position in idx, label code) pairs for the items at idx, as two aligned arrays."""
        starts, ends = self.indptr[idx], self.indptr[np.asarray(idx) + 1]
        lengths = ends - starts
        positions = np.repeat(np.arange(len(idx)), lengths)
        # Offset of each pair within its item's run, added to the run's start.
        within = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        return positions, self.codes[np.repeat(starts, lengths) + within]


def _epoch(value: datetime | None) -> float:
    if value is None:
        return float("nan")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.timestamp()


@dataclass(frozen=True, slots=True)
class Candidates:
    """One recall source's answer: item indexes and raw scores (higher is better)."""

    idx: np.ndarray  # int64
    scores: np.ndarray  # float32, aligned with idx

    @classmethod
    def empty(cls) -> Candidates:
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))

    def __len__(self) -> int:
        return len(self.idx)


@dataclass
class Ranked:
    """A ranked list: item indexes best first, their scores, and which sources proposed each."""

    idx: np.ndarray
    scores: np.ndarray
    sources: list[tuple[str, ...]]
    source_scores: dict[str, np.ndarray] = field(default_factory=dict)  # per source, aligned with idx (debug)

    def take(self, order: np.ndarray | Sequence[int]) -> Ranked:
        """Return the list reordered/subset by positions."""
        order = np.asarray(order, dtype=np.int64)
        return Ranked(
            idx=self.idx[order], scores=self.scores[order], sources=[self.sources[i] for i in order],
            source_scores={k: v[order] for k, v in self.source_scores.items()},
        )


@dataclass(frozen=True)
class StageContext:
    """What a filter, ranker or reranker may read."""

    request: RecRequest
    catalogue: CatalogueView
    params: Mapping[str, Any]  # this stage's params from the scenario config (defaults filled in)
    config: Mapping[str, Any]  # the whole scenario config
    embeddings: np.ndarray | None = None  # item embeddings aligned with the catalogue, when a model has them
    exclude_mask: np.ndarray | None = None  # request.exclude as a bool mask over the catalogue, when computed
    recall: RecallContext | None = None  # the request as the recall sources read it: what a learned ranker reads

    @property
    def now_ts(self) -> float:
        """Return the request's time reference as epoch seconds."""
        return self.request.now.timestamp()


class Filter(Protocol):
    name: ClassVar[str]

    def keep(self, idx: np.ndarray, ctx: StageContext) -> np.ndarray:
        """Return a bool mask over idx: True for items that may be recommended."""
        ...


class Ranker(Protocol):
    name: ClassVar[str]

    def rank(self, per_source: Mapping[str, Candidates], ctx: StageContext) -> Ranked:
        """Fuse the recall sources' candidates into one ranked list."""
        ...


class Reranker(Protocol):
    name: ClassVar[str]

    def rerank(self, ranked: Ranked, ctx: StageContext) -> Ranked:
        """Return the list reordered (and possibly with items inserted or removed)."""
        ...


@runtime_checkable
class RecallSource(Protocol):
    name: ClassVar[str]

    async def recall(self, ctx: Any, limit: int) -> Candidates:
        """Return up to `limit` candidates for the request in ctx (a RecallContext, defined with the recall stages)."""
        ...


class Registry:
    """Stage classes by kind and name."""

    def __init__(self) -> None:
        self._stages: dict[str, dict[str, type]] = {"recall": {}, "filter": {}, "ranker": {}, "reranker": {}}

    def register(self, kind: str, cls: type) -> type:
        """Register a stage class under its `name`; usable as a decorator via `registry.recall` etc."""
        self._stages[kind][cls.name] = cls
        return cls

    def recall(self, cls: type) -> type:
        return self.register("recall", cls)

    def filter(self, cls: type) -> type:
        return self.register("filter", cls)

    def ranker(self, cls: type) -> type:
        return self.register("ranker", cls)

    def reranker(self, cls: type) -> type:
        return self.register("reranker", cls)

    def get(self, kind: str, name: str) -> type:
        """Return the class registered under name, or raise KeyError naming what is known."""
        try:
            return self._stages[kind][name]
        except KeyError:
            known = ", ".join(sorted(self._stages[kind]))
            raise KeyError(f"no {kind} stage {name!r}; known: {known}") from None

    def names(self, kind: str) -> frozenset[str]:
        """Return the registered names of a kind."""
        return frozenset(self._stages[kind])


REGISTRY = Registry()


def drop_reason(exc: BaseException) -> str:
    """Return the fixed reason `debug` gives for a failed source (exception text may name hosts, paths or data)."""
    return "store unavailable" if isinstance(exc, STORE_FAILURES) else "error"
