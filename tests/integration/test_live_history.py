"""A request's live history on the real stores: events recorded through ingest and applied by the consumer come
back from Redis with the seen set, in one round trip, in time order with their types and values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain.catalogue import ItemData
from domain.events import InteractionData
from domain.realtime.keys import profile_key
from domain.recommend.history import request_history
from tests.conftest import new_tenant


async def test_live_events_come_back_in_time_order_with_their_types_and_values(served):
    services = served.runtime.services
    tenant = (await new_tenant(served, "live-history")).tenant_id
    other = (await new_tenant(served, "live-history-other")).tenant_id
    for t in (tenant, other):
        scenario = await services.scenarios.create(name="feed", template="CUSTOM", config=None, tenant_id=t)
        assert not (await services.catalogue.upsert([ItemData(f"v{n}") for n in range(1, 5)], tenant_id=t,
                                                    scenario_id=scenario.id)).errors
        if t == tenant:
            sid = scenario.id
    now = datetime.now(UTC)
    events = [InteractionData(sid, "ann", "v3", "WATCH", 120.0, now - timedelta(minutes=3)),  # ids out of time order
              InteractionData(sid, "ann", "v1", "RATING", 4.0, now - timedelta(minutes=2)),
              InteractionData(sid, "ann", "v2", "LIKE", None, now - timedelta(minutes=1))]
    assert (await services.events.record(events, tenant_id=tenant)).accepted == 3
    assert await services.realtime.wait_drained(tenant_id=tenant, timeout_s=10)

    cache = served.runtime.cache
    state = await cache.user_state(sid, "ann", None, tenant_id=tenant)
    assert state.seen == {"v1", "v2", "v3"} and len(state.recent) == 3 and not state.pending
    history, live = request_history(None, "ann", sid, state)
    assert history == ["v3", "v1", "v2"]
    assert live == [("WATCH", 120.0), ("RATING", 4.0), ("LIKE", None)]

    # An event accepted that the consumer has not applied yet: serving learns it in the same read.
    await cache.client.hincrby(profile_key(tenant, "ann"), "acc", 1)
    assert (await cache.user_state(sid, "ann", None, tenant_id=tenant)).pending
    await cache.client.hincrby(profile_key(tenant, "ann"), "acc", -1)

    # Another tenant's user of the same id reads nothing of it.
    elsewhere = await cache.user_state(sid, "ann", None, tenant_id=other)
    assert elsewhere.seen == set() and elsewhere.recent == () and not elsewhere.pending
