"""Item 5 (bounded memory), markers and served lists: after a realistic flow (pages served, events citing them,
the consumer applying and persisting) every per-user or per-request key of the tenant expires; the keys without a
TTL are the tenant's or a scenario's own, of the kinds domain.realtime.keys documents."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from domain.catalogue import ItemData
from domain.events import InteractionData
from domain.realtime.keys import request_key
from domain.realtime.processor import Processor
from domain.realtime.stream import StreamImpression
from tests.conftest import new_tenant

# Keys of the whole tenant or of one scenario, documented in domain.realtime.keys and models.cache.
TENANT_KINDS = {"items", "itemsv", "pdirty", "wm", "swept", "popnew", "events", "dead", "unflushed"}
USER_KINDS = {"seen", "uv", "pf", "rc", "uk", "answer", "served", "rq", "done"}


async def test_item5_every_per_user_and_per_request_key_expires(served):
    services = served.runtime.services
    tenant = (await new_tenant(served, "expiring")).tenant_id
    scenario = await services.scenarios.create(name="feed", template="CUSTOM", config=None, tenant_id=tenant)
    items = [ItemData(f"v{n}", categories=("pets",)) for n in range(8)]
    assert not (await services.catalogue.upsert(items, tenant_id=tenant, scenario_id=scenario.id)).errors
    events = []
    for user in ("ann", "bob", "cy"):
        page = await services.recommendations.recommend(
            tenant_id=tenant, scenario_id=scenario.id, user_id=user, first=3, after=None, context=None,
            exclude_seen=True, debug=False, max_first=50)
        events += [InteractionData(scenario_id=scenario.id, user_id=user, item_id=page.items[0].item_id, type="CLICK",
                                   timestamp=datetime.now(UTC) - timedelta(seconds=5), request_id=page.request_id)]
    assert (await services.events.record(events, tenant_id=tenant)).accepted == 3
    assert await services.realtime.wait_drained(tenant_id=tenant, timeout_s=10)
    await services.profiles.get_many(["ann"], tenant_id=tenant)
    redis = served.runtime.cache.client
    assert await redis.exists(request_key(tenant, page.request_id))  # the page was recorded for attribution

    keys = [k.decode() async for k in redis.scan_iter(match=f"t:{{{tenant}}}:*", count=500)]
    ttls = dict(zip(keys, [await redis.ttl(k) for k in keys], strict=True))
    kinds = {k.split(":", 3)[2] for k in keys}
    assert {"seen", "uv", "pf", "rc", "rq", "served", "done"} <= kinds, sorted(kinds)
    lasting = sorted(k for k, ttl in ttls.items() if ttl < 0)
    assert {k.split(":", 3)[2] for k in lasting} <= TENANT_KINDS, lasting
    assert not [k for k in lasting if k.split(":", 3)[2] in USER_KINDS]


async def test_item5_served_pages_are_kept_for_the_attribution_window(served):
    services, redis = served.runtime.services, served.runtime.cache.client
    assert served.settings.realtime.attribution_window_s == 86400  # RECOGRAPH_REALTIME_ATTRIBUTION_WINDOW_H=24
    processor = Processor(redis, services.catalogue, services.scenarios, attribution_s=120)
    tenant = (await new_tenant(served, "attributing")).tenant_id
    now = int(time.time() * 1000)
    page = StreamImpression("rq-window", "sc", "ann", None, now, (("v1", ("popular",)),))
    assert await processor.apply([page], tenant_id=tenant) == 1
    assert 60 < await redis.ttl(request_key(tenant, "rq-window")) <= 120
