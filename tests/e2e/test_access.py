"""Access over HTTP: authentication, scopes, API key lifecycle, and tenant isolation in every area."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import new_tenant

CREATE_SCENARIO = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id name configVersion } }"
UPDATE_SCENARIO = "mutation($id: ID!, $input: UpdateScenarioInput!) { updateScenario(id: $id, input: $input) { id } }"
DELETE_SCENARIO = "mutation($id: ID!) { deleteScenario(id: $id) }"
SCENARIO = "query($id: ID!) { scenario(id: $id) { id name } }"
SCENARIOS = "{ scenarios(first: 200) { edges { node { id } } } }"
UPSERT = """mutation($s: ID!, $items: [ItemInput!]!) {
  upsertItems(scenarioId: $s, items: $items) { upserted errors { index field message } } }"""
DELETE_ITEMS = "mutation($s: ID!, $ids: [ID!]!) { deleteItems(scenarioId: $s, ids: $ids) }"
ITEM = "query($id: ID!) { item(id: $id) { id title scenarioIds } }"
ITEMS = "query($s: ID!) { items(scenarioId: $s, first: 200) { edges { node { id title } } } }"
RECORD = """mutation($events: [InteractionInput!]!) {
  recordInteractions(events: $events) { accepted duplicates errors { index field message } } }"""
PROFILE = "query($u: ID!) { profile(userId: $u) { userId interactionCount } }"
DELETE_USER = "mutation($u: ID!) { deleteUserData(userId: $u) }"
API_KEYS = "{ apiKeys { id scope prefix createdAt revokedAt } }"
CREATE_KEY = "mutation($scope: ApiKeyScope!) { createApiKey(scope: $scope) { secret key { id scope prefix } } }"
REVOKE_KEY = "mutation($id: ID!) { revokeApiKey(id: $id) }"
ROTATE_KEY = "mutation($id: ID!) { rotateApiKey(id: $id) { secret key { id scope prefix } } }"
CONFIG_SCHEMA = "{ scenarioConfigSchema }"


def codes(body: dict) -> list[str]:
    """Return the extensions.code of every error in a response."""
    return [e.get("extensions", {}).get("code") for e in body.get("errors") or []]


def error(body: dict) -> dict:
    """Return the only error of a response."""
    assert len(body.get("errors") or []) == 1, body
    return body["errors"][0]


def past(minutes: int = 60) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat()


def event(scenario: str, item: str, user: str = "u1", kind: str = "VIEW", **extra) -> dict:
    return {"scenarioId": scenario, "userId": user, "itemId": item, "type": kind, "timestamp": past(), **extra}


@pytest.fixture(scope="module")
async def world(served, gql):
    """Two fresh tenants, each with a scenario, an item and a user with history."""
    out = {}
    for name in ("a", "b"):
        keys = await new_tenant(served, f"access-{name}")
        sc = (await gql.data(CREATE_SCENARIO, {"input": {"name": "feed", "template": "CUSTOM"}}, key=keys.admin))
        sid = sc["createScenario"]["id"]
        await gql.data(UPSERT, {"s": sid, "items": [{"id": f"only-{name}", "title": f"Only {name}"},
                                                    {"id": "shared", "title": f"Shared {name}"}]}, key=keys.admin)
        res = await gql.data(RECORD, {"events": [event(sid, "shared", user="alice")]}, key=keys.admin)
        assert res["recordInteractions"]["accepted"] == 1
        out[name] = (keys, sid)
    return out


# --- authentication -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "rg_admin_not-a-real-key", "garbage"])
@pytest.mark.parametrize(
    "query,variables",
    [
        (SCENARIOS, {}),
        (ITEM, {"id": "shared"}),
        (RECORD, {"events": [{"scenarioId": "x", "userId": "u", "itemId": "i", "type": "VIEW"}]}),
        (PROFILE, {"u": "alice"}),
        (API_KEYS, {}),
    ],
)
async def test_no_or_bad_key_is_unauthenticated(gql, world, key, query, variables):
    body = await gql(query, variables, key=key)
    assert codes(body) == ["UNAUTHENTICATED"], body


async def test_non_bearer_scheme_is_unauthenticated(gql, world):
    keys, _ = world["a"]
    body = await gql(SCENARIOS, Authorization=f"Basic {keys.admin}")
    assert codes(body) == ["UNAUTHENTICATED"]


async def test_unauthenticated_nullable_field_is_null_with_error(gql, world):
    body = await gql(ITEM, {"id": "shared"})
    assert body["data"] == {"item": None}
    assert error(body)["path"] == ["item"]


# --- scopes ---------------------------------------------------------------------------------------------------


async def test_public_key_is_forbidden_admin_and_reader_operations(gql, world):
    keys, sid = world["a"]
    calls = [
        (CREATE_SCENARIO, {"input": {"name": "nope"}}),
        (UPDATE_SCENARIO, {"id": sid, "input": {"name": "nope"}}),
        (DELETE_SCENARIO, {"id": sid}),
        (UPSERT, {"s": sid, "items": [{"id": "p1"}]}),
        (DELETE_ITEMS, {"s": sid, "ids": ["shared"]}),
        (PROFILE, {"u": "alice"}),
        (API_KEYS, {}),
        (SCENARIO, {"id": sid}),
        (SCENARIOS, {}),
        (DELETE_USER, {"u": "alice"}),
        (CREATE_KEY, {"scope": "ADMIN"}),
        (CONFIG_SCHEMA, {}),
    ]
    for query, variables in calls:
        body = await gql(query, variables, key=keys.public)
        assert codes(body) == ["FORBIDDEN"], (query, body)
    # Nothing changed: the scenario and item are still there, nothing was created.
    admin = await gql.data(SCENARIOS, key=keys.admin)
    assert [e["node"]["id"] for e in admin["scenarios"]["edges"]] == [sid]
    assert (await gql.data(PROFILE, {"u": "alice"}, key=keys.admin))["profile"]["interactionCount"] == 1
    assert (await gql.data(ITEM, {"id": "shared"}, key=keys.admin))["item"]["id"] == "shared"


async def test_public_key_reads_items_and_records_interactions(gql, world):
    keys, sid = world["a"]
    assert (await gql.data(ITEM, {"id": "only-a"}, key=keys.public))["item"] == {
        "id": "only-a", "title": "Only a", "scenarioIds": [sid],
    }
    listed = await gql.data(ITEMS, {"s": sid}, key=keys.public)
    assert sorted(e["node"]["id"] for e in listed["items"]["edges"]) == ["only-a", "shared"]
    res = await gql.data(RECORD, {"events": [event(sid, "only-a", user="pub-user")]}, key=keys.public)
    assert res["recordInteractions"] == {"accepted": 1, "duplicates": 0, "errors": []}
    profile = await gql.data(PROFILE, {"u": "pub-user"}, key=keys.admin)
    assert profile["profile"]["interactionCount"] == 1


async def test_gateway_key_reads_but_does_not_administer(gql, world):
    keys, sid = world["a"]
    assert (await gql.data(PROFILE, {"u": "alice"}, key=keys.gateway))["profile"]["interactionCount"] >= 1
    assert (await gql.data(SCENARIO, {"id": sid}, key=keys.gateway))["scenario"]["id"] == sid
    assert sid in [e["node"]["id"] for e in (await gql.data(SCENARIOS, key=keys.gateway))["scenarios"]["edges"]]
    assert "properties" in (await gql.data(CONFIG_SCHEMA, key=keys.gateway))["scenarioConfigSchema"]
    for query, variables in [
        (CREATE_SCENARIO, {"input": {"name": "gw"}}),
        (UPDATE_SCENARIO, {"id": sid, "input": {"name": "gw"}}),
        (DELETE_SCENARIO, {"id": sid}),
        (UPSERT, {"s": sid, "items": [{"id": "gw"}]}),
        (API_KEYS, {}),
        (DELETE_USER, {"u": "alice"}),
    ]:
        body = await gql(query, variables, key=keys.gateway)
        assert codes(body) == ["FORBIDDEN"], (query, body)
    assert (await gql.data(SCENARIO, {"id": sid}, key=keys.admin))["scenario"]["name"] == "feed"


async def test_admin_key_does_everything(served, gql):
    keys = await new_tenant(served, "access-admin")
    sid = (await gql.data(CREATE_SCENARIO, {"input": {"name": "adm"}}, key=keys.admin))["createScenario"]["id"]
    await gql.data(UPDATE_SCENARIO, {"id": sid, "input": {"name": "adm2"}}, key=keys.admin)
    await gql.data(UPSERT, {"s": sid, "items": [{"id": "i1"}]}, key=keys.admin)
    await gql.data(RECORD, {"events": [event(sid, "i1")]}, key=keys.admin)
    assert (await gql.data(PROFILE, {"u": "u1"}, key=keys.admin))["profile"]["interactionCount"] == 1
    assert len((await gql.data(API_KEYS, key=keys.admin))["apiKeys"]) == 3
    assert (await gql.data(DELETE_ITEMS, {"s": sid, "ids": ["i1"]}, key=keys.admin))["deleteItems"] == 1
    assert (await gql.data(DELETE_USER, {"u": "u1"}, key=keys.admin))["deleteUserData"] >= 2
    assert (await gql.data(DELETE_SCENARIO, {"id": sid}, key=keys.admin))["deleteScenario"] is True


# --- API keys -------------------------------------------------------------------------------------------------


async def test_created_key_works_and_is_listed_by_prefix_only(served, gql):
    keys = await new_tenant(served, "access-keys")
    new = (await gql.data(CREATE_KEY, {"scope": "GATEWAY"}, key=keys.admin))["createApiKey"]
    secret, key = new["secret"], new["key"]
    assert key["scope"] == "GATEWAY" and secret.startswith(key["prefix"]) and len(secret) > len(key["prefix"]) + 8
    # The new key authenticates with its scope: reads allowed, admin refused.
    assert (await gql.data(SCENARIOS, key=secret))["scenarios"]["edges"] == []
    assert codes(await gql(API_KEYS, key=secret)) == ["FORBIDDEN"]
    body = await gql(API_KEYS, key=keys.admin)
    listed = body["data"]["apiKeys"]
    assert len(listed) == 4
    mine = [k for k in listed if k["id"] == key["id"]]
    assert mine == [{"id": key["id"], "scope": "GATEWAY", "prefix": key["prefix"], "createdAt": mine[0]["createdAt"],
                     "revokedAt": None}]
    raw = json.dumps(body)
    for s in (secret, keys.admin, keys.public, keys.gateway):
        assert s not in raw


async def test_revoked_key_is_unauthenticated_at_once(served, gql):
    keys = await new_tenant(served, "access-revoke")
    new = (await gql.data(CREATE_KEY, {"scope": "ADMIN"}, key=keys.admin))["createApiKey"]
    assert (await gql.data(API_KEYS, key=new["secret"]))["apiKeys"]  # used once: authentication is cached now
    assert (await gql.data(REVOKE_KEY, {"id": new["key"]["id"]}, key=keys.admin))["revokeApiKey"] is True
    assert codes(await gql(API_KEYS, key=new["secret"])) == ["UNAUTHENTICATED"]
    listed = (await gql.data(API_KEYS, key=keys.admin))["apiKeys"]
    assert new["key"]["id"] not in [k["id"] for k in listed]
    # Revoking again, or an unknown id, is false.
    assert (await gql.data(REVOKE_KEY, {"id": new["key"]["id"]}, key=keys.admin))["revokeApiKey"] is False
    assert (await gql.data(REVOKE_KEY, {"id": "k_nope"}, key=keys.admin))["revokeApiKey"] is False


async def test_rotated_key_replaces_the_old_one(served, gql):
    keys = await new_tenant(served, "access-rotate")
    old = (await gql.data(CREATE_KEY, {"scope": "PUBLIC"}, key=keys.admin))["createApiKey"]
    assert (await gql.data(ITEM, {"id": "x"}, key=old["secret"]))["item"] is None
    new = (await gql.data(ROTATE_KEY, {"id": old["key"]["id"]}, key=keys.admin))["rotateApiKey"]
    assert new["key"]["scope"] == "PUBLIC" and new["key"]["id"] != old["key"]["id"] and new["secret"] != old["secret"]
    assert (await gql.data(ITEM, {"id": "x"}, key=new["secret"]))["item"] is None
    assert codes(await gql(ITEM, {"id": "x"}, key=old["secret"])) == ["UNAUTHENTICATED"]
    ids = [k["id"] for k in (await gql.data(API_KEYS, key=keys.admin))["apiKeys"]]
    assert new["key"]["id"] in ids and old["key"]["id"] not in ids
    # A revoked key cannot be rotated.
    body = await gql(ROTATE_KEY, {"id": old["key"]["id"]}, key=keys.admin)
    assert codes(body) == ["NOT_FOUND"]


async def test_keys_of_another_tenant_cannot_be_revoked_or_rotated(gql, world):
    a, _ = world["a"]
    b, _ = world["b"]
    a_keys = (await gql.data(API_KEYS, key=a.admin))["apiKeys"]
    a_public = next(k for k in a_keys if k["scope"] == "PUBLIC")
    assert (await gql.data(REVOKE_KEY, {"id": a_public["id"]}, key=b.admin))["revokeApiKey"] is False
    assert codes(await gql(ROTATE_KEY, {"id": a_public["id"]}, key=b.admin)) == ["NOT_FOUND"]
    assert a_public["id"] not in [k["id"] for k in (await gql.data(API_KEYS, key=b.admin))["apiKeys"]]
    assert (await gql.data(ITEM, {"id": "only-a"}, key=a.public))["item"]["id"] == "only-a"


# --- tenant isolation, one test per area ----------------------------------------------------------------------


async def test_tenant_cannot_see_or_change_another_tenants_scenario(gql, world):
    a, a_sid = world["a"]
    b, b_sid = world["b"]
    assert (await gql.data(SCENARIO, {"id": a_sid}, key=b.admin))["scenario"] is None
    assert [e["node"]["id"] for e in (await gql.data(SCENARIOS, key=b.admin))["scenarios"]["edges"]] == [b_sid]
    for query, variables in [
        (UPDATE_SCENARIO, {"id": a_sid, "input": {"name": "stolen"}}),
        (UPDATE_SCENARIO, {"id": a_sid, "input": {"config": {"freshness": {"halfLifeHours": 1}}}}),
        (DELETE_SCENARIO, {"id": a_sid}),
    ]:
        body = await gql(query, variables, key=b.admin)
        assert codes(body) == ["NOT_FOUND"], body
        assert body["errors"][0]["extensions"].get("field") == "id"
    sc = (await gql.data("query($id: ID!) { scenario(id: $id) { name configVersion } }", {"id": a_sid},
                         key=a.admin))["scenario"]
    assert sc == {"name": "feed", "configVersion": 1}


async def test_tenant_cannot_list_or_write_another_tenants_items(gql, world):
    a, a_sid = world["a"]
    b, _ = world["b"]
    body = await gql(ITEMS, {"s": a_sid}, key=b.admin)
    assert codes(body) == ["NOT_FOUND"] and body["errors"][0]["extensions"]["field"] == "scenarioId"
    body = await gql(UPSERT, {"s": a_sid, "items": [{"id": "only-a", "title": "hijacked"}, {"id": "planted"}]},
                     key=b.admin)
    assert codes(body) == ["NOT_FOUND"]
    body = await gql(DELETE_ITEMS, {"s": a_sid, "ids": ["only-a"]}, key=b.admin)
    assert codes(body) == ["NOT_FOUND"]
    listed = await gql.data(ITEMS, {"s": a_sid}, key=a.admin)
    assert sorted((e["node"]["id"], e["node"]["title"]) for e in listed["items"]["edges"]) == [
        ("only-a", "Only a"), ("shared", "Shared a"),
    ]


async def test_tenant_cannot_read_another_tenants_item(gql, world):
    a, a_sid = world["a"]
    b, b_sid = world["b"]
    # B has no item with this id at all ...
    assert (await gql.data(ITEM, {"id": "only-a"}, key=b.admin))["item"] is None
    assert (await gql.data(ITEM, {"id": "only-a"}, key=b.public))["item"] is None
    # ... and where both have one, each sees its own.
    assert (await gql.data(ITEM, {"id": "shared"}, key=b.admin))["item"] == {
        "id": "shared", "title": "Shared b", "scenarioIds": [b_sid],
    }
    assert (await gql.data(ITEM, {"id": "shared"}, key=a.admin))["item"] == {
        "id": "shared", "title": "Shared a", "scenarioIds": [a_sid],
    }


async def test_same_client_item_id_in_two_tenants_are_separate_items(gql, world):
    a, a_sid = world["a"]
    b, b_sid = world["b"]
    await gql.data(UPSERT, {"s": b_sid, "items": [{"id": "twin", "title": "B twin", "categories": ["b"]}]},
                   key=b.admin)
    await gql.data(UPSERT, {"s": a_sid, "items": [{"id": "twin", "title": "A twin", "categories": ["a"]}]},
                   key=a.admin)
    q = "query($id: ID!) { item(id: $id) { title categories scenarioIds } }"
    assert (await gql.data(q, {"id": "twin"}, key=a.admin))["item"] == {"title": "A twin", "categories": ["a"],
                                                                          "scenarioIds": [a_sid]}
    assert (await gql.data(q, {"id": "twin"}, key=b.admin))["item"] == {"title": "B twin", "categories": ["b"],
                                                                          "scenarioIds": [b_sid]}
    assert (await gql.data(DELETE_ITEMS, {"s": a_sid, "ids": ["twin"]}, key=a.admin))["deleteItems"] == 1
    assert (await gql.data(q, {"id": "twin"}, key=a.admin))["item"] is None
    assert (await gql.data(q, {"id": "twin"}, key=b.admin))["item"]["title"] == "B twin"


async def test_tenant_cannot_record_interactions_against_another_tenant(gql, world):
    a, a_sid = world["a"]
    b, b_sid = world["b"]
    events = [
        event(a_sid, "only-a", user="mallory"),   # A's scenario and item
        event(a_sid, "shared", user="mallory"),   # A's scenario, an id B also has
        event(b_sid, "only-a", user="mallory"),   # B's scenario, A's item
    ]
    res = (await gql.data(RECORD, {"events": events}, key=b.admin))["recordInteractions"]
    assert res["accepted"] == 0 and res["duplicates"] == 0
    assert [(e["index"], e["field"]) for e in res["errors"]] == [(0, "scenarioId"), (1, "scenarioId"), (2, "itemId")]
    assert (await gql.data(PROFILE, {"u": "mallory"}, key=a.admin))["profile"] is None
    assert (await gql.data(PROFILE, {"u": "mallory"}, key=b.admin))["profile"] is None


async def test_tenant_cannot_read_or_erase_another_tenants_user(gql, world):
    a, a_sid = world["a"]
    b, _ = world["b"]
    await gql.data(RECORD, {"events": [event(a_sid, "only-a", user="only-in-a")]}, key=a.admin)
    before = (await gql.data(PROFILE, {"u": "only-in-a"}, key=a.admin))["profile"]["interactionCount"]
    assert (await gql.data(PROFILE, {"u": "only-in-a"}, key=b.admin))["profile"] is None
    assert (await gql.data(PROFILE, {"u": "only-in-a"}, key=b.gateway))["profile"] is None
    assert (await gql.data(DELETE_USER, {"u": "only-in-a"}, key=b.admin))["deleteUserData"] == 0
    assert (await gql.data(PROFILE, {"u": "only-in-a"}, key=a.admin))["profile"]["interactionCount"] == before
    # "alice" exists in both tenants: erasing her in B leaves A's alice alone.
    alice_a = (await gql.data(PROFILE, {"u": "alice"}, key=a.admin))["profile"]["interactionCount"]
    assert (await gql.data(DELETE_USER, {"u": "alice"}, key=b.admin))["deleteUserData"] >= 2
    assert (await gql.data(PROFILE, {"u": "alice"}, key=b.admin))["profile"] is None
    assert (await gql.data(PROFILE, {"u": "alice"}, key=a.admin))["profile"]["interactionCount"] == alice_a
