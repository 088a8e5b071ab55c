"""Rerankers: MMR, freshness, category caps, pins and dedupe on small handmade catalogues."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from domain.recommend.base import REGISTRY, CatalogueView, Ranked, RecRequest, StageContext
from domain.recommend.rerank import MMR, CategoryCap, Dedupe, Freshness, Pins, cap_order, normalise
from domain.scenarios.stages import RERANKERS

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def items(*rows: dict[str, Any]) -> CatalogueView:
    return CatalogueView.from_items(rows)


def by_category(**categories: Sequence[str]) -> CatalogueView:
    """Return a catalogue of items named by the keywords, each with the given categories."""
    return items(*({"item_id": name, "categories": list(cats)} for name, cats in categories.items()))


def ranked(catalogue: CatalogueView, ids: Sequence[str], scores: Sequence[float] | None = None) -> Ranked:
    """Return a ranked list of ids, with descending scores unless given, sources and one source's scores."""
    scores = np.asarray(scores if scores is not None else np.linspace(1.0, 0.1, len(ids)), dtype=np.float32)
    return Ranked(
        idx=catalogue.indexes(ids), scores=scores, sources=[(f"src-{i}",) for i in ids],
        source_scores={"popular": scores * 2},
    )


def context(
    catalogue: CatalogueView, params: Mapping[str, Any], *, limit: int = 10,
    config: Mapping[str, Any] | None = None, embeddings: np.ndarray | None = None, **request: Any,
) -> StageContext:
    return StageContext(
        request=RecRequest(user_id="u1", limit=limit, now=NOW, **request), catalogue=catalogue, params=params,
        config=config or {"freshness": {"halfLifeHours": 24.0}}, embeddings=embeddings,
    )


def ids(catalogue: CatalogueView, out: Ranked) -> list[str]:
    return [catalogue.item_ids[i] for i in out.idx.tolist()]


def assert_aligned(catalogue: CatalogueView, before: Ranked, after: Ranked) -> None:
    """Every kept row carries the sources and source scores of the item's first row before."""
    rows: dict[str, tuple[tuple[str, ...], float]] = {}
    for i, sources, popular in zip(before.idx.tolist(), before.sources, before.source_scores["popular"], strict=True):
        rows.setdefault(catalogue.item_ids[i], (sources, float(popular)))
    for i, sources, popular in zip(after.idx.tolist(), after.sources, after.source_scores["popular"], strict=True):
        if sources != ("pinned",):
            assert rows[catalogue.item_ids[i]] == (sources, pytest.approx(float(popular)))


def test_every_canonical_reranker_is_registered() -> None:
    assert REGISTRY.names("reranker") >= set(RERANKERS)
    assert REGISTRY.get("reranker", "category_cap") is CategoryCap


def test_normalise_scales_to_unit_range() -> None:
    assert normalise(np.array([3.0, 1.0, 2.0])).tolist() == [1.0, 0.0, 0.5]
    assert normalise(np.array([2.0, 2.0])).tolist() == [1.0, 1.0]


# --- mmr -----------------------------------------------------------------------------------------------------


def test_mmr_picks_another_category_second() -> None:
    catalogue = by_category(a1=["a"], a2=["a"], b1=["b"], a3=["a"])
    before = ranked(catalogue, ["a1", "a2", "b1", "a3"], [1.0, 0.9, 0.8, 0.7])
    out = MMR().rerank(before, context(catalogue, {"lambda": 0.5, "by": "category"}, limit=2))
    assert ids(catalogue, out) == ["a1", "b1", "a2", "a3"]
    assert_aligned(catalogue, before, out)


def test_mmr_with_lambda_one_keeps_relevance_order() -> None:
    catalogue = by_category(a1=["a"], a2=["a"], b1=["b"])
    before = ranked(catalogue, ["a1", "a2", "b1"])
    out = MMR().rerank(before, context(catalogue, {"lambda": 1.0, "by": "category"}, limit=2))
    assert ids(catalogue, out) == ["a1", "a2", "b1"]


def test_mmr_chooses_within_the_first_three_pages_only() -> None:
    catalogue = by_category(**{f"a{n}": ["a"] for n in range(1, 8)}, b1=["b"])
    order = [*(f"a{n}" for n in range(1, 8)), "b1"]
    out = MMR().rerank(ranked(catalogue, order), context(catalogue, {"lambda": 0.3, "by": "category"}, limit=2))
    assert ids(catalogue, out) == order  # b1 sits 8th, outside the window of 6


def test_mmr_by_embedding_separates_near_copies() -> None:
    catalogue = by_category(x1=["c"], x2=["c"], y1=["c"])
    vectors = np.array([[1.0, 0.0], [0.99, 0.1], [0.0, 1.0]], dtype=np.float32)
    before = ranked(catalogue, ["x1", "x2", "y1"], [1.0, 0.9, 0.8])
    params = {"lambda": 0.5, "by": "embedding"}
    out = MMR().rerank(before, context(catalogue, params, limit=3, embeddings=vectors))
    assert ids(catalogue, out) == ["x1", "y1", "x2"]
    # Without embeddings the shared category makes all three equally similar, so relevance decides.
    out = MMR().rerank(before, context(catalogue, params, limit=3))
    assert ids(catalogue, out) == ["x1", "x2", "y1"]


# --- freshness -----------------------------------------------------------------------------------------------


def test_freshness_lifts_a_new_item_over_an_old_higher_score() -> None:
    catalogue = items(
        {"item_id": "old", "published_at": NOW - timedelta(days=10)},
        {"item_id": "new", "published_at": NOW},
        {"item_id": "low", "published_at": NOW - timedelta(days=5)},
    )
    before = ranked(catalogue, ["old", "new", "low"], [1.0, 0.9, 0.0])
    out = Freshness().rerank(before, context(catalogue, {"halfLifeHours": 6.0, "weight": 0.5}))
    assert ids(catalogue, out) == ["new", "old", "low"]
    assert out.scores.tolist() == pytest.approx([0.95, 0.5, 0.0], abs=1e-6)
    assert_aligned(catalogue, before, out)


def test_freshness_half_life_comes_from_the_config_when_null() -> None:
    catalogue = items({"item_id": "day-old", "published_at": NOW - timedelta(hours=24)}, {"item_id": "floor"})
    before = ranked(catalogue, ["day-old", "floor"], [1.0, 0.0])
    from_config = Freshness().rerank(before, context(catalogue, {"halfLifeHours": None, "weight": 0.5}))
    own = Freshness().rerank(before, context(catalogue, {"halfLifeHours": 12.0, "weight": 0.5}))
    assert from_config.scores.tolist() == pytest.approx([0.75, 0.0])
    assert own.scores.tolist() == pytest.approx([0.625, 0.0])


def test_freshness_gives_undated_items_no_boost() -> None:
    catalogue = items({"item_id": "undated"}, {"item_id": "fresh", "published_at": NOW}, {"item_id": "floor"})
    before = ranked(catalogue, ["undated", "fresh", "floor"], [1.0, 0.5, 0.0])
    out = Freshness().rerank(before, context(catalogue, {"halfLifeHours": 6.0, "weight": 0.6}))
    assert ids(catalogue, out) == ["fresh", "undated", "floor"]
    assert out.scores.tolist() == pytest.approx([0.8, 0.4, 0.0])


# --- category_cap --------------------------------------------------------------------------------------------


def test_category_cap_pushes_the_fourth_item_below_the_page() -> None:
    catalogue = by_category(a1=["a"], a2=["a"], a3=["a"], a4=["a"], b1=["b"], c1=["c"], d1=["d"])
    before = ranked(catalogue, ["a1", "a2", "a3", "a4", "b1", "c1", "d1"])
    out = CategoryCap().rerank(before, context(catalogue, {"maxPerCategory": 3}, limit=4))
    assert ids(catalogue, out) == ["a1", "a2", "a3", "b1", "a4", "c1", "d1"]
    assert_aligned(catalogue, before, out)


def test_category_cap_counts_every_category_of_an_item() -> None:
    catalogue = by_category(x=["a", "b"], y=["b"], z=["c"], w=["a"], v=["d"])
    out = CategoryCap().rerank(ranked(catalogue, ["x", "y", "z", "w", "v"]),
                               context(catalogue, {"maxPerCategory": 1}, limit=2))
    assert ids(catalogue, out) == ["x", "z", "y", "w", "v"]


def test_category_cap_fills_a_page_in_order_when_nothing_else_fits() -> None:
    catalogue = by_category(a1=["a"], a2=["a"], a3=["a"], b1=["b"], a4=["a"], a5=["a"])
    out = CategoryCap().rerank(ranked(catalogue, ["a1", "a2", "a3", "b1", "a4", "a5"]),
                               context(catalogue, {"maxPerCategory": 1}, limit=3))
    assert ids(catalogue, out) == ["a1", "a2", "b1", "a3", "a4", "a5"]


def test_cap_order_leaves_uncategorised_items_alone() -> None:
    assert cap_order([(), (), ("a",), ("a",), ()], page_size=2, cap=1) == [0, 1, 2, 4, 3]


# --- pins ----------------------------------------------------------------------------------------------------


PIN_CATALOGUE = items(*({"item_id": f"x{n}"} for n in range(1, 6)), {"item_id": "p"},
                      {"item_id": "gone", "status": "INACTIVE"}, {"item_id": "seen"})
LISTED = ["x1", "x2", "x3", "x4", "x5"]


def pin(params: list[dict[str, Any]], listed: Sequence[str] = LISTED) -> tuple[Ranked, Ranked]:
    before = ranked(PIN_CATALOGUE, listed)
    ctx = context(PIN_CATALOGUE, {"pins": params}, exclude=frozenset({"seen"}))
    return before, Pins().rerank(before, ctx)


def test_pins_take_positions_one_and_three() -> None:
    before, out = pin([{"itemId": "p", "position": 1}, {"itemId": "x4", "position": 3}])
    assert ids(PIN_CATALOGUE, out) == ["p", "x1", "x4", "x2", "x3", "x5"]
    assert [out.sources[0], out.sources[2], out.sources[1]] == [("pinned",), ("pinned",), ("src-x1",)]
    assert out.scores[0] == 0.0 and out.scores[2] == before.scores[3]
    assert out.source_scores["popular"].tolist() == pytest.approx([0.0, 2.0, *before.source_scores["popular"][
        [3, 1, 2, 4]].tolist()])
    assert_aligned(PIN_CATALOGUE, before, out)


def test_pins_skip_unknown_inactive_and_excluded_items() -> None:
    _, out = pin([{"itemId": name, "position": 1} for name in ("nope", "gone", "seen")])
    assert ids(PIN_CATALOGUE, out) == LISTED


def test_pins_past_the_end_append_and_shared_positions_follow_config_order() -> None:
    _, out = pin([{"itemId": "x1", "position": 50}])
    assert ids(PIN_CATALOGUE, out) == ["x2", "x3", "x4", "x5", "x1"]
    _, out = pin([{"itemId": "p", "position": 2}, {"itemId": "x5", "position": 2}])
    assert ids(PIN_CATALOGUE, out) == ["x1", "p", "x5", "x2", "x3", "x4"]


def test_pins_remove_every_other_copy_of_the_item() -> None:
    _, out = pin([{"itemId": "x1", "position": 3}], listed=["x1", "x2", "x1", "x3"])
    assert ids(PIN_CATALOGUE, out) == ["x2", "x3", "x1"]


# --- dedupe --------------------------------------------------------------------------------------------------


TITLED = items({"item_id": "h1", "title": "Hello  World"}, {"item_id": "h2", "title": " hello world"},
               {"item_id": "o", "title": "Other"}, {"item_id": "n1"}, {"item_id": "n2", "title": ""})


def test_dedupe_by_title_keeps_the_first_normalised_title() -> None:
    before = ranked(TITLED, ["h1", "h2", "o", "n1", "n2", "n1"])
    out = Dedupe().rerank(before, context(TITLED, {"by": "title"}))
    assert ids(TITLED, out) == ["h1", "o", "n1", "n2"]
    assert_aligned(TITLED, before, out)


def test_dedupe_by_id_drops_repeated_items() -> None:
    out = Dedupe().rerank(ranked(TITLED, ["n1", "h1", "n1", "h2", "h1"]), context(TITLED, {"by": "id"}))
    assert ids(TITLED, out) == ["n1", "h1", "h2"]


# --- all -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("stage", "params"), [
    (MMR, {"lambda": 0.7, "by": "category"}), (Freshness, {"halfLifeHours": None, "weight": 0.2}),
    (CategoryCap, {"maxPerCategory": 3}), (Pins, {"pins": []}), (Dedupe, {"by": "title"}),
])
def test_rerankers_accept_an_empty_list(stage: type, params: dict[str, Any]) -> None:
    empty = Ranked(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), [], {})
    out = stage().rerank(empty, context(TITLED, params))
    assert len(out.idx) == 0 and out.sources == []
