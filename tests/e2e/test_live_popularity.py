"""Live popularity through the API: interactions recorded now lift an item in a cold user's `popular` list within
seconds (the consumer runs in the test app), without retraining."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import pytest

from tests.conftest import new_tenant
from tests.e2e.test_recommendations import RECS, UPDATE_SCENARIO
from tests.e2e.test_training import RECORD, shop, train

pytestmark = pytest.mark.slow
POPULAR_ONLY = {"recall": [{"source": "popular", "weight": 1.0, "limit": 100}], "rerank": [],
                "fallback": {"sources": ["popular"], "minItems": 1}}


async def popular_list(gql, key: str, sid: str, user: str) -> list[str]:
    answer = (await gql.data(RECS, {"s": sid, "u": user, "first": 60}, key=key))["recommendations"]
    return [r["item"]["id"] for r in answer["items"]]


async def test_recorded_interactions_lift_an_item_in_a_cold_users_popular_list(served, gql):
    keys = await new_tenant(served, "livepop")
    sid = await shop(gql, keys.admin, "live")
    assert (await train(gql, keys.admin, sid))["status"] == "SUCCEEDED"
    await gql.data(UPDATE_SCENARIO, {"id": sid, "input": {"config": POPULAR_ONLY}}, key=keys.admin)
    before = await popular_list(gql, keys.public, sid, "cold-0")
    target = before[-1]  # the least popular item of the trained counts
    assert len(before) > 10

    now = datetime.now(UTC).isoformat()
    events = [{"scenarioId": sid, "userId": f"fan{n}", "itemId": target, "type": "SHARE", "timestamp": now}
              for n in range(12)]
    assert (await gql.data(RECORD, {"events": events}, key=keys.admin))["recordInteractions"]["accepted"] == 12

    deadline, n, after = time.monotonic() + 5.0, 0, before
    while time.monotonic() < deadline:
        n += 1  # a new cold user each time: an answer is cached per user for a minute
        after = await popular_list(gql, keys.public, sid, f"cold-{n}")
        if after.index(target) < 3:
            break
        await asyncio.sleep(0.2)
    assert after.index(target) < 3, (before.index(target), after.index(target))
    assert set(after) == set(before)  # the same catalogue, reordered
