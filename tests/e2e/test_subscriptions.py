"""Subscriptions over graphql-transport-ws with third-party clients (Python `gql`, npm `graphql-ws`), live metrics
over HTTP and Prometheus. The event consumer is simulated by writing the contract's hashes and publishing the
scenario id, except in the one test that drives the real consumer through the API."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import json
import os
import shutil
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from gql import Client
from gql import gql as document
from gql.transport.exceptions import TransportError, TransportQueryError
from gql.transport.websockets import WebsocketsTransport
from websockets.exceptions import ConnectionClosed

from domain.realtime import contracts as c
from tests.conftest import METRICS_AUTH, GraphQL, Served, TenantKeys, new_tenant

NODE_PROJECT = Path(__file__).parent / "federation"
CONSUMER_LANDED = importlib.util.find_spec("domain.realtime.consumer") is not None

METRICS = """subscription($s: ID!, $w: MetricsWindow) { metrics(scenarioId: $s, window: $w) {
  scenarioId window windowStart windowEnd impressions clicks ctr interactions interactionRate avgWatchSeconds
  completionRate conversions conversionRate bySource { name impressions clicks ctr } byVariant { name impressions }
} }"""
JOB = """subscription($id: ID!) { jobProgress(id: $id) { id status progress stage error } }"""


@dataclass
class Tenant:
    keys: TenantKeys
    scenario_id: str


async def _tenant_with_scenario(served: Served, gql_http: GraphQL, name: str) -> Tenant:
    keys = await new_tenant(served, f"{name}-{uuid.uuid4().hex[:8]}")
    created = await gql_http.data(
        """mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }""",
        {"input": {"name": "live", "template": "VLOG"}}, key=keys.admin,
    )
    return Tenant(keys, created["createScenario"]["id"])


@pytest.fixture(scope="module")
async def owner(served: Served, gql: GraphQL) -> Tenant:
    return await _tenant_with_scenario(served, gql, "subs-owner")


@pytest.fixture(scope="module")
async def stranger(served: Served, gql: GraphQL) -> Tenant:
    return await _tenant_with_scenario(served, gql, "subs-stranger")


def ws_url(served: Served) -> str:
    return served.url.replace("http://", "ws://", 1) + "/graphql"


@contextlib.asynccontextmanager
async def session(served: Served, key: str | None = None, *, header: str | None = None) -> AsyncIterator[Any]:
    """Open a gql websocket session; the key goes in connection_init, `header` in the upgrade request."""
    transport = WebsocketsTransport(
        url=ws_url(served), init_payload={"Authorization": f"Bearer {key}"} if key else {},
        headers={"Authorization": f"Bearer {header}"} if header else None,
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL], ack_timeout=5, close_timeout=2,
    )
    async with Client(transport=transport, fetch_schema_from_transport=False) as client:
        yield client


async def publish_counts(served: Served, tenant: Tenant, fields: dict[str, float]) -> None:
    """Do what the consumer does after a batch: bump this minute's (and hour's) counters and announce them."""
    redis = served.runtime.cache.client
    now = int(time.time())
    for key in (c.minute_key(tenant.keys.tenant_id, tenant.scenario_id, now // 60),
                c.hour_key(tenant.keys.tenant_id, tenant.scenario_id, now // 3600)):
        for name, value in fields.items():
            await redis.hincrbyfloat(key, name, value)
    await redis.publish(c.metrics_channel(tenant.keys.tenant_id), tenant.scenario_id)


async def _next(stream: AsyncIterator[dict], timeout: float = 5.0) -> dict:
    return await asyncio.wait_for(anext(stream), timeout)


# --- metrics ---------------------------------------------------------------------------------------------------


async def test_metrics_pushes_a_snapshot_at_once_and_fresh_counts_after_the_consumer_publishes(served, owner):
    async with session(served, owner.keys.admin) as ws:
        stream = ws.subscribe(document(METRICS), variable_values={"s": owner.scenario_id, "w": "MINUTE"})
        first = (await _next(stream))["metrics"]
        assert first["scenarioId"] == owner.scenario_id and first["window"] == "MINUTE"
        await publish_counts(served, owner, {
            c.IMPRESSIONS: 20, c.CLICKS: 5, c.INTERACTIONS: 9, c.ATTRIBUTED: 4, c.WATCHES: 2, c.WATCH_SECONDS: 90,
            c.COMPLETIONS: 2, c.COMPLETION_SUM: 1.5, c.CONVERSIONS: 1,
            c.by_source(c.IMPRESSIONS, "item_cf"): 20, c.by_source(c.CLICKS, "item_cf"): 5,
            c.by_variant(c.IMPRESSIONS, "B"): 20,
        })
        second = (await _next(stream))["metrics"]
        await stream.aclose()
    assert second["impressions"] - first["impressions"] == 20
    assert second["clicks"] - first["clicks"] == 5
    assert second["ctr"] == pytest.approx(second["clicks"] / second["impressions"])
    assert (second["interactions"] - first["interactions"], second["conversions"] - first["conversions"]) == (9, 1)
    assert second["avgWatchSeconds"] == pytest.approx(45) and second["completionRate"] == pytest.approx(0.75)
    assert second["bySource"] == [{"name": "item_cf", "impressions": 20, "clicks": 5, "ctr": 0.25}]
    assert second["byVariant"] == [{"name": "B", "impressions": 20}]
    assert second["windowStart"] < second["windowEnd"]


async def test_a_burst_of_batches_gives_one_snapshot_a_second_at_most(served, owner):
    async with session(served, owner.keys.admin) as ws:
        stream = ws.subscribe(document(METRICS), variable_values={"s": owner.scenario_id})
        first = (await _next(stream))["metrics"]
        sent = time.monotonic()
        for _ in range(10):
            await publish_counts(served, owner, {c.CLICKS: 1})
        second = (await _next(stream))["metrics"]
        assert time.monotonic() - sent >= 0.9  # not sooner than a second after the first snapshot
        assert second["clicks"] == first["clicks"] + 10  # one read took in the whole burst
        with pytest.raises(asyncio.TimeoutError):  # and nothing more while idle
            await _next(stream, timeout=1.5)
        await stream.aclose()


async def test_the_feed_listener_is_removed_when_the_client_goes_away(served, owner):
    feed = served.runtime.services.live.feed
    base = feed.listeners()
    async with session(served, owner.keys.admin) as ws:
        stream = ws.subscribe(document(METRICS), variable_values={"s": owner.scenario_id})
        await _next(stream)
        assert feed.listeners() == base + 1
    deadline = time.monotonic() + 5
    while feed.listeners() != base:
        assert time.monotonic() < deadline, "the subscription kept its listener after the client left"
        await asyncio.sleep(0.05)


async def test_the_upgrade_requests_authorization_header_is_accepted_too(served, owner):
    async with session(served, header=owner.keys.gateway) as ws:
        stream = ws.subscribe(document(METRICS), variable_values={"s": owner.scenario_id})
        assert (await _next(stream))["metrics"]["scenarioId"] == owner.scenario_id
        await stream.aclose()


def _close_frame(error: BaseException) -> tuple[int, str] | None:
    """Return the server's close code and reason found in an exception's chain of causes."""
    while error is not None:
        if isinstance(error, ConnectionClosed) and error.rcvd is not None:
            return error.rcvd.code, error.rcvd.reason
        error = error.__cause__ or error.__context__
    return None


@pytest.mark.parametrize("key", [None, "rg_admin_not-a-real-key"])
async def test_a_connection_without_a_valid_key_is_closed_4403(served, owner, key):
    with pytest.raises(TransportError) as refused:
        async with session(served, key) as ws:
            await _next(ws.subscribe(document(METRICS), variable_values={"s": owner.scenario_id}))
    assert _close_frame(refused.value) == (4403, "Forbidden")


async def test_a_valid_payload_key_wins_over_a_bad_upgrade_header_and_a_bad_one_loses(served, owner):
    async with session(served, owner.keys.admin, header="rg_admin_not-a-real-key") as ws:
        assert (await _next(ws.subscribe(document(METRICS), variable_values={"s": owner.scenario_id})))["metrics"]
    with pytest.raises(TransportError) as refused:
        async with session(served, "rg_admin_not-a-real-key", header=owner.keys.admin) as ws:
            await _next(ws.subscribe(document(METRICS), variable_values={"s": owner.scenario_id}))
    assert _close_frame(refused.value) == (4403, "Forbidden")


async def test_another_tenants_scenario_is_not_found(served, owner, stranger):
    async with session(served, stranger.keys.admin) as ws:
        with pytest.raises(TransportQueryError) as failed:
            await _next(ws.subscribe(document(METRICS), variable_values={"s": owner.scenario_id}))
    assert failed.value.errors[0]["extensions"]["code"] == "NOT_FOUND"


async def test_a_public_key_may_not_watch_metrics(served, owner):
    async with session(served, owner.keys.public) as ws:
        with pytest.raises(TransportQueryError) as failed:
            await _next(ws.subscribe(document(METRICS), variable_values={"s": owner.scenario_id}))
    assert failed.value.errors[0]["extensions"]["code"] == "FORBIDDEN"


async def test_the_metrics_query_reads_the_same_snapshot_over_http(served, gql: GraphQL, owner, stranger):
    await publish_counts(served, owner, {c.IMPRESSIONS: 4, c.CLICKS: 1})
    query = """query($s: ID!) { metrics(scenarioId: $s, window: DAY) { window impressions clicks } }"""
    data = await gql.data(query, {"s": owner.scenario_id}, key=owner.keys.admin)
    assert data["metrics"]["window"] == "DAY" and data["metrics"]["impressions"] >= 4
    body = await gql(query, {"s": owner.scenario_id}, key=stranger.keys.admin)
    assert body["errors"][0]["extensions"]["code"] == "NOT_FOUND"


@pytest.mark.slow
async def test_prometheus_exports_live_gauges_of_scenarios_with_traffic(served, gql: GraphQL, owner):
    await publish_counts(served, owner, {c.IMPRESSIONS: 3})
    labels = f'scenario="{owner.scenario_id}",tenant="{owner.keys.tenant_id}",window="hour"'
    series = f"recograph_live_impressions{{{labels}}}"
    deadline = time.monotonic() + 15
    while True:
        text = (await gql.client.get(f"{served.url}/metrics", headers=METRICS_AUTH)).text
        if series in text:
            break
        assert time.monotonic() < deadline, "no live gauge for the scenario"
        await asyncio.sleep(0.5)
    [value] = [float(line.split()[-1]) for line in text.splitlines() if line.startswith(series)]
    assert value >= 3


# --- jobProgress -----------------------------------------------------------------------------------------------


async def test_job_progress_pushes_each_change_and_completes_when_the_job_ends(served, owner):
    jobs = served.runtime.services.jobs
    tenant_id = owner.keys.tenant_id
    # A target of its own: one job per kind and target may be active at a time.
    job = await jobs.create("cleanup", tenant_id=tenant_id, scenario_id=f"watch-{uuid.uuid4().hex[:8]}")
    seen: list[tuple[str, float]] = []
    async with session(served, owner.keys.admin) as ws:
        stream = ws.subscribe(document(JOB), variable_values={"id": job.id})
        first = (await _next(stream))["jobProgress"]
        seen.append((first["status"], first["progress"]))
        await jobs.mark_running(job.id, tenant_id=tenant_id, attempt=1)
        running = (await _next(stream))["jobProgress"]
        seen.append((running["status"], running["progress"]))
        await jobs.succeed(job.id, tenant_id=tenant_id, result={"ok": True})
        async for result in stream:  # ends when the server completes the operation
            seen.append((result["jobProgress"]["status"], result["jobProgress"]["progress"]))
    assert seen == [("QUEUED", 0.0), ("RUNNING", 0.0), ("SUCCEEDED", 1.0)]


async def test_another_tenants_job_is_not_found(served, owner, stranger):
    job = await served.runtime.services.jobs.create(
        "cleanup", tenant_id=owner.keys.tenant_id, scenario_id=f"watch-{uuid.uuid4().hex[:8]}"
    )
    async with session(served, stranger.keys.admin) as ws:
        with pytest.raises(TransportQueryError) as failed:
            await _next(ws.subscribe(document(JOB), variable_values={"id": job.id}))
    assert failed.value.errors[0]["extensions"]["code"] == "NOT_FOUND"


# --- npm graphql-ws ----------------------------------------------------------------------------------------------

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (NODE_PROJECT / "node_modules" / "graphql-ws").is_dir(),
    reason="needs node and graphql-ws, ws in tests/e2e/federation/node_modules: `npm ci --prefix tests/e2e/federation`",
)


@contextlib.asynccontextmanager
async def node_client(served: Served, query: str, variables: dict, *, key: str | None, count: int = 1):
    """Run the graphql-ws client script; yield a function returning its next printed event."""
    env = {**os.environ, "URL": ws_url(served), "QUERY": query, "VARIABLES": json.dumps(variables), "COUNT": str(count)}
    env.pop("KEY", None)
    if key:
        env["KEY"] = key
    proc = await asyncio.create_subprocess_exec(
        shutil.which("node") or "node", "ws-client.mjs", cwd=NODE_PROJECT, env=env,
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )

    async def event(timeout: float = 15.0) -> dict:
        line = await asyncio.wait_for(proc.stdout.readline(), timeout)
        assert line, f"the node client exited early (code {proc.returncode})"
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            rest = (await proc.stdout.read()).decode(errors="replace")
            pytest.fail(f"the node client printed: {line.decode(errors='replace')}{rest}")

    try:
        yield event
    finally:
        if proc.returncode is None:
            proc.terminate()
        await proc.wait()


@needs_node
@pytest.mark.slow
async def test_graphql_ws_client_receives_metrics_and_fresh_counts(served, owner):
    async with node_client(served, METRICS, {"s": owner.scenario_id}, key=owner.keys.admin, count=2) as event:
        assert (await event())["event"] == "connected"
        first = await event()
        assert first["event"] == "next", first
        before = first["result"]["data"]["metrics"]["conversions"]
        await publish_counts(served, owner, {c.CONVERSIONS: 2, c.IMPRESSIONS: 2})
        second = await event()
        assert second["event"] == "next", second
        assert second["result"]["data"]["metrics"]["conversions"] == before + 2


@needs_node
@pytest.mark.slow
@pytest.mark.parametrize("key", [None, "rg_admin_not-a-real-key"])
async def test_graphql_ws_client_without_a_valid_key_sees_4403_forbidden(served, owner, key):
    async with node_client(served, METRICS, {"s": owner.scenario_id}, key=key) as event:
        closed = await event()
    assert closed == {"event": "error", "code": 4403, "reason": "Forbidden"}


@needs_node
@pytest.mark.slow
async def test_graphql_ws_client_gets_not_found_for_another_tenants_scenario(served, owner, stranger):
    async with node_client(served, METRICS, {"s": owner.scenario_id}, key=stranger.keys.admin) as event:
        assert (await event())["event"] == "connected"
        refused = await event()
    errors = refused.get("errors") or refused.get("result", {}).get("errors")
    assert errors and errors[0]["extensions"]["code"] == "NOT_FOUND", refused


# --- through the real consumer -----------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(not CONSUMER_LANDED, reason="needs the event consumer (domain/realtime/consumer.py)")
async def test_served_pages_and_recorded_clicks_reach_the_subscription(served, gql: GraphQL, owner):
    await gql.data(
        """mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }""",
        {"s": owner.scenario_id, "items": [{"id": f"live-{i}", "title": f"Live {i}"} for i in range(5)]},
        key=owner.keys.admin,
    )
    async with session(served, owner.keys.admin) as ws:
        stream = ws.subscribe(document(METRICS), variable_values={"s": owner.scenario_id, "w": "MINUTE"})
        start = (await _next(stream))["metrics"]
        page = await gql.data(
            """query($s: ID!) { recommendations(scenarioId: $s, userId: "live-u", first: 3) {
                 requestId items { item { id } } } }""",
            {"s": owner.scenario_id}, key=owner.keys.public,
        )
        shown = page["recommendations"]
        assert shown["items"], "the scenario recommended nothing"
        clicked = shown["items"][0]["item"]["id"]
        await gql.data(
            """mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted } }""",
            {"e": [{"scenarioId": owner.scenario_id, "userId": "live-u", "itemId": clicked, "type": "CLICK",
                    "requestId": shown["requestId"], "eventId": f"live-{uuid.uuid4().hex}"}]},
            key=owner.keys.public,
        )
        latest = start
        deadline = time.monotonic() + 15
        wanted = {"clicks": start["clicks"] + 1, "impressions": start["impressions"] + len(shown["items"])}
        while any(latest[name] < count for name, count in wanted.items()):
            try:
                latest = (await _next(stream, timeout=max(deadline - time.monotonic(), 0.01)))["metrics"]
            except asyncio.TimeoutError:
                pytest.fail(f"wanted at least {wanted} within 15 s; the last snapshot had {latest}")
        await stream.aclose()
    assert latest["ctr"] > 0
