"""Interactions over HTTP: per-event validation, idempotency by event id, whole-request refusals, batch limits."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import new_tenant

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
RECORD = """mutation($events: [InteractionInput!]!) {
  recordInteractions(events: $events) { accepted duplicates errors { index field message } } }"""
PROFILE = "query($u: ID!) { profile(userId: $u) { interactionCount countsByType { type count } } }"


def at(**delta: float) -> str:
    """Return now + delta as ISO-8601 with offset."""
    return (datetime.now(UTC) + timedelta(**delta)).isoformat()


def error(body: dict) -> dict:
    assert len(body.get("errors") or []) == 1, body
    return body["errors"][0]


@pytest.fixture(scope="module")
async def shop(served, gql):
    """A tenant with two scenarios: s1 holds i1 and i2, s2 holds j1."""
    keys = await new_tenant(served, "interactions")
    s1 = (await gql.data(CREATE, {"input": {"name": "s1"}}, key=keys.admin))["createScenario"]["id"]
    s2 = (await gql.data(CREATE, {"input": {"name": "s2"}}, key=keys.admin))["createScenario"]["id"]
    await gql.data(UPSERT, {"s": s1, "items": [{"id": "i1", "categories": ["c1"]}, {"id": "i2"}]}, key=keys.admin)
    await gql.data(UPSERT, {"s": s2, "items": [{"id": "j1", "attributes": {"durationSeconds": 60}}]}, key=keys.admin)
    return keys, s1, s2


async def record(gql, key: str, events: list[dict]) -> dict:
    return (await gql.data(RECORD, {"events": events}, key=key))["recordInteractions"]


async def count(gql, key: str, user: str) -> int | None:
    profile = (await gql.data(PROFILE, {"u": user}, key=key))["profile"]
    return None if profile is None else profile["interactionCount"]


async def settled(gql, key: str, user: str, expected: int, timeout_s: float = 15.0) -> int | None:
    """Return the user's interaction count once it is `expected`, or what it is after timeout_s. Profiles are
    kept by the event consumer after the write has answered: read-after-write is eventual (milliseconds when the
    machine is idle, longer under a loaded test run), so a count is read only once it has had time to settle."""
    deadline = time.monotonic() + timeout_s
    while (n := await count(gql, key, user)) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return n


async def after_sentinel(gql, key: str, scenario: str, user: str, before: int) -> int | None:
    """Record one valid event for the user and return the count once it is applied. The tenant's stream is
    applied in order, so anything stored by an earlier request is counted by then: `before + 1` proves that
    nothing else was stored."""
    assert (await record(gql, key, [ev(scenario, "i1", user)]))["accepted"] == 1
    return await settled(gql, key, user, before + 1)


def ev(scenario: str, item: str, user: str, kind: str = "VIEW", **extra) -> dict:
    return {"scenarioId": scenario, "userId": user, "itemId": item, "type": kind, "timestamp": at(minutes=-30),
            **extra}


async def test_mixed_batch_stores_exactly_the_valid_events(gql, shop):
    keys, s1, s2 = shop
    u = "mixed"
    events = [
        ev(s1, "i1", u, eventId="m0"),                                   # 0 valid
        ev(s1, "nope", u, eventId="m1"),                                 # 1 unknown item
        ev(s1, "j1", u, eventId="m2"),                                   # 2 item of another scenario
        ev("sc_unknown", "i1", u, eventId="m3"),                         # 3 unknown scenario
        {**ev(s1, "i1", u, eventId="m4"), "timestamp": at(minutes=10)},  # 4 future
        ev(s1, "i1", "", eventId="m5"),                                  # 5 empty user
        ev(s1, "i1", u, "RATING", eventId="m6"),                         # 6 rating without value
        ev(s1, "i1", u, "RATING", value=11, eventId="m7"),               # 7 rating out of range
        ev(s2, "j1", u, "WATCH", value=-1, eventId="m8"),                # 8 negative watch
        ev(s1, "i2", u, "RATING", value=4, eventId="m9"),                # 9 valid
        ev(s2, "j1", u, "WATCH", value=30, eventId="m10"),               # 10 valid
        {**ev(s1, "i2", u, eventId="m11"), "timestamp": at(minutes=2)},  # 11 valid: within 5 minutes
        ev(s1, "i1", "   ", eventId="m12"),                              # 12 blank user
        ev(s1, "i1", u, "VIEW", value=-3, eventId="m13"),                # 13 negative amount
        ev(s2, "j1", u, "WATCH", eventId="m14"),                         # 14 watch without seconds
        {**ev(s1, "i2", u, "CLICK"), "eventId": "m15", "context": {"page": "home"}, "requestId": "r1"},  # 15 valid
    ]
    res = await record(gql, keys.admin, events)
    errors = [(e["index"], e["field"]) for e in res["errors"]]
    assert errors == [
        (1, "itemId"), (2, "itemId"), (3, "scenarioId"), (4, "timestamp"), (5, "userId"), (6, "value"),
        (7, "value"), (8, "value"), (12, "userId"), (13, "value"), (14, "value"),
    ]
    assert all(e["message"] for e in res["errors"])
    assert res["accepted"] == 5 and res["duplicates"] == 0
    assert await settled(gql, keys.admin, u, 5) == 5
    by_type = {c["type"]: c["count"] for c in (await gql.data(PROFILE, {"u": u}, key=keys.admin))["profile"]["countsByType"]}
    assert by_type == {"VIEW": 2, "RATING": 1, "WATCH": 1, "CLICK": 1}

    # The same batch again: nothing new is stored, the valid ones are duplicates, the errors are the same.
    again = await record(gql, keys.admin, events)
    assert again["accepted"] == 0 and again["duplicates"] == 5
    assert [(e["index"], e["field"]) for e in again["errors"]] == errors
    assert await after_sentinel(gql, keys.admin, s1, u, 5) == 6


async def test_same_event_id_twice_in_one_batch(gql, shop):
    keys, s1, _ = shop
    u = "twice"
    res = await record(gql, keys.admin, [ev(s1, "i1", u, eventId="dup"), ev(s1, "i2", u, "LIKE", eventId="dup"),
                                         ev(s1, "i2", u, eventId="other")])
    assert res == {"accepted": 2, "duplicates": 1, "errors": []}
    assert await settled(gql, keys.admin, u, 2) == 2
    res = await record(gql, keys.admin, [ev(s1, "i1", u, eventId="dup"), ev(s1, "i1", u, eventId="new")])
    assert res == {"accepted": 1, "duplicates": 1, "errors": []}
    assert await after_sentinel(gql, keys.admin, s1, u, 3) == 4


async def test_events_without_event_id_are_each_stored(gql, shop):
    keys, s1, _ = shop
    u = "no-event-id"
    assert (await record(gql, keys.admin, [ev(s1, "i1", u), ev(s1, "i1", u)]))["accepted"] == 2
    assert (await record(gql, keys.admin, [ev(s1, "i1", u)]))["accepted"] == 1
    assert await after_sentinel(gql, keys.admin, s1, u, 3) == 4


async def test_event_ids_are_per_tenant(served, gql, shop):
    keys, s1, _ = shop
    other = await new_tenant(served, "interactions-other")
    sid = (await gql.data(CREATE, {"input": {"name": "s1"}}, key=other.admin))["createScenario"]["id"]
    await gql.data(UPSERT, {"s": sid, "items": [{"id": "i1"}]}, key=other.admin)
    assert (await record(gql, keys.admin, [ev(s1, "i1", "per-tenant", eventId="shared-eid")]))["accepted"] == 1
    res = await record(gql, other.admin, [ev(sid, "i1", "per-tenant", eventId="shared-eid")])
    assert res == {"accepted": 1, "duplicates": 0, "errors": []}
    assert await after_sentinel(gql, other.admin, sid, "per-tenant", 1) == 2
    assert await after_sentinel(gql, keys.admin, s1, "per-tenant", 1) == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"type": "BOGUS"},
        {"type": "view"},
        {"timestamp": "yesterday"},
        {"timestamp": "2024-13-45T99:00:00Z"},
        {"value": "a lot"},
        {"userId": None},
    ],
)
async def test_schema_level_errors_fail_the_whole_request(gql, shop, bad):
    keys, s1, _ = shop
    u = f"schema-refused-{sorted(bad.items())}"
    body = await gql(RECORD, {"events": [ev(s1, "i1", u), {**ev(s1, "i2", u), **bad}, ev(s1, "i2", u)]},
                     key=keys.admin)
    assert body["errors"] and body.get("data") is None, body
    assert await after_sentinel(gql, keys.admin, s1, u, 0) == 1


async def test_unknown_enum_literal_fails_validation(gql, shop):
    keys, s1, _ = shop
    u = "literal-refused"
    doc = f"""mutation {{ recordInteractions(events: [
        {{scenarioId: "{s1}", userId: "{u}", itemId: "i1", type: VIEW}},
        {{scenarioId: "{s1}", userId: "{u}", itemId: "i1", type: NOPE}}]) {{ accepted }} }}"""
    body = await gql(doc, key=keys.admin)
    assert body["errors"] and body.get("data") is None
    assert await after_sentinel(gql, keys.admin, s1, u, 0) == 1


async def test_more_than_5000_events_is_refused_whole(gql, shop):
    keys, s1, _ = shop
    u = "flood"
    events = [{"scenarioId": s1, "userId": u, "itemId": "i1", "type": "VIEW"}] * 5001
    body = await gql(RECORD, {"events": events}, key=keys.admin)
    assert error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": "events"}
    assert body["data"] is None
    assert await after_sentinel(gql, keys.admin, s1, u, 0) == 1


async def test_empty_batch_is_a_no_op(gql, shop):
    keys, _, _ = shop
    assert await record(gql, keys.admin, []) == {"accepted": 0, "duplicates": 0, "errors": []}


async def test_public_key_records_for_the_user_it_names(gql, shop):
    keys, s1, s2 = shop
    u = "frontend-user"
    res = await record(gql, keys.public, [ev(s1, "i1", u, "CLICK"), ev(s2, "j1", u, "WATCH", value=45)])
    assert res == {"accepted": 2, "duplicates": 0, "errors": []}
    assert await settled(gql, keys.admin, u, 2) == 2
