"""The profile rebuild on the real servers: no query names more than USERS_PER_QUERY users (a `$in` over every user
breaks MongoDB's 16 MB limit), and the rebuilt profiles are the same."""

from __future__ import annotations

import pytest

from domain import userbatches
from domain.realtime import service as realtime_service
from domain.realtime.hotstate import read_hot
from tests.integration.test_stream import drained, event, shop  # noqa: F401 (fixture)


async def test_profile_rebuild_in_over_every_user_is_batched(served, shop, monkeypatch):  # noqa: F811
    services, tenant, sid = shop
    redis = served.runtime.cache.client
    users = [f"b{n}" for n in range(5)]
    await services.events.record([event(sid, u, "v1", "LIKE", event_id=f"bt-{u}") for u in users], tenant_id=tenant)
    await drained(services, tenant)
    before = await read_hot(redis, users, tenant_id=tenant)
    monkeypatch.setattr(userbatches, "USERS_PER_QUERY", 2)
    queries: list[dict] = []
    replay = realtime_service.stored_events

    def spy(query):  # noqa: ANN001, ANN202
        queries.append(query)
        return replay(query)

    monkeypatch.setattr(realtime_service, "stored_events", spy)
    for user in users:
        await redis.delete(f"t:{{{tenant}}}:pf:{user}")  # damage: the profiles are gone
    assert await services.realtime.rebuild(tenant_id=tenant, scenario_id=sid) == len(users)
    named = [len(q["user_id"]["$in"]) for q in queries]
    assert named == [2, 2, 1] and all("$or" not in q for q in queries)
    after = await read_hot(redis, users, tenant_id=tenant)
    assert {u: (h.applied, h.counts_by_type) for u, h in after.items()} == \
        {u: (h.applied, h.counts_by_type) for u, h in before.items()}
