"""/metrics exports the event consumer: this process's counters and each tenant stream's backlog from Redis."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.conftest import METRICS_AUTH, new_tenant
from tests.e2e.test_training import shop
from tests.integration.test_consumer_metrics import sample

pytestmark = pytest.mark.slow


async def test_metrics_show_consumer_counters_and_the_tenants_backlog(served, gql):
    keys = await new_tenant(served, "consumer-metrics")
    await shop(gql, keys.admin, "m", users=3, items=5)  # 24 interactions
    assert await served.runtime.services.realtime.wait_drained(tenant_id=keys.tenant_id)
    await asyncio.sleep(1.1)  # the backlog is read at most once a second
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{served.url}/metrics", headers=METRICS_AUTH)).text
    assert sample(text, "recograph_consumers_running") >= 1  # the test app runs its consumer in process
    # Every entry is read (or claimed); some may have been applied by a catch-up after an earlier test's outage.
    assert sample(text, "recograph_consumer_read_total") + sample(text, "recograph_consumer_claimed_total") >= 24
    assert sample(text, "recograph_consumer_applied_total") is not None
    assert sample(text, "recograph_consumer_batches_total") >= 1
    assert sample(text, "recograph_consumer_errors_total") is not None
    assert sample(text, "recograph_consumer_alive") == 1 and sample(text, "recograph_consumer_backlog_up") == 1
    # Exported per tenant; the consumer trims entries once applied and persisted (item 5), so it may be 0 already.
    assert 0 <= sample(text, "recograph_consumer_stream_length", tenant=keys.tenant_id) <= 24
    assert sample(text, "recograph_consumer_lag", tenant=keys.tenant_id) == 0
    assert sample(text, "recograph_consumer_pending", tenant=keys.tenant_id) == 0
    assert sample(text, "recograph_consumer_streams") >= 1
