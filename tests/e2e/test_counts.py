"""Counts a client can check against what it sent: totalCount on lists and a scenario's stats."""

from __future__ import annotations

import pytest

from tests.conftest import new_tenant


@pytest.fixture(scope="module")
async def shop(served, gql):
    keys = await new_tenant(served, "counts")
    made = await gql.data('mutation { createScenario(input: {name: "shop", template: ECOMMERCE}) { id } }', key=keys.admin)
    scenario = made["createScenario"]["id"]
    items = [{"id": f"p{i}", "title": f"Product {i}", "categories": ["even" if i % 2 == 0 else "odd"]} for i in range(250)]
    await gql.data("mutation($s: ID!, $i: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $i) { upserted } }",
                   {"s": scenario, "i": items}, key=keys.admin)
    events = [{"scenarioId": scenario, "userId": f"u{i % 7}", "itemId": f"p{i}", "type": "VIEW", "eventId": f"e{i}"}
              for i in range(120)]
    events.append({"scenarioId": scenario, "userId": "u1", "itemId": "missing", "type": "VIEW"})
    await gql.data("mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted } }", {"e": events},
                   key=keys.admin)
    return keys, scenario


async def test_total_count_follows_the_filter_not_the_page(gql, shop):
    keys, scenario = shop
    query = "query($s: ID!, $f: ItemFilter) { items(scenarioId: $s, filter: $f, first: 10) { totalCount edges { node { id } } } }"
    everything = await gql.data(query, {"s": scenario}, key=keys.public)
    assert everything["items"]["totalCount"] == 250
    assert len(everything["items"]["edges"]) == 10
    odd = await gql.data(query, {"s": scenario, "f": {"category": "odd"}}, key=keys.public)
    assert odd["items"]["totalCount"] == 125


async def test_scenario_stats_count_items_and_stored_interactions(gql, shop):
    keys, scenario = shop
    data = await gql.data("query($s: ID!) { scenario(id: $s) { stats { items interactions } } }", {"s": scenario},
                          key=keys.admin)
    assert data["scenario"]["stats"] == {"items": 250, "interactions": 120}
    listed = await gql.data("{ scenarios { totalCount } }", key=keys.admin)
    assert listed["scenarios"]["totalCount"] == 1
