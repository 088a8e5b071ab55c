"""Filters: seen, availability, rules and blocklist masks over handmade catalogues."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest

from domain.recommend.base import REGISTRY, CatalogueView, RecRequest, StageContext
from domain.recommend.filters import AvailabilityFilter, BlocklistFilter, RulesFilter, SeenFilter
from domain.scenarios.stages import FILTERS
from domain.scenarios.templates import NEWS

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def context(
    catalogue: CatalogueView, params: Mapping[str, Any] | None = None, **request: Any
) -> StageContext:
    return StageContext(
        request=RecRequest(user_id="u1", limit=10, now=NOW, **request),
        catalogue=catalogue, params=params or {}, config=NEWS,
    )


def items(*rows: dict[str, Any]) -> CatalogueView:
    return CatalogueView.from_items(rows)


def test_every_canonical_filter_is_registered() -> None:
    assert REGISTRY.names("filter") >= set(FILTERS)
    assert REGISTRY.get("filter", "seen") is SeenFilter


@pytest.mark.parametrize("unknown", [0, 30])
def test_seen_drops_excluded_ids(unknown: int) -> None:
    # Many unknown ids switch the filter to walking the candidates instead of the exclude set.
    catalogue = items(*({"item_id": f"i{n}"} for n in range(6)))
    exclude = frozenset({"i1", "i4", *(f"gone{n}" for n in range(unknown))})
    idx = np.array([4, 0, 1, 5, 2], dtype=np.int64)
    mask = SeenFilter().keep(idx, context(catalogue, exclude=exclude))
    assert mask.tolist() == [False, True, False, True, True]


def test_seen_keeps_everything_without_exclusions() -> None:
    catalogue = items({"item_id": "a"}, {"item_id": "b"})
    assert SeenFilter().keep(np.array([1, 0]), context(catalogue)).tolist() == [True, True]


def test_availability_drops_inactive_expired_and_out_of_stock() -> None:
    past, future = NOW - timedelta(hours=1), NOW + timedelta(hours=1)
    catalogue = items(
        {"item_id": "plain"},
        {"item_id": "inactive", "status": "INACTIVE"},
        {"item_id": "expired-iso", "attributes": {"expiresAt": past.isoformat()}},
        {"item_id": "valid-iso", "attributes": {"expiresAt": future.isoformat().replace("+00:00", "Z")}},
        {"item_id": "expired-epoch", "attributes": {"expiresAt": past.timestamp()}},
        {"item_id": "valid-millis", "attributes": {"expiresAt": future.timestamp() * 1000}},
        {"item_id": "expired-millis", "attributes": {"expiresAt": int(past.timestamp() * 1000)}},
        {"item_id": "sold-out", "attributes": {"inStock": False}},
        {"item_id": "zero-stock", "attributes": {"stock": 0}},
        {"item_id": "stocked", "attributes": {"stock": 5, "inStock": True}},
        {"item_id": "junk-date", "attributes": {"expiresAt": "someday"}},
    )
    mask = AvailabilityFilter().keep(np.arange(len(catalogue)), context(catalogue))
    assert mask.tolist() == [True, False, False, True, False, True, False, False, False, True, True]


def test_availability_is_judged_at_each_request_time() -> None:
    catalogue = items({"item_id": "sale", "attributes": {"expiresAt": (NOW + timedelta(hours=1)).isoformat()}})
    idx = np.array([0])
    later = StageContext(request=RecRequest(user_id="u1", limit=10, now=NOW + timedelta(hours=2)),
                         catalogue=catalogue, params={}, config=NEWS)
    assert AvailabilityFilter().keep(idx, context(catalogue)).tolist() == [True]
    assert AvailabilityFilter().keep(idx, later).tolist() == [False]


def test_availability_follows_candidate_order() -> None:
    catalogue = items({"item_id": "a"}, {"item_id": "b", "status": "INACTIVE"}, {"item_id": "c"})
    mask = AvailabilityFilter().keep(np.array([1, 2, 1, 0]), context(catalogue))
    assert mask.tolist() == [False, True, False, True]


def test_rules_must_all_hold() -> None:
    catalogue = items(
        {"item_id": "new-eu", "attributes": {"region": "EU"}, "published_at": NOW - timedelta(hours=2)},
        {"item_id": "old-eu", "attributes": {"region": "EU"}, "published_at": NOW - timedelta(hours=80)},
        {"item_id": "new-us", "attributes": {"region": "US"}, "published_at": NOW - timedelta(hours=2)},
        {"item_id": "undated-eu", "attributes": {"region": "EU"}},
    )
    params = {"expressions": ["publishedAt within 72h", "attributes.region == context.region"]}
    idx = np.arange(4)
    with_region = RulesFilter().keep(idx, context(catalogue, params, context={"region": "EU"}))
    without = RulesFilter().keep(idx, context(catalogue, params))
    assert with_region.tolist() == [True, False, False, False]
    assert without.tolist() == [True, False, True, False]


def test_news_template_rule_runs_as_configured() -> None:
    catalogue = items(
        {"item_id": "today", "published_at": NOW - timedelta(hours=3)},
        {"item_id": "last-week", "published_at": NOW - timedelta(days=7)},
    )
    (rules,) = [f["params"] for f in NEWS["filters"] if f["name"] == "rules"]
    assert RulesFilter().keep(np.array([1, 0]), context(catalogue, rules)).tolist() == [False, True]


def test_blocklist_drops_items_and_categories() -> None:
    catalogue = items(
        {"item_id": "ok", "categories": ["toys"]},
        {"item_id": "banned", "categories": ["toys"]},
        {"item_id": "adult", "categories": ["books", "adult"]},
        {"item_id": "plain"},
    )
    params = {"itemIds": ["banned", "not-in-catalogue"], "categories": ["adult"]}
    mask = BlocklistFilter().keep(np.array([3, 2, 1, 0]), context(catalogue, params))
    assert mask.tolist() == [True, False, False, True]


def test_blocklist_answers_follow_the_params() -> None:
    catalogue = items({"item_id": "a", "categories": ["x"]}, {"item_id": "b", "categories": ["y"]})
    idx = np.array([0, 1])
    assert BlocklistFilter().keep(idx, context(catalogue, {"categories": ["x"]})).tolist() == [False, True]
    assert BlocklistFilter().keep(idx, context(catalogue, {"categories": ["y"]})).tolist() == [True, False]
    assert BlocklistFilter().keep(idx, context(catalogue, {"itemIds": ["b"]})).tolist() == [True, False]


def test_empty_blocklist_keeps_everything() -> None:
    catalogue = items({"item_id": "a", "categories": ["x"]})
    mask = BlocklistFilter().keep(np.array([0]), context(catalogue, {"itemIds": [], "categories": []}))
    assert mask.tolist() == [True]


@pytest.mark.parametrize("stage", [SeenFilter, AvailabilityFilter, RulesFilter, BlocklistFilter])
def test_filters_accept_an_empty_candidate_list(stage: type) -> None:
    catalogue = items({"item_id": "a"})
    params = {"itemIds": ["a"], "categories": ["x"], "expressions": ["attributes.region == context.region"]}
    mask = stage().keep(np.empty(0, dtype=np.int64), context(catalogue, params, exclude=frozenset({"a"})))
    assert mask.dtype == bool and mask.shape == (0,)
