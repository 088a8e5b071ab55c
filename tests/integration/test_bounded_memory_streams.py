"""Item 5 (bounded memory), streams: a tenant stream is trimmed once its entries are acknowledged and their served
pages written to MongoDB; entries pending, not delivered, or whose pages another consumer still buffers survive."""

from __future__ import annotations

import time

import pytest

from domain.catalogue import ItemData
from domain.realtime.keys import FIELD, GROUP, STREAMS, stream_key
from domain.realtime.stream import StreamEvent, StreamImpression
from domain.realtime.trim import floors_key
from models.documents import Impression
from tests.conftest import new_tenant


@pytest.fixture
async def stream(served):
    """A fresh tenant's stream with the group created, kept away from the app's own consumer."""
    services = served.runtime.services
    keys = await new_tenant(served, "trimmed")
    tenant = keys.tenant_id
    scenario = await services.scenarios.create(name="feed", template="CUSTOM", config=None, tenant_id=tenant)
    assert not (await services.catalogue.upsert([ItemData("v1"), ItemData("v2")], tenant_id=tenant,
                                                 scenario_id=scenario.id)).errors
    redis = served.runtime.cache.client
    await redis.srem(STREAMS, tenant)
    await redis.xgroup_create(stream_key(tenant), GROUP, id="0", mkstream=True)
    return services, redis, tenant, scenario.id


async def append(redis, tenant: str, sid: str, n: int, tag: str) -> None:
    """Append n events and n served pages."""
    now = int(time.time() * 1000)
    for i in range(n):
        event = StreamEvent(f"{tag}e{i}", sid, f"u{i % 3}", "v1", "VIEW", None, now, now)
        page = StreamImpression(f"{tag}r{i}", sid, f"u{i % 3}", None, now, (("v1", ("popular",)), ("v2", ())))
        await redis.xadd(stream_key(tenant), {FIELD: event.encode()})
        await redis.xadd(stream_key(tenant), {FIELD: page.encode()})


def consumer(services, tenant: str, name: str):
    found = services.realtime.consumer(name=name)
    found._streams[stream_key(tenant)] = tenant
    return found


async def stored_pages(tenant: str) -> int:
    return await Impression.get_pymongo_collection().count_documents({"tenant_id": tenant})


async def test_item5_a_drained_stream_shrinks_to_nothing_once_persisted(stream):
    services, redis, tenant, sid = stream
    await append(redis, tenant, sid, 20, "a")
    reader = consumer(services, tenant, "drainer")
    assert await reader.step() == 40
    assert await redis.xlen(stream_key(tenant)) == 40  # acknowledged, but its pages are only buffered so far
    assert await reader.flush_and_trim() >= 40  # with other tenants' streams the reader joined
    assert await redis.xlen(stream_key(tenant)) == 0
    assert await stored_pages(tenant) == 20  # written before the entries went
    assert not await redis.hexists(floors_key(tenant), "drainer")


async def test_item5_pending_and_undelivered_entries_survive_a_trim(stream):
    services, redis, tenant, sid = stream
    await append(redis, tenant, sid, 5, "b")  # 10 entries
    reader = consumer(services, tenant, "reader")
    assert await reader.step() == 10
    await append(redis, tenant, sid, 5, "c")
    stuck = await redis.xreadgroup(GROUP, "stuck", {stream_key(tenant): ">"}, count=4)  # delivered, never acked
    first_pending = stuck[0][1][0][0]
    assert await reader.step() == 6
    await append(redis, tenant, sid, 2, "d")  # not delivered to anyone
    assert await reader.flush_and_trim() >= 10
    left = await redis.xrange(stream_key(tenant))
    assert len(left) == 14 and left[0][0] == first_pending
    assert (await redis.xpending(stream_key(tenant), GROUP))["pending"] == 4


async def test_item5_pages_another_consumer_still_buffers_keep_their_entries(stream):
    services, redis, tenant, sid = stream
    await append(redis, tenant, sid, 5, "e")
    slow = consumer(services, tenant, "slow")
    assert await slow.step() == 10  # acknowledged; its pages wait in its buffer
    other = consumer(services, tenant, "other")
    await other.flush_and_trim()
    assert await redis.xlen(stream_key(tenant)) == 10
    await slow.flush()
    assert await other.flush_and_trim() >= 10
    assert await redis.xlen(stream_key(tenant)) == 0 and await stored_pages(tenant) == 5
