"""Dead letters over HTTP (issue 10, item 1): an event that keeps failing is listed by `deadLetters` to its tenant's
admin only, counted at /metrics, and sent through again by `replayDeadLetters` once its cause is fixed, while
another tenant's clicks keep reaching its metrics and profile."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import httpx

from domain.realtime.keys import request_key
from tests.conftest import METRICS_AUTH, new_tenant
from tests.e2e.test_access import codes
from tests.integration.test_consumer_metrics import sample

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
RECORD = "mutation($events: [InteractionInput!]!) { recordInteractions(events: $events) { accepted } }"
PROFILE = "query($u: ID!) { profile(userId: $u) { interactionCount } }"
METRICS = "query($s: ID!) { metrics(scenarioId: $s, window: MINUTE) { clicks } }"
DEAD = """query($first: Int, $after: String) { deadLetters(first: $first, after: $after) {
  totalCount edges { cursor node { id receivedAt failedAt error entry } } pageInfo { hasNextPage endCursor } } }"""
REPLAY = "mutation($ids: [ID!]) { replayDeadLetters(ids: $ids) }"
WHEN = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()


async def shop(gql, admin: str) -> str:
    sid = (await gql.data(CREATE, {"input": {"name": "feed", "template": "CUSTOM"}}, key=admin))["createScenario"]["id"]
    await gql.data(UPSERT, {"s": sid, "items": [{"id": "a"}, {"id": "b"}]}, key=admin)
    return sid


def click(sid: str, user: str, event_id: str, **extra: str) -> dict:
    return {"scenarioId": sid, "userId": user, "itemId": "a", "type": "CLICK", "eventId": event_id, "timestamp": WHEN,
            **extra}


async def eventually(check, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout_s} s"
        await asyncio.sleep(0.02)


async def test_poison_batch_dead_letters_are_listed_replayed_and_private(served, gql):
    owner, other = await new_tenant(served, "dead-owner"), await new_tenant(served, "dead-other")
    sid, other_sid = await shop(gql, owner.admin), await shop(gql, other.admin)
    redis = served.runtime.cache.client
    await redis.set(request_key(owner.tenant_id, "broken"), "not a hash")  # any event citing it fails the script
    poison = [click(sid, f"p{n}", f"p{n}", requestId="broken") for n in range(3)] + [click(sid, "fine", "f1")]
    assert (await gql.data(RECORD, {"events": poison}, key=owner.public))["recordInteractions"]["accepted"] == 4
    sent = time.monotonic()
    await gql.data(RECORD, {"events": [click(other_sid, "c", f"c{n}") for n in range(2)]}, key=other.public)

    async def other_flows() -> bool:
        clicks = (await gql.data(METRICS, {"s": other_sid}, key=other.admin))["metrics"]["clicks"]
        profile = (await gql.data(PROFILE, {"u": "c"}, key=other.admin))["profile"]
        return clicks == 2 and profile is not None and profile["interactionCount"] == 2

    await eventually(other_flows, 1.0 - (time.monotonic() - sent))

    async def buried() -> bool:
        return (await gql.data(DEAD, {"first": 20}, key=owner.admin))["deadLetters"]["totalCount"] == 3

    await eventually(buried, 10.0)
    page = (await gql.data(DEAD, {"first": 2}, key=owner.admin))["deadLetters"]
    assert page["pageInfo"]["hasNextPage"] and len(page["edges"]) == 2
    rest = (await gql.data(DEAD, {"first": 2, "after": page["pageInfo"]["endCursor"]}, key=owner.admin))["deadLetters"]
    letters = [e["node"] for e in page["edges"] + rest["edges"]]
    assert sorted(n["entry"][1] for n in letters) == ["p0", "p1", "p2"] and not rest["pageInfo"]["hasNextPage"]
    assert all("WRONGTYPE" in n["error"] and n["failedAt"] >= n["receivedAt"] for n in letters)
    assert (await gql.data(PROFILE, {"u": "fine"}, key=owner.admin))["profile"]["interactionCount"] == 1
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{served.url}/metrics", headers=METRICS_AUTH)).text
    assert sample(text, "recograph_consumer_dead_lettered_total") >= 3

    # Another tenant neither sees nor replays them; a public key may not ask.
    assert (await gql.data(DEAD, {"first": 20}, key=other.admin))["deadLetters"]["totalCount"] == 0
    assert (await gql.data(REPLAY, {"ids": [letters[0]["id"]]}, key=other.admin))["replayDeadLetters"] == 0
    assert (await gql.data(REPLAY, {"ids": None}, key=other.admin))["replayDeadLetters"] == 0
    assert codes(await gql(DEAD, {"first": 20}, key=owner.public)) == ["FORBIDDEN"]
    assert codes(await gql(REPLAY, {"ids": None}, key=owner.public)) == ["FORBIDDEN"]
    assert codes(await gql(REPLAY, {"ids": ["nope"]}, key=owner.admin)) == ["BAD_USER_INPUT"]

    await redis.delete(request_key(owner.tenant_id, "broken"))  # the cause fixed
    assert (await gql.data(REPLAY, {"ids": [letters[0]["id"]]}, key=owner.admin))["replayDeadLetters"] == 1
    assert (await gql.data(REPLAY, {"ids": None}, key=owner.admin))["replayDeadLetters"] == 2

    async def replayed() -> bool:
        counts = [(await gql.data(PROFILE, {"u": f"p{n}"}, key=owner.admin))["profile"] for n in range(3)]
        return all(p is not None and p["interactionCount"] == 1 for p in counts)

    await eventually(replayed, 10.0)
    assert (await gql.data(DEAD, {"first": 20}, key=owner.admin))["deadLetters"]["totalCount"] == 0
