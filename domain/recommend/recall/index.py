"""Lookups built once per engine (model + live catalogue) so that each request reads arrays, not documents."""

from __future__ import annotations

import itertools
from collections import OrderedDict, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from domain.learning.model import ScenarioModel
from domain.learning.towers import TowerModel
from domain.recommend.base import CatalogueView

PER_LABEL = 1000  # items kept per category/tag list, most popular first
MISMATCH = 0.25  # score factor for an item whose attribute contradicts the request context
LOOK_ALIKES_KEPT = 8192  # content neighbour lists kept in the process (about 5 KB each for a 300-item search)


@dataclass
class CatalogueIndex:
    """The serving catalogue with the model's item scores translated into its index space."""

    catalogue: CatalogueView
    to_catalogue: np.ndarray | None  # model index -> catalogue index (-1: gone); None when the same view
    to_model: np.ndarray | None  # catalogue index -> model index (-1: unknown to the model)
    popularity: np.ndarray  # float32 per catalogue item (0 for items newer than the model)
    counts: np.ndarray  # float32 users per catalogue item in training (0 for items newer than the model)
    popular_order: np.ndarray  # active catalogue indexes, most popular first, then newest first
    newest_order: np.ndarray  # catalogue indexes with a publish time, newest first
    newest_times: np.ndarray  # their publish times, descending
    by_category: dict[str, np.ndarray]
    by_tag: dict[str, np.ndarray]
    embeddings: np.ndarray | None  # content embeddings per catalogue item (rows of zeros when unknown)
    look_alikes: LookAlikes | None = field(default=None)  # each item's nearest items by content, kept once computed
    towers: TowerModel | None = None  # the model's two towers, for `tower_vectors`
    _towers: tuple[np.ndarray, np.ndarray | None] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.look_alikes is None and self.embeddings is not None:
            self.look_alikes = LookAlikes(self.embeddings)

    @classmethod
    def build(cls, model: ScenarioModel | None, catalogue: CatalogueView | None) -> CatalogueIndex:
        """Index the live catalogue (or the model's own) against the model."""
        view = catalogue if catalogue is not None else (model.catalogue if model else CatalogueView.from_items([]))
        to_cat, to_model = _mappings(model, view)
        popularity = _translate(model.popularity if model else None, to_model, len(view))
        active = np.flatnonzero(view.active)
        published = np.nan_to_num(view.published_at[active], nan=-np.inf)
        order = active[np.lexsort((active, -published, -popularity[active]))]  # ties: newest first
        dated = np.flatnonzero(np.isfinite(view.published_at) & view.active)
        newest = dated[np.argsort(-view.published_at[dated], kind="stable")]
        rank = np.empty(len(view), dtype=np.int64)
        rank[order] = np.arange(len(order))
        return cls(
            catalogue=view, to_catalogue=to_cat, to_model=to_model, popularity=popularity,
            counts=_translate(model.counts if model else None, to_model, len(view)), popular_order=order,
            newest_order=newest, newest_times=view.published_at[newest],
            by_category=_by_label(view.categories, order), by_tag=_by_label(view.tags, order),
            embeddings=_embeddings(model, view, to_model), towers=model.two_tower if model else None,
        )

    def tower_vectors(self) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Return every catalogue item's two-tower vector (float32, catalogue order) and a mask of the items without
        one (None: none), computed on first use (an exhaustive search needs them, a vector-store search does not);
        None without a two-tower model.

        Items the model was trained with keep their trained vectors; the item tower gives the others theirs from
        their features, as the item-vector job gives them in the store. Only a model exported without an item tower
        leaves items without a vector."""
        if self._towers is None and self.towers is not None:
            self._towers = _tower_vectors(self.towers, self.catalogue, self.to_model)
        return self._towers

    def model_scores(self, scores: np.ndarray | None) -> np.ndarray:
        """Return a per-model-item array translated into catalogue space (0 for unknown items)."""
        return _translate(scores, self.to_model, len(self.catalogue))

    def context_fit(self, idx: np.ndarray, context: Mapping[str, Any]) -> np.ndarray:
        """Return a score factor per item: MISMATCH where an item attribute contradicts the request context."""
        factor = np.ones(len(idx), dtype=np.float32)
        if not context:
            return factor
        attributes = self.catalogue.attributes
        for k, i in enumerate(idx):
            if _contradicts(attributes[i], context):
                factor[k] = MISMATCH
        return factor


def _contradicts(attributes: Mapping[str, Any], context: Mapping[str, Any]) -> bool:
    for key, wanted in context.items():
        have = attributes.get(key)
        if have is None or isinstance(wanted, (dict, list)):
            continue
        matches = wanted in have if isinstance(have, (list, tuple)) else have == wanted
        if not matches:
            return True
    return False


def _mappings(model: ScenarioModel | None, view: CatalogueView) -> tuple[np.ndarray | None, np.ndarray | None]:
    if model is None:
        return None, np.full(len(view), -1, dtype=np.int64)
    if model.catalogue is view or model.catalogue.item_ids == view.item_ids:
        return None, None
    to_cat = np.array([view.index.get(i, -1) for i in model.catalogue.item_ids], dtype=np.int64)
    to_model = np.array([model.catalogue.index.get(i, -1) for i in view.item_ids], dtype=np.int64)
    return to_cat, to_model


def _translate(values: np.ndarray | None, to_model: np.ndarray | None, n: int) -> np.ndarray:
    if values is None:
        return np.zeros(n, dtype=np.float32)
    if to_model is None:
        return np.asarray(values, dtype=np.float32)
    out = np.zeros(n, dtype=np.float32)
    known = to_model >= 0
    out[known] = np.asarray(values)[to_model[known]]
    return out


def _by_label(labels: Sequence[tuple[str, ...]], popular_order: np.ndarray) -> dict[str, np.ndarray]:
    lists: dict[str, list[int]] = defaultdict(list)
    for i in popular_order:
        for label in labels[i]:
            if len(lists[label]) < PER_LABEL:
                lists[label].append(int(i))
    return {label: np.array(items, dtype=np.int64) for label, items in lists.items()}


def _embeddings(model: ScenarioModel | None, view: CatalogueView, to_model: np.ndarray | None) -> np.ndarray | None:
    if model is None or model.content is None:
        return None
    if to_model is None:
        return model.content.embeddings
    out = np.zeros((len(view), model.content.dim), dtype=np.float32)
    known = to_model >= 0
    out[known] = model.content.embeddings[to_model[known]]
    new = np.flatnonzero(~known)
    if len(new):  # items added after training embed into the same space
        out[new] = model.content.embed(_documents(view, new))
    return out


def _tower_vectors(towers: TowerModel, view: CatalogueView,
                   to_model: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    if to_model is None:
        return np.asarray(towers.item_vectors, dtype=np.float32), None
    out = np.zeros((len(view), towers.dim), dtype=np.float32)
    known = to_model >= 0
    out[known] = np.asarray(towers.item_vectors)[to_model[known]]
    new = np.flatnonzero(~known)
    if len(new) == 0:
        return out, None
    vectors = towers.new_item_vectors(_documents(view, new))
    if vectors is None:
        return out, ~known
    out[new] = vectors
    return out, None


def _documents(view: CatalogueView, idx: np.ndarray) -> list[dict[str, Any]]:
    return [{"title": view.titles[i], "categories": view.categories[i], "tags": view.tags[i],
             "attributes": view.attributes[i], "published_at": float(view.published_at[i])} for i in idx]


def best_positions(values: np.ndarray, count: int) -> np.ndarray:
    """Return the positions of the `count` largest values, best first; equal values in position order."""
    n = len(values)
    if count <= 0 or n == 0:
        return np.empty(0, dtype=np.int64)
    if n > count:
        kth = n - count
        threshold = values[np.argpartition(values, kth)[kth]]
        keep = values > threshold
        ties = np.flatnonzero(values == threshold)[: count - int(keep.sum())]  # the earliest of the tied values
        keep[ties] = True
        chosen = np.flatnonzero(keep)
    else:
        chosen = np.arange(n)
    return chosen[np.argsort(-values[chosen], kind="stable")]


class LookAlikes:
    """Each item's nearest items by content embedding (dot product, best first, ties by index), computed on first
    use and kept while the engine lives: they change only with the model or the catalogue, which build a new one.

    A request then filters a kept list instead of scoring the whole catalogue; a list that runs short after the
    request's exclusions answers None, and the caller searches exhaustively. The lists of every engine in the
    process share one bound (LOOK_ALIKES_KEPT lists, least recently used go first), so memory does not grow with
    the number of scenarios served; a token per instance keeps one engine from reading another's lists.
    """

    _shared: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()
    _tokens = itertools.count()

    def __init__(self, embeddings: np.ndarray, *, kept: int = LOOK_ALIKES_KEPT) -> None:
        self._embeddings = embeddings
        self._kept = kept
        self._token = next(self._tokens)

    def nearest(self, item: int, count: int, blocked: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Return up to count nearest items that are not blocked, best first, or None when the kept list is short."""
        n = len(self._embeddings)
        depth = min(2 * count + 100, n)  # room for the request's exclusions
        key, lists = (self._token, item), self._shared
        found = lists.get(key)
        if found is None or len(found[0]) < depth:
            row = np.asarray(self._embeddings) @ np.asarray(self._embeddings[item])
            order = best_positions(row, depth)
            found = lists[key] = (order.astype(np.int32), row[order].astype(np.float32))
            while len(lists) > self._kept:
                lists.popitem(last=False)
        lists.move_to_end(key)
        idx, scores = found
        keep = ~blocked[idx]
        idx, scores = idx[keep][:count], scores[keep][:count]
        if len(idx) < count and len(found[0]) < n:
            return None
        return idx.astype(np.int64), scores
