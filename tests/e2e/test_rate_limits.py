"""Rate limits (issue 10 item 3) over HTTP and websockets: 429 with `Retry-After`, `RateLimit-*` headers and a
RATE_LIMITED error for a key over its limit, nothing for another tenant, overrides set by another process applied
within 5 s, and the cap on a key's open subscriptions."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
import redis.asyncio as aioredis
from gql import gql as document
from gql.transport.exceptions import TransportQueryError

from domain.ratelimit import Limit, RateLimits, RatePolicy
from domain.tenancy import Scope
from tests.conftest import Served, TenantKeys, new_tenant
from tests.e2e.test_subscriptions import METRICS, session

TYPENAME = {"query": "{ __typename }"}


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


async def ask(http: httpx.AsyncClient, served: Served, key: str) -> httpx.Response:
    return await http.post(f"{served.url}/graphql", json=TYPENAME, headers={"Authorization": f"Bearer {key}"})


async def fresh_tenant(served: Served, name: str) -> TenantKeys:
    return await new_tenant(served, f"{name}-{uuid.uuid4().hex[:8]}")


async def test_rate_limits_key_over_its_limit_gets_429_and_another_tenant_does_not(served, http):
    noisy, quiet = await fresh_tenant(served, "rl-noisy"), await fresh_tenant(served, "rl-quiet")
    await served.runtime.services.rate_limits.set_override(noisy.tenant_id, Scope.PUBLIC, Limit(0.5, 3))
    answers = [await ask(http, served, noisy.public) for _ in range(4)]
    assert [a.status_code for a in answers] == [200, 200, 200, 429]
    assert answers[0].headers["RateLimit-Limit"] == "3" and answers[0].headers["RateLimit-Remaining"] == "2"
    refused = answers[3]
    assert refused.headers["Retry-After"] == "2"  # one token at 0.5 a second
    assert (refused.headers["RateLimit-Remaining"], refused.headers["RateLimit-Limit"]) == ("0", "3")
    assert int(refused.headers["RateLimit-Reset"]) >= 2
    error = refused.json()["errors"][0]
    assert error["extensions"] == {"code": "RATE_LIMITED", "retryAfter": 2}
    assert "rate limit" in error["message"]
    again = await ask(http, served, noisy.public)  # refused by this process alone now, with the same wait
    assert again.status_code == 429 and again.headers["Retry-After"] == "2"
    for _ in range(20):
        assert (await ask(http, served, quiet.public)).status_code == 200
    assert (await ask(http, served, noisy.admin)).status_code == 200  # its admin keys have their own limits


async def test_rate_limits_defaults_answer_with_ratelimit_headers(served, http):
    tenant = await fresh_tenant(served, "rl-default")
    answer = await ask(http, served, tenant.public)
    assert answer.status_code == 200
    assert answer.headers["RateLimit-Limit"] == "2000" and int(answer.headers["RateLimit-Remaining"]) == 1999
    unknown = await ask(http, served, "rg_public_not-a-real-key")
    assert "RateLimit-Limit" not in unknown.headers  # refused for its key, not counted against anyone


async def test_rate_limits_override_from_another_process_applies_within_5s(served, http):
    tenant = await fresh_tenant(served, "rl-elsewhere")
    assert (await ask(http, served, tenant.public)).status_code == 200  # the serving process has read its limits
    client = aioredis.from_url(served.runtime.servers.redis_url)
    try:
        elsewhere = RateLimits.over(client, RatePolicy())  # what `recograph tenants limits` holds
        assert await elsewhere.set_override(tenant.tenant_id, Scope.PUBLIC, Limit(0.2, 1))
    finally:
        await client.aclose()
    began = time.monotonic()
    while (await ask(http, served, tenant.public)).status_code != 429:
        assert time.monotonic() - began < 5, "the override did not reach the serving process within 5 s"
        await asyncio.sleep(0.05)
    assert (await ask(http, served, tenant.public)).status_code == 429


async def test_rate_limits_subscriptions_per_key_are_capped(served, gql):
    tenant = await fresh_tenant(served, "rl-subs")
    created = await gql.data("""mutation { createScenario(input: {name: "live", template: VLOG}) { id } }""",
                             key=tenant.admin)
    variables = {"s": created["createScenario"]["id"]}
    cap = served.runtime.services.rate_limits.policy.max_subscriptions
    async with session(served, tenant.admin) as ws:
        streams = [ws.subscribe(document(METRICS), variable_values=variables) for _ in range(cap)]
        for stream in streams:
            assert (await asyncio.wait_for(anext(stream), 10))["metrics"]
        with pytest.raises(TransportQueryError) as refused:
            await asyncio.wait_for(anext(ws.subscribe(document(METRICS), variable_values=variables)), 10)
        assert refused.value.errors[0]["extensions"]["code"] == "RATE_LIMITED"
        async with session(served, tenant.gateway) as other:  # another key of the tenant has its own places
            assert await asyncio.wait_for(anext(other.subscribe(document(METRICS), variable_values=variables)), 10)
        await streams[0].aclose()
        began = time.monotonic()
        while True:  # the closed subscription's place comes back
            try:
                assert await asyncio.wait_for(anext(ws.subscribe(document(METRICS), variable_values=variables)), 10)
                break
            except TransportQueryError:
                assert time.monotonic() - began < 5
                await asyncio.sleep(0.1)
        for stream in streams[1:]:
            await stream.aclose()
