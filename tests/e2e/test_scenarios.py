"""Scenarios over HTTP: templates, config merge and validation paths, update, delete, pagination."""

from __future__ import annotations

import pytest

from domain.scenarios.templates import TEMPLATES
from tests.conftest import new_tenant

FIELDS = "id name template config configVersion createdAt updatedAt"
CREATE = f"mutation($input: CreateScenarioInput!) {{ createScenario(input: $input) {{ {FIELDS} }} }}"
UPDATE = f"mutation($id: ID!, $input: UpdateScenarioInput!) {{ updateScenario(id: $id, input: $input) {{ {FIELDS} }} }}"
DELETE = "mutation($id: ID!) { deleteScenario(id: $id) }"
GET = f"query($id: ID!) {{ scenario(id: $id) {{ {FIELDS} }} }}"
PAGE = """query($first: Int, $after: String) {
  scenarios(first: $first, after: $after) { edges { cursor node { id name } } pageInfo { hasNextPage endCursor } } }"""


def error(body: dict) -> dict:
    """Return the only error of a response."""
    assert len(body.get("errors") or []) == 1, body
    return body["errors"][0]


@pytest.fixture(scope="module")
async def admin(served):
    return (await new_tenant(served, "scenarios")).admin


async def all_scenarios(gql, key: str) -> list[dict]:
    return [e["node"] for e in (await gql.data(PAGE, {"first": 200}, key=key))["scenarios"]["edges"]]


async def create(gql, key: str, **input) -> dict:
    return (await gql.data(CREATE, {"input": input}, key=key))["createScenario"]


@pytest.mark.parametrize("template", ["VLOG", "NEWS", "ECOMMERCE", "MUSIC", "CUSTOM"])
async def test_every_template_creates_a_complete_scenario(gql, admin, template):
    sc = await create(gql, admin, name=f"tpl-{template}", template=template)
    assert sc["name"] == f"tpl-{template}" and sc["template"] == template and sc["configVersion"] == 1
    assert sc["config"] == TEMPLATES[template]
    assert sc["createdAt"] == sc["updatedAt"]
    assert (await gql.data(GET, {"id": sc["id"]}, key=admin))["scenario"] == sc


async def test_default_template_is_custom(gql, admin):
    sc = await create(gql, admin, name="no-template")
    assert sc["template"] == "CUSTOM" and sc["config"] == TEMPLATES["CUSTOM"]


async def test_config_is_merged_over_the_template(gql, admin):
    sc = await create(gql, admin, name="merged", template="NEWS", config={
        "freshness": {"halfLifeHours": 6},
        "recall": [{"source": "popular", "weight": 2}],
        "retention": None,
    })
    config = sc["config"]
    assert config["freshness"] == {"halfLifeHours": 6}
    # Lists replace, and the entry gets its defaults filled in.
    assert config["recall"] == [{"source": "popular", "weight": 2, "limit": 200, "params": {"halfLifeHours": None}}]
    # null removes the key, which takes its default.
    assert config["retention"] == {"interactionsDays": None}
    # Everything not named stays as in the template.
    for key in ("features", "filters", "ranker", "rerank", "popularity", "seen", "fallback", "interactionWeights"):
        assert config[key] == TEMPLATES["NEWS"][key], key


@pytest.mark.parametrize(
    "config,field",
    [
        ({"recall": [{"source": "popular", "weight": -1, "limit": 10}]}, "input.config.recall.0.weight"),
        ({"recall": [{"source": "no_such_source"}]}, "input.config.recall.0.source"),
        ({"recall": [{"source": "popular"}, {"source": "fresh", "limit": 0}]}, "input.config.recall.1.limit"),
        ({"recall": []}, "input.config.recall"),
        ({"recall": [{"source": "popular"}, {"source": "popular"}]}, "input.config.recall.1.source"),
        ({"nonsense": 1}, "input.config.nonsense"),
        ({"freshness": {"halfLifeHours": "long"}}, "input.config.freshness.halfLifeHours"),
        ([1, 2], "input.config"),
    ],
)
async def test_invalid_config_is_refused_with_its_path_and_nothing_is_stored(gql, admin, config, field):
    before = await all_scenarios(gql, admin)
    body = await gql(CREATE, {"input": {"name": "invalid", "template": "CUSTOM", "config": config}}, key=admin)
    err = error(body)
    assert body["data"] is None
    assert err["extensions"]["code"] == "BAD_USER_INPUT"
    assert err["extensions"]["field"] == field, err
    assert err["path"] == ["createScenario"]
    assert await all_scenarios(gql, admin) == before


async def test_blank_name_and_unknown_template(gql, admin):
    body = await gql(CREATE, {"input": {"name": "   "}}, key=admin)
    assert error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": "input.name"}
    # An unknown enum value is refused by GraphQL validation itself.
    body = await gql(CREATE, {"input": {"name": "x", "template": "PODCAST"}}, key=admin)
    assert body.get("data") is None and body["errors"]


async def test_update_merges_validates_and_bumps_the_config_version(gql, admin):
    sc = await create(gql, admin, name="to-update", template="VLOG")
    up = (await gql.data(UPDATE, {"id": sc["id"], "input": {"config": {"freshness": {"halfLifeHours": 1}}}},
                         key=admin))["updateScenario"]
    assert up["configVersion"] == 2
    assert up["config"]["freshness"] == {"halfLifeHours": 1}
    assert up["config"]["recall"] == TEMPLATES["VLOG"]["recall"]
    assert up["updatedAt"] >= sc["updatedAt"] and up["createdAt"] == sc["createdAt"]
    up = (await gql.data(UPDATE, {"id": sc["id"], "input": {"config": {"popularity": {"halfLifeHours": 5}}}},
                         key=admin))["updateScenario"]
    assert up["configVersion"] == 3 and up["config"]["freshness"] == {"halfLifeHours": 1}
    # An invalid change is refused with its path and changes nothing.
    body = await gql(UPDATE, {"id": sc["id"], "input": {"name": "renamed-too",
                                                        "config": {"recall": [{"source": "popular", "weight": -1}]}}},
                     key=admin)
    assert error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": "input.config.recall.0.weight"}
    stored = (await gql.data(GET, {"id": sc["id"]}, key=admin))["scenario"]
    assert stored["configVersion"] == 3 and stored["name"] == "to-update" and stored["config"] == up["config"]


async def test_rename_and_name_conflicts(gql, admin):
    one = await create(gql, admin, name="name-one")
    two = await create(gql, admin, name="name-two")
    renamed = (await gql.data(UPDATE, {"id": two["id"], "input": {"name": "name-three"}}, key=admin))["updateScenario"]
    assert renamed["name"] == "name-three"
    body = await gql(UPDATE, {"id": two["id"], "input": {"name": "name-one"}}, key=admin)
    assert error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": "input.name"}
    body = await gql(CREATE, {"input": {"name": "name-one"}}, key=admin)
    assert error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": "input.name"}
    names = [s["name"] for s in await all_scenarios(gql, admin)]
    assert names.count("name-one") == 1 and "name-three" in names
    assert (await gql.data(GET, {"id": one["id"]}, key=admin))["scenario"]["name"] == "name-one"


async def test_delete_then_lookup_is_null(gql, admin):
    sc = await create(gql, admin, name="to-delete")
    assert (await gql.data(DELETE, {"id": sc["id"]}, key=admin))["deleteScenario"] is True
    assert (await gql.data(GET, {"id": sc["id"]}, key=admin))["scenario"] is None
    assert sc["id"] not in [s["id"] for s in await all_scenarios(gql, admin)]
    body = await gql(DELETE, {"id": sc["id"]}, key=admin)
    assert error(body)["extensions"] == {"code": "NOT_FOUND", "field": "id"}
    body = await gql(UPDATE, {"id": sc["id"], "input": {"name": "ghost"}}, key=admin)
    assert error(body)["extensions"] == {"code": "NOT_FOUND", "field": "id"}
    # The name is free again.
    assert (await create(gql, admin, name="to-delete"))["id"] != sc["id"]


async def test_pagination_covers_every_scenario_once(served, gql):
    key = (await new_tenant(served, "scenario-pages")).admin
    created = [(await create(gql, key, name=f"p{i}"))["id"] for i in range(5)]
    seen, after, pages = [], None, 0
    while True:
        conn = (await gql.data(PAGE, {"first": 2, "after": after}, key=key))["scenarios"]
        pages += 1
        assert len(conn["edges"]) <= 2
        seen += [e["node"]["id"] for e in conn["edges"]]
        assert conn["pageInfo"]["endCursor"] == conn["edges"][-1]["cursor"]
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
        assert pages < 10
    assert seen == created  # oldest first, no repeats, none missing
    assert pages == 3
    assert (await gql.data(PAGE, {"first": 5}, key=key))["scenarios"]["pageInfo"]["hasNextPage"] is False
    assert (await gql.data(PAGE, {"first": 4}, key=key))["scenarios"]["pageInfo"]["hasNextPage"] is True
    empty = (await gql.data(PAGE, {"first": 0}, key=key))["scenarios"]
    assert empty["edges"] == [] and empty["pageInfo"]["endCursor"] is None


@pytest.mark.parametrize(
    "variables,field",
    [
        ({"first": 201}, "first"),
        ({"first": -1}, "first"),
        ({"first": 2, "after": "garbage!"}, "after"),
        ({"first": 2, "after": "dGhpcyBpcyBub3Q"}, "after"),  # valid base64, not our cursor
    ],
)
async def test_bad_page_arguments_are_refused(gql, admin, variables, field):
    body = await gql(PAGE, variables, key=admin)
    err = error(body)
    assert err["extensions"] == {"code": "BAD_USER_INPUT", "field": field}
    assert body["data"] is None


async def test_first_200_is_allowed(gql, admin):
    assert (await gql.data(PAGE, {"first": 200}, key=admin))["scenarios"]["edges"]


async def test_scenario_config_schema(gql, admin):
    schema = (await gql.data("{ scenarioConfigSchema }", key=admin))["scenarioConfigSchema"]
    assert schema["type"] == "object"
    assert schema["properties"]["recall"]["type"] == "array"
    assert schema["required"] == ["recall"]
    sources = schema["properties"]["recall"]["items"]["properties"]["source"]["enum"]
    assert {"popular", "trending", "item_cf", "user_cf", "als", "ease", "content", "vector", "fresh",
            "affinity"} <= set(sources)


async def test_renaming_to_its_own_name_is_not_a_conflict(gql, admin):
    sc = await create(gql, admin, name="same-name")
    up = (await gql.data(UPDATE, {"id": sc["id"], "input": {"name": " same-name "}}, key=admin))["updateScenario"]
    assert up["name"] == "same-name" and up["configVersion"] == 1


async def test_delete_removes_items_it_alone_served_and_its_interactions(gql, admin):
    upsert = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
    record = "mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted errors { field } } }"
    item = "query($id: ID!) { item(id: $id) { scenarioIds } }"
    gone = await create(gql, admin, name="cascade-gone")
    kept = await create(gql, admin, name="cascade-kept")
    await gql.data(upsert, {"s": gone["id"], "items": [{"id": "c-alone"}, {"id": "c-shared"}]}, key=admin)
    await gql.data(upsert, {"s": kept["id"], "items": [{"id": "c-shared"}]}, key=admin)
    await gql.data(record, {"e": [{"scenarioId": gone["id"], "userId": "u", "itemId": "c-alone", "type": "VIEW"}]},
                   key=admin)
    assert (await gql.data(DELETE, {"id": gone["id"]}, key=admin))["deleteScenario"] is True
    assert (await gql.data(item, {"id": "c-alone"}, key=admin))["item"] is None
    assert (await gql.data(item, {"id": "c-shared"}, key=admin))["item"] == {"scenarioIds": [kept["id"]]}
    res = (await gql.data(record, {"e": [
        {"scenarioId": gone["id"], "userId": "u", "itemId": "c-shared", "type": "VIEW"},
        {"scenarioId": kept["id"], "userId": "u", "itemId": "c-shared", "type": "VIEW"},
    ]}, key=admin))["recordInteractions"]
    assert res == {"accepted": 1, "errors": [{"field": "scenarioId"}]}
