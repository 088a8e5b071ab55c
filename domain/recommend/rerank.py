"""Rerankers: reorder the ranked list for diversity, freshness, per-page category caps, pins and duplicates.

Every reranker returns a new `Ranked` whose idx, scores, sources and source_scores stay aligned (built with
`Ranked.take` or by appending rows). MMR diversifies the whole requested list (`request.limit` items); category
caps apply per served page (`request.page` items).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from domain.recommend.base import REGISTRY, CatalogueView, LabelCodes, Ranked, StageContext
from domain.recommend.columns import lazy_column

MMR_WINDOW = 3  # MMR picks one page out of the first MMR_WINDOW pages of candidates
DEFAULT_HALF_LIFE_HOURS = 48.0  # when neither the stage nor the config's freshness section names one
MAX_CAPPED_PAGES = 10  # category caps apply to the first pages only; deeper pages are rarely served
PINNED = ("pinned",)
_TITLE_BIT = -(1 << 62)  # marks title groups so they never meet an item index (those are >= 0)


def normalise(scores: np.ndarray) -> np.ndarray:
    """Return scores scaled to [0, 1] (all ones when they are all equal)."""
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) == 0:
        return scores
    low, high = float(scores.min()), float(scores.max())
    if high - low <= 0:
        return np.ones_like(scores)
    return (scores - low) / (high - low)


@REGISTRY.reranker
class MMR:
    """Maximal Marginal Relevance: pick each next item by lambda * relevance - (1 - lambda) * max similarity to
    the items already picked, over the first MMR_WINDOW pages; the unpicked rest follows in ranked order.

    Similarity is the Jaccard index of categories (`by: category`) or the cosine of item embeddings
    (`by: embedding`, clipped at 0; category when the scenario has no embeddings).
    """

    name: ClassVar[str] = "mmr"

    def rerank(self, ranked: Ranked, ctx: StageContext) -> Ranked:
        """Return the list with its first page chosen for relevance and diversity."""
        n = len(ranked.idx)
        picks = min(max(ctx.request.limit, 1), n)
        if picks <= 1:
            return ranked
        window = min(n, MMR_WINDOW * picks)
        top = ranked.idx[:window]
        if ctx.params["by"] == "embedding" and ctx.embeddings is not None:
            similarity = embedding_similarity(ctx.embeddings[top])
        else:
            similarity = jaccard(*ctx.catalogue.category_codes.rows(top), len(top))
        chosen = mmr_order(normalise(ranked.scores[:window]), similarity, float(ctx.params["lambda"]), picks)
        rest = np.ones(n, dtype=bool)
        rest[chosen] = False
        return ranked.take(np.concatenate([chosen, np.flatnonzero(rest)]))  # the unpicked rest in ranked order


def mmr_order(relevance: np.ndarray, similarity: np.ndarray, lam: float, picks: int) -> np.ndarray:
    """Return the positions of `picks` items chosen greedily by MMR."""
    relevance = np.asarray(relevance, dtype=np.float64)
    if lam >= 1.0:
        return np.argsort(-relevance, kind="stable")[:picks]
    # argmax is unchanged by dividing the gain by (1 - lambda), which leaves three numpy calls a step.
    value = relevance * (lam / (1.0 - lam))
    closest = np.zeros(len(value))
    gain = np.empty(len(value))
    order = np.empty(picks, dtype=np.int64)
    subtract, maximum = np.subtract, np.maximum
    for step in range(picks):
        subtract(value, closest, out=gain)
        best = int(gain.argmax())  # ties go to the better-ranked item
        order[step] = best
        value[best] = -np.inf
        maximum(closest, similarity[best], out=closest)
    return order


def category_similarity(categories: Sequence[tuple[str, ...]]) -> np.ndarray:
    """Return the pairwise Jaccard index of the items' category sets (0 for items without categories)."""
    codes = LabelCodes.build(categories)
    return jaccard(*codes.rows(np.arange(len(categories))), len(categories))


def jaccard(rows: np.ndarray, codes: np.ndarray, n: int) -> np.ndarray:
    """Return the pairwise Jaccard index of n label sets given as distinct (row, label code) pairs."""
    labels, cols = np.unique(codes, return_inverse=True)  # only the labels these rows use become columns
    incidence = np.zeros((n, len(labels)), dtype=np.float32)
    incidence[rows, cols] = 1.0
    shared = incidence @ incidence.T
    sizes = incidence.sum(axis=1)
    union = np.add.outer(sizes, sizes)
    union -= shared
    np.maximum(union, 1.0, out=union)  # an empty union has nothing shared either: 0 / 1
    shared /= union
    return shared


def embedding_similarity(vectors: np.ndarray) -> np.ndarray:
    """Return the pairwise cosine similarity of vectors, clipped to [0, 1] (0 for zero vectors)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, np.maximum(norms, 1e-12), out=np.empty_like(vectors))
    cosine = unit @ unit.T
    return np.clip(cosine, 0.0, 1.0, out=cosine)


@REGISTRY.reranker
class Freshness:
    """Blend relevance with recency: (1 - weight) * normalised score + weight * 2^(-age / half-life).

    Age is measured from the request time (items dated ahead count as brand new); items without a publish time
    get no boost. Scores become the blended values and the list is re-sorted (stable).
    """

    name: ClassVar[str] = "freshness"

    def rerank(self, ranked: Ranked, ctx: StageContext) -> Ranked:
        """Return the list re-sorted by the freshness-blended score."""
        if len(ranked.idx) == 0:
            return ranked
        weight = float(ctx.params["weight"])
        published = ctx.catalogue.published_at[ranked.idx]
        age_hours = np.maximum(ctx.now_ts - published, 0.0) / 3600.0
        boost = np.where(np.isnan(published), 0.0, np.exp2(-age_hours / half_life_hours(ctx)))
        blended = (1.0 - weight) * normalise(ranked.scores) + weight * boost
        order = np.argsort(-blended, kind="stable")
        out = ranked.take(order)
        out.scores = blended[order].astype(ranked.scores.dtype, copy=False)
        return out


def half_life_hours(ctx: StageContext) -> float:
    """Return the stage's half-life, else the scenario's freshness.halfLifeHours, else the default."""
    own = ctx.params.get("halfLifeHours")
    if own:
        return float(own)
    section: Mapping[str, Any] = ctx.config.get("freshness") or {}
    return float(section.get("halfLifeHours") or DEFAULT_HALF_LIFE_HOURS)


@REGISTRY.reranker
class CategoryCap:
    """Allow at most `maxPerCategory` items of a category in each page (an item counts for each of its
    categories); items over the cap move down to the next page that has room, never out of the list.

    When the remaining items cannot fill a page within the caps, that page is filled in ranked order and the
    rest keeps its order. Caps apply to the first MAX_CAPPED_PAGES pages.
    """

    name: ClassVar[str] = "category_cap"

    def rerank(self, ranked: Ranked, ctx: StageContext) -> Ranked:
        """Return the list with over-cap items pushed to later pages."""
        categories = [ctx.catalogue.categories[i] for i in ranked.idx.tolist()]
        order = cap_order(categories, max(ctx.request.page, 1), int(ctx.params["maxPerCategory"]))
        if order == list(range(len(order))):
            return ranked
        return ranked.take(order)


def cap_order(categories: Sequence[tuple[str, ...]], page_size: int, cap: int) -> list[int]:
    """Return positions reordered so each page has at most cap items per category."""
    remaining = list(range(len(categories)))
    order: list[int] = []
    for _ in range(MAX_CAPPED_PAGES):
        if not remaining:
            break
        page, remaining = _fill_page(remaining, categories, page_size, cap)
        if len(page) < page_size and remaining:
            # Nothing left fits this page within the caps: fill it in ranked order and stop capping.
            fill = page_size - len(page)
            order += sorted(page + remaining[:fill])
            return order + remaining[fill:]
        order += page
    return order + remaining


def _fill_page(
    remaining: list[int], categories: Sequence[tuple[str, ...]], size: int, cap: int
) -> tuple[list[int], list[int]]:
    """Return (the page's positions, the positions left over), both in ranked order."""
    counts: dict[str, int] = {}
    page: list[int] = []
    deferred: list[int] = []
    for k, pos in enumerate(remaining):
        if len(page) == size:
            return page, deferred + remaining[k:]
        labels = categories[pos]
        if len(labels) == 1:  # the common case, without the generator below
            fits = counts.get(labels[0], 0) < cap
        else:
            fits = all(counts.get(label, 0) < cap for label in labels)
        if fits:
            page.append(pos)
            for label in labels:
                counts[label] = counts.get(label, 0) + 1
        else:
            deferred.append(pos)
    return page, deferred


@REGISTRY.reranker
class Pins:
    """Place `params.pins` ({itemId, position (1-based)}) at their positions.

    A pin counts only when its item is in the catalogue, active and not excluded by the request; the item is
    removed from anywhere else in the list and its sources become ("pinned",). A pinned item keeps its score when
    it was recalled, else scores 0. Positions past the end of the list append; pins sharing a position follow each
    other in config order.
    """

    name: ClassVar[str] = "pins"

    def rerank(self, ranked: Ranked, ctx: StageContext) -> Ranked:
        """Return the list with the valid pins at their positions."""
        pins = valid_pins(ctx.params.get("pins") or (), ctx)
        if not pins:
            return ranked
        pinned = np.array([item for item, _ in pins], dtype=np.int64)
        listed = np.isin(pinned, ranked.idx)
        ranked = append_rows(ranked, pinned[~listed].tolist())
        is_pinned = np.isin(ranked.idx, pinned)
        row_of: dict[int, int] = {}
        for row in np.flatnonzero(is_pinned).tolist():
            row_of.setdefault(int(ranked.idx[row]), row)
        order = np.flatnonzero(~is_pinned).tolist()
        slots: list[int] = []
        for item, position in sorted(pins, key=lambda pin: pin[1]):  # stable: config order breaks ties
            at = min(max(position - 1, slots[-1] + 1 if slots else 0), len(order))
            order.insert(at, row_of[item])
            slots.append(at)
        out = ranked.take(order)
        for at in slots:
            out.sources[at] = PINNED
        return out


def valid_pins(pins: Sequence[Mapping[str, Any]], ctx: StageContext) -> list[tuple[int, int]]:
    """Return (item index, position) of the pins that may be shown, first pin per item only."""
    catalogue, exclude = ctx.catalogue, ctx.request.exclude
    out: list[tuple[int, int]] = []
    seen: set[int] = set()
    for pin in pins:
        item_id = pin["itemId"]
        i = catalogue.index.get(item_id)
        if i is None or not catalogue.active[i] or item_id in exclude or i in seen:
            continue
        seen.add(i)
        out.append((i, int(pin["position"])))
    return out


def append_rows(ranked: Ranked, items: Sequence[int]) -> Ranked:
    """Return ranked with rows for items appended (score 0, sources ("pinned",), source scores 0)."""
    if not items:
        return ranked
    extra = len(items)
    return Ranked(
        idx=np.concatenate([ranked.idx, np.asarray(items, dtype=ranked.idx.dtype)]),
        scores=np.concatenate([ranked.scores, np.zeros(extra, dtype=ranked.scores.dtype)]),
        sources=[*ranked.sources, *([PINNED] * extra)],
        source_scores={k: np.concatenate([v, np.zeros(extra, dtype=v.dtype)]) for k, v in ranked.source_scores.items()},
    )


@REGISTRY.reranker
class Dedupe:
    """Keep the first of duplicate items: the same index (`by: id`) or the same title, ignoring case and
    whitespace (`by: title`; items without a title are deduplicated by index)."""

    name: ClassVar[str] = "dedupe"

    def rerank(self, ranked: Ranked, ctx: StageContext) -> Ranked:
        """Return the list without later duplicates."""
        keys = ranked.idx
        if ctx.params["by"] == "title":
            keys = lazy_column(ctx.catalogue, "dedupe.title", np.int64).take(keys, _title_groups(ctx.catalogue))
        _, first = np.unique(keys, return_index=True)
        if len(first) == len(keys):
            return ranked
        return ranked.take(np.sort(first))


def _title_groups(catalogue: CatalogueView) -> Callable[[np.ndarray], list[int]]:
    """Return a function giving each item a key shared by equal normalised titles (its own index without one)."""
    titles = catalogue.titles

    def compute(rows: np.ndarray) -> list[int]:
        return [_title_group(titles[i], i) for i in rows.tolist()]

    return compute


def _title_group(title: str | None, index: int) -> int:
    key = title_key(title)
    if key is None:
        return index
    # The string's hash as the group id: among a catalogue's titles a collision is about 1e-9 likely.
    return hash(key) | _TITLE_BIT


def title_key(title: str | None) -> str | None:
    """Return a title with case and whitespace normalised, or None when there is none."""
    if not title:
        return None
    return " ".join(title.split()).casefold() or None
