"""Profiles over HTTP: counters, preferences, recent items, first/last seen, and privacy erasure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import new_tenant

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
RECORD = "mutation($events: [InteractionInput!]!) { recordInteractions(events: $events) { accepted errors { index } } }"
PROFILE = """query($u: ID!) { profile(userId: $u) {
  userId interactionCount countsByType { type count } topCategories { label score } topTags { label score }
  recent { itemId scenarioId type timestamp item { id title } } firstSeen lastSeen } }"""
ERASE = "mutation($u: ID!) { deleteUserData(userId: $u) }"
BASE = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def when(minutes: int) -> str:
    return (BASE + timedelta(minutes=minutes)).isoformat()


def parse(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
async def shop(served, gql):
    keys = await new_tenant(served, "profiles")
    sid = (await gql.data(CREATE, {"input": {"name": "shop"}}, key=keys.admin))["createScenario"]["id"]
    items = [
        {"id": "x1", "title": "X one", "categories": ["x"], "tags": ["red"]},
        {"id": "x2", "title": "X two", "categories": ["x"], "tags": ["red", "big"]},
        {"id": "y1", "title": "Y one", "categories": ["y"], "tags": ["blue"]},
        {"id": "z1", "title": "Z one", "categories": ["z"]},
        {"id": "odd", "title": "Odd", "categories": ["a.b", "$c", "100%"]},
    ]
    assert (await gql.data(UPSERT, {"s": sid, "items": items}, key=keys.admin))["upsertItems"]["upserted"] == 5
    return keys, sid


async def record(gql, key: str, sid: str, user: str, steps: list[tuple[str, str, int]]) -> None:
    events = [{"scenarioId": sid, "userId": user, "itemId": item, "type": kind, "timestamp": when(m)}
              for item, kind, m in steps]
    res = (await gql.data(RECORD, {"events": events}, key=key))["recordInteractions"]
    assert res == {"accepted": len(events), "errors": []}


async def profile(gql, key: str, user: str) -> dict | None:
    return (await gql.data(PROFILE, {"u": user}, key=key))["profile"]


async def test_profile_after_interactions(gql, shop):
    keys, sid = shop
    # Sent out of order: the profile orders by event time, not by arrival.
    await record(gql, keys.admin, sid, "p1", [("y1", "VIEW", 2), ("x1", "LIKE", 0), ("x2", "LIKE", 3)])
    await record(gql, keys.admin, sid, "p1", [("z1", "DISLIKE", 1)])
    p = await profile(gql, keys.admin, "p1")
    assert p["userId"] == "p1" and p["interactionCount"] == 4
    assert {c["type"]: c["count"] for c in p["countsByType"]} == {"LIKE": 2, "VIEW": 1, "DISLIKE": 1}
    labels = [c["label"] for c in p["topCategories"]]
    assert labels == ["x", "y"]  # two likes beat one view; a disliked category is not a preference
    scores = {c["label"]: c["score"] for c in p["topCategories"]}
    assert scores["x"] == pytest.approx(8 * scores["y"], rel=1e-3)  # LIKE 4 x 2 vs VIEW 1, decay aside
    assert [t["label"] for t in p["topTags"]] == ["red", "big", "blue"]
    assert [(r["itemId"], r["type"]) for r in p["recent"]] == [("x2", "LIKE"), ("y1", "VIEW"), ("z1", "DISLIKE"),
                                                                ("x1", "LIKE")]
    assert [r["item"] for r in p["recent"]] == [{"id": "x2", "title": "X two"}, {"id": "y1", "title": "Y one"},
                                                {"id": "z1", "title": "Z one"}, {"id": "x1", "title": "X one"}]
    assert all(r["scenarioId"] == sid for r in p["recent"])
    assert [parse(r["timestamp"]) for r in p["recent"]] == [parse(when(m)) for m in (3, 2, 1, 0)]
    assert parse(p["firstSeen"]) == BASE and parse(p["lastSeen"]) == BASE + timedelta(minutes=3)


async def test_recent_item_is_null_once_the_item_is_gone(served, gql):
    keys = await new_tenant(served, "profiles-gone")
    sid = (await gql.data(CREATE, {"input": {"name": "s"}}, key=keys.admin))["createScenario"]["id"]
    await gql.data(UPSERT, {"s": sid, "items": [{"id": "g1", "title": "G"}, {"id": "g2", "title": "H"}]},
                   key=keys.admin)
    await record(gql, keys.admin, sid, "p-gone", [("g1", "VIEW", 0), ("g2", "VIEW", 1)])
    delete = "mutation($s: ID!, $ids: [ID!]!) { deleteItems(scenarioId: $s, ids: $ids) }"
    assert (await gql.data(delete, {"s": sid, "ids": ["g1"]}, key=keys.admin))["deleteItems"] == 1
    recent = (await profile(gql, keys.admin, "p-gone"))["recent"]
    assert [(r["itemId"], r["item"]) for r in recent] == [("g2", {"id": "g2", "title": "H"}), ("g1", None)]


async def test_labels_with_dots_dollars_and_percents_round_trip(gql, shop):
    keys, sid = shop
    await record(gql, keys.admin, sid, "p-odd", [("odd", "LIKE", 0)])
    labels = sorted(c["label"] for c in (await profile(gql, keys.admin, "p-odd"))["topCategories"])
    assert labels == sorted(["a.b", "$c", "100%"])


async def test_timestamps_with_offsets_are_stored_in_utc(gql, shop):
    keys, sid = shop
    events = [{"scenarioId": sid, "userId": "p-tz", "itemId": "x1", "type": "VIEW",
               "timestamp": "2025-03-01T14:30:00+02:00"}]
    assert (await gql.data(RECORD, {"events": events}, key=keys.admin))["recordInteractions"]["accepted"] == 1
    p = await profile(gql, keys.admin, "p-tz")
    assert parse(p["firstSeen"]) == datetime(2025, 3, 1, 12, 30, tzinfo=UTC)
    assert parse(p["firstSeen"]).utcoffset() == timedelta(0)


async def test_unknown_user_has_no_profile(gql, shop):
    keys, _ = shop
    assert await profile(gql, keys.admin, "never-seen") is None
    assert await profile(gql, keys.gateway, "never-seen") is None


async def test_user_entity_resolves_its_profile(gql, shop):
    keys, sid = shop
    await record(gql, keys.admin, sid, "p-entity", [("x1", "VIEW", 0)])
    q = """query($r: [_Any!]!) { _entities(representations: $r) { ... on User { id profile { interactionCount } } } }"""
    reps = [{"__typename": "User", "id": "p-entity"}, {"__typename": "User", "id": "nobody"}]
    data = await gql.data(q, {"r": reps}, key=keys.gateway)
    assert data["_entities"] == [{"id": "p-entity", "profile": {"interactionCount": 1}},
                                 {"id": "nobody", "profile": None}]


async def test_delete_user_data_erases_and_counting_restarts(gql, shop):
    keys, sid = shop
    u = "p-erase"
    await record(gql, keys.admin, sid, u, [("x1", "VIEW", 0), ("x2", "CLICK", 1), ("y1", "LIKE", 2)])
    await record(gql, keys.admin, sid, "p-bystander", [("x1", "VIEW", 0)])
    removed = (await gql.data(ERASE, {"u": u}, key=keys.admin))["deleteUserData"]
    assert removed >= 3 + 1  # three interactions and the profile, at least
    assert await profile(gql, keys.admin, u) is None
    assert (await profile(gql, keys.admin, "p-bystander"))["interactionCount"] == 1
    await record(gql, keys.admin, sid, u, [("z1", "VIEW", 5)])
    p = await profile(gql, keys.admin, u)
    assert p["interactionCount"] == 1
    assert [r["itemId"] for r in p["recent"]] == ["z1"]
    assert [c["label"] for c in p["topCategories"]] == ["z"]
    assert parse(p["firstSeen"]) == BASE + timedelta(minutes=5)


async def test_erasing_a_user_with_nothing_stored_removes_nothing(gql, shop):
    keys, sid = shop
    assert (await gql.data(ERASE, {"u": "p-nobody"}, key=keys.admin))["deleteUserData"] == 0
    await record(gql, keys.admin, sid, "p-twice", [("x1", "VIEW", 0)])
    assert (await gql.data(ERASE, {"u": "p-twice"}, key=keys.admin))["deleteUserData"] >= 2
    # Everything went the first time: a second erasure finds nothing to remove.
    assert (await gql.data(ERASE, {"u": "p-twice"}, key=keys.admin))["deleteUserData"] == 0
    assert (await gql.data(ERASE, {"u": "p-nobody"}, key=keys.admin))["deleteUserData"] == 0


async def test_blank_user_id_cannot_be_erased(gql, shop):
    keys, _ = shop
    body = await gql(ERASE, {"u": "  "}, key=keys.admin)
    assert [e["extensions"] for e in body["errors"]] == [{"code": "BAD_USER_INPUT", "field": "userId"}]
