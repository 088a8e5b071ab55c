"""Query cost over HTTP: nested lists and many `_entities` representations are refused before any resolver runs;
ordinary queries, federation batches and introspection pass."""

from __future__ import annotations

import pytest

from tests.conftest import new_tenant

NESTED = """query($s: ID!) { items(scenarioId: $s, first: 200) { edges { node {
  similar(first: 200) { items { item { similar(first: 200) { items { item { id } } } } } } } } } }"""
ENTITIES = """query($r: [_Any!]!, $s: ID!) { _entities(representations: $r) {
  ... on User { id recommendations(scenarioId: $s, first: 5) { items { item { id } } } } } }"""
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"


@pytest.fixture(scope="module")
async def keys(served):
    return await new_tenant(served, "costly")


@pytest.fixture(scope="module")
async def sid(gql, keys):
    q = "mutation { createScenario(input: {name: \"cost\", template: VLOG}) { id } }"
    sid = (await gql.data(q, key=keys.admin))["createScenario"]["id"]
    items = [{"id": f"c{n}", "title": f"Clip {n}", "categories": ["news" if n % 2 else "sport"]} for n in range(12)]
    assert (await gql.data(UPSERT, {"s": sid, "items": items}, key=keys.admin))["upsertItems"]["upserted"] == 12
    return sid


@pytest.fixture
def calls(served, monkeypatch):
    """Count the recommendation service's calls: a refused operation makes none."""
    service = served.runtime.services.recommendations
    counted = {"recommend": 0, "similar": 0}
    for name in counted:
        original = getattr(service, name)

        async def spy(*args, _name=name, _original=original, **kwargs):
            counted[_name] += 1
            return await _original(*args, **kwargs)

        monkeypatch.setattr(service, name, spy)
    return counted


def refusal(body: dict) -> dict:
    assert body["data"] is None, body
    assert len(body["errors"]) == 1, body
    return body["errors"][0]["extensions"]


@pytest.mark.parametrize("scope", ["public", "admin", "gateway"])
async def test_the_reviewers_nested_similar_query_is_too_costly_for_every_scope(gql, keys, sid, calls, served, scope):
    ext = refusal(await gql(NESTED, {"s": sid}, key=getattr(keys, scope)))
    limit = getattr(served.settings.graphql, f"max_cost_{scope}")
    assert ext == {"code": "QUERY_TOO_COSTLY", "cost": 16_281_401, "limit": limit}
    assert calls == {"recommend": 0, "similar": 0}


async def test_a_costly_query_without_a_key_gets_the_public_limit(gql, sid, served):
    ext = refusal(await gql(NESTED, {"s": sid}))
    assert ext["code"] == "QUERY_TOO_COSTLY" and ext["limit"] == served.settings.graphql.max_cost_public


async def test_the_limit_follows_the_keys_scope(gql, keys, sid, calls):
    # 1 + 100 * (2 + 5 + 20 * 2) = 4,701 fits the public limit; first: 20 inside 200 items is 1 + 200 * 47 = 9,401.
    q = """query($s: ID!, $n: Int) { items(scenarioId: $s, first: $n) { edges { node {
             similar(first: 20) { items { item { id } } } } } } }"""
    assert (await gql.data(q, {"s": sid, "n": 100}, key=keys.public))["items"]["edges"]
    assert calls["similar"] == 12
    assert refusal(await gql(q, {"s": sid, "n": 200}, key=keys.public))["cost"] == 9401
    assert (await gql.data(q, {"s": sid, "n": 200}, key=keys.admin))["items"]["edges"]


async def test_ordinary_queries_pass(gql, keys, sid):
    recs = """query($s: ID!) { recommendations(scenarioId: $s, userId: "u1", first: 200) {
                requestId items { score sources item { id title categories similar(first: 5) { items { item { id } } } } } } }"""
    assert (await gql.data(recs, {"s": sid}, key=keys.public))["recommendations"]["items"]
    listing = "query($s: ID!) { items(scenarioId: $s, first: 200) { totalCount edges { node { id title } } } }"
    assert (await gql.data(listing, {"s": sid}, key=keys.public))["items"]["totalCount"] == 12


async def test_more_representations_than_the_cap_are_refused_before_any_resolver(gql, keys, sid, calls, served):
    cap = served.settings.graphql.max_representations
    reps = [{"__typename": "User", "id": f"u{n}"} for n in range(cap + 1)]
    ext = refusal(await gql(ENTITIES, {"r": reps, "s": sid}, key=keys.gateway))
    assert ext == {"code": "QUERY_TOO_COSTLY", "field": "representations", "cost": cap + 1, "limit": cap}
    assert calls["recommend"] == 0


async def test_representations_up_to_the_cap_pass(gql, keys, sid, calls):
    reps = [{"__typename": "User", "id": f"u{n}"} for n in range(40)]
    data = await gql.data(ENTITIES, {"r": reps, "s": sid}, key=keys.gateway)
    assert len(data["_entities"]) == 40 and calls["recommend"] == 40
    cheap = "query($r: [_Any!]!) { _entities(representations: $r) { ... on User { id } } }"
    reps = [{"__typename": "User", "id": f"u{n}"} for n in range(100)]
    assert len((await gql.data(cheap, {"r": reps}, key=keys.gateway))["_entities"]) == 100


async def test_introspection_keeps_working(gql, keys):
    q = """{ __schema { queryType { name } types { name kind fields(includeDeprecated: true) { name args { name }
             type { name kind ofType { name kind ofType { name kind } } } } } } }"""
    for key in (keys.public, None):
        body = await gql(q, key=key)
        assert not body.get("errors"), body
        assert len(body["data"]["__schema"]["types"]) > 20
