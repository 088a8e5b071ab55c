"""Small hostile inputs over HTTP: forged cursor offsets, `debug` from a public key, long title searches, and
oversized or deeply nested `context` on recommendations and events."""

from __future__ import annotations

import base64

import pytest

from tests.conftest import new_tenant

RECS = """query($s: ID!, $u: ID!, $after: String, $context: JSON, $debug: Boolean) {
  recommendations(scenarioId: $s, userId: $u, first: 3, after: $after, context: $context, debug: $debug) {
    requestId nextCursor debug items { item { id } } } }"""
LIST = """query($s: ID!, $f: ItemFilter) { items(scenarioId: $s, filter: $f, first: 50) { edges { node { id } } } }"""
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
RECORD = """mutation($events: [InteractionInput!]!) {
  recordInteractions(events: $events) { accepted errors { index field message } } }"""


@pytest.fixture(scope="module")
async def keys(served):
    return await new_tenant(served, "small-paths")


@pytest.fixture(scope="module")
async def sid(gql, keys):
    q = "mutation { createScenario(input: {name: \"paths\", template: VLOG}) { id } }"
    sid = (await gql.data(q, key=keys.admin))["createScenario"]["id"]
    items = [{"id": f"p{n}", "title": f"one two three four five six seven eight nine clip {n}", "categories": ["c"]}
             for n in range(10)]
    await gql.data(UPSERT, {"s": sid, "items": items}, key=keys.admin)
    return sid


def only_error(body: dict) -> dict:
    assert body["data"] is None and len(body["errors"]) == 1, body
    return body["errors"][0]["extensions"]


def cursor(text: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{text}".encode()).decode().rstrip("=")


@pytest.mark.parametrize("offset", ["²", "9" * 5000])
async def test_a_cursor_offset_like_superscript_two_is_bad_user_input_naming_after(gql, keys, sid, offset):
    first = (await gql.data(RECS, {"s": sid, "u": "u1"}, key=keys.public))["recommendations"]
    forged = cursor(f"{first['requestId']}@{offset}")
    ext = only_error(await gql(RECS, {"s": sid, "u": "u1", "after": forged}, key=keys.public))
    assert ext == {"code": "BAD_USER_INPUT", "field": "after"}


async def test_debug_from_a_public_key_is_forbidden_naming_debug(gql, keys, sid):
    ext = only_error(await gql(RECS, {"s": sid, "u": "u1", "debug": True}, key=keys.public))
    assert ext == {"code": "FORBIDDEN", "field": "debug"}
    assert (await gql.data(RECS, {"s": sid, "u": "u1", "debug": False}, key=keys.public))["recommendations"]
    for key in (keys.admin, keys.gateway):
        answer = (await gql.data(RECS, {"s": sid, "u": "u1", "debug": True}, key=key))["recommendations"]
        assert answer["debug"]["timings"]


async def test_title_search_of_more_than_eight_words_is_bad_user_input(gql, keys, sid):
    eight = "one two three four five six seven eight"
    assert len((await gql.data(LIST, {"s": sid, "f": {"search": eight}}, key=keys.public))["items"]["edges"]) == 10
    ext = only_error(await gql(LIST, {"s": sid, "f": {"search": eight + " nine"}}, key=keys.public))
    assert ext == {"code": "BAD_USER_INPUT", "field": "filter.search"}
    ext = only_error(await gql(LIST, {"s": sid, "f": {"search": "x" * 300}}, key=keys.public))
    assert ext == {"code": "BAD_USER_INPUT", "field": "filter.search"}


def nested(levels: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"next": value}
    return value


@pytest.mark.parametrize("context", [nested(5), {f"k{n}": n for n in range(65)}, {"text": "x" * 4100}])
async def test_recommendations_context_beyond_its_bounds_is_bad_user_input(gql, keys, sid, context):
    ext = only_error(await gql(RECS, {"s": sid, "u": "u2", "context": context}, key=keys.public))
    assert ext == {"code": "BAD_USER_INPUT", "field": "context"}


async def test_event_context_beyond_its_bounds_is_a_per_event_error(gql, keys, sid):
    event = {"scenarioId": sid, "userId": "u3", "itemId": "p1", "type": "CLICK"}
    events = [{**event, "context": nested(5)}, {**event, "context": {f"k{n}": n for n in range(65)}},
              {**event, "context": {"text": "x" * 4100}}, {**event, "context": nested(4)}]
    result = (await gql.data(RECORD, {"events": events}, key=keys.public))["recordInteractions"]
    assert result["accepted"] == 1
    assert [(e["index"], e["field"]) for e in result["errors"]] == [(0, "context"), (1, "context"), (2, "context")]
