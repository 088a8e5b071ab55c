"""Query guards over HTTP: depth, aliases, and `first` limits on every list."""

from __future__ import annotations

import pytest
from graphql import GraphQLObjectType

from graph.schema import schema
from tests.conftest import new_tenant


def messages(body: dict) -> list[str]:
    return [e["message"] for e in body.get("errors") or []]


@pytest.fixture(scope="module")
async def keys(served):
    return await new_tenant(served, "guards")


@pytest.fixture(scope="module")
async def sid(gql, keys):
    q = "mutation { createScenario(input: {name: \"guarded\"}) { id } }"
    return (await gql.data(q, key=keys.admin))["createScenario"]["id"]


def nested(depth: int) -> str:
    """Return a selection `depth` fields deep under `item` (only the first two levels exist in the schema)."""
    inner = "id"
    for n in range(depth - 1, 0, -1):
        inner = f"f{n} {{ {inner} }}"
    return f"{{ item(id: \"x\") {{ {inner} }} }}"


async def test_query_deeper_than_the_limit_is_refused(gql, keys):
    body = await gql(nested(14), key=keys.admin)
    assert body.get("data") is None
    assert any("exceeds maximum operation depth of 12" in m for m in messages(body)), body


async def test_query_at_the_depth_limit_is_not_refused_for_depth(gql, keys):
    body = await gql(nested(12), key=keys.admin)
    # Fields f1... do not exist, so validation fails, but not because of depth.
    assert body["errors"]
    assert not any("depth" in m for m in messages(body)), body


async def test_deepest_real_selection_passes(gql, keys, sid):
    q = """query($u: ID!) { _entities(representations: [{__typename: "User", id: "u"}]) {
      ... on User { profile { recent { item { id categories } } } } }
      profile(userId: $u) { recent { item { id } } } }"""
    assert (await gql.data(q, {"u": "u"}, key=keys.admin)) == {"_entities": [{"profile": None}], "profile": None}


async def test_introspection_depth_is_not_limited(gql, keys):
    q = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { ofType " \
        "{ ofType { name } } } } } } } } } } } } }"
    body = await gql(q, key=keys.admin)
    assert not body.get("errors"), body
    assert body["data"]["__schema"]["types"]


async def test_more_than_30_aliases_are_refused(gql, keys):
    many = " ".join(f"a{n}: __typename" for n in range(31))
    body = await gql(f"{{ {many} }}", key=keys.admin)
    assert body.get("data") is None
    assert any("aliases" in m.lower() for m in messages(body)), body
    assert not (await gql(f"{{ {many} }}")).get("data")  # refused before authentication too


async def test_30_aliases_are_allowed(gql, keys):
    some = " ".join(f"a{n}: __typename" for n in range(30))
    data = await gql.data(f"{{ {some} }}", key=keys.admin)
    assert len(data) == 30 and set(data.values()) == {"Query"}


async def test_aliased_item_lookups_over_the_limit_are_refused(gql, keys):
    many = " ".join(f'a{n}: item(id: "i{n}") {{ id }}' for n in range(31))
    body = await gql(f"{{ {many} }}", key=keys.admin)
    assert body.get("data") is None and body["errors"]


@pytest.mark.parametrize(
    "query",
    [
        "query($first: Int) { scenarios(first: $first) { edges { node { id } } } }",
        "query($first: Int, $s: ID!) { items(scenarioId: $s, first: $first) { edges { node { id } } } }",
        "query($first: Int, $s: ID!) { recommendations(scenarioId: $s, userId: \"u1\", first: $first) { requestId } }",
        "query($first: Int, $s: ID!) { similarItems(scenarioId: $s, itemId: \"i1\", first: $first) { requestId } }",
        "query($first: Int, $s: ID!) { jobs(scenarioId: $s, first: $first) { edges { node { id } } } }",
        "query($first: Int) { auditLog(first: $first) { edges { node { id } } } }",
        "query($first: Int) { deadLetters(first: $first) { edges { node { id } } } }",
        "query($first: Int, $s: ID!) { experiments(scenarioId: $s, first: $first) { edges { node { id } } } }",
    ],
)
async def test_first_above_200_is_refused_on_every_list(gql, keys, sid, query):
    body = await gql(query, {"first": 201, "s": sid}, key=keys.admin)
    assert [e["extensions"] for e in body["errors"]] == [{"code": "BAD_USER_INPUT", "field": "first"}]
    assert body["data"] is None
    body = await gql(query, {"first": 10_000, "s": sid}, key=keys.admin)
    assert [e["extensions"]["code"] for e in body["errors"]] == ["BAD_USER_INPUT"]
    assert not (await gql(query, {"first": 200, "s": sid}, key=keys.admin)).get("errors")


def test_every_list_field_with_first_is_covered():
    """A new list field with `first` must be added to the test above."""
    paged = sorted(
        f"{type_name}.{field_name}"
        for type_name, gtype in schema._schema.type_map.items()
        if isinstance(gtype, GraphQLObjectType) and not type_name.startswith("__")
        for field_name, field in gtype.fields.items() if "first" in field.args
    )
    # Query.catalogueStats and Scenario.configVersions bound their own `first` (to 100: tests/e2e/test_analytics.py,
    # tests/e2e/test_scenario_history.py).
    assert paged == ["Item.similar", "Query.auditLog", "Query.catalogueStats", "Query.deadLetters", "Query.experiments", "Query.items",
                     "Query.jobs", "Query.recommendations", "Query.scenarios", "Query.similarItems",
                     "Scenario.configVersions", "Scenario.experiments", "Scenario.models", "User.recommendations"]


async def test_too_many_tokens_are_refused(gql, keys):
    huge = "{ " + " ".join("__typename" for _ in range(5001)) + " }"
    body = await gql(huge, key=keys.admin)
    assert body.get("data") is None and body["errors"]
