"""Hive Gateway (npm `@graphql-hive/gateway`) over recograph and the tiny users subgraph, as docs/federation.md
sets it up: the supergraph composed by tests/e2e/federation/supergraph.mjs and served by the gateway's own CLI.

With hive-gateway.config.mjs the caller's key and X-User-Id pass through: queries join both subgraphs, and the
`metrics` subscription travels over graphql-ws from a Python `gql` client through the gateway to recograph, counting
an event recorded after the client subscribed. With hive-gateway.held-key.config.mjs the gateway holds the gateway
key and acts only for the user of a verified session JWT, whatever the client sends.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from gql import Client
from gql import gql as document
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from tests.conftest import GraphQL, Served, TenantKeys, free_port, new_tenant
from tests.e2e.node import NodeProcess, needs_node, node_processes, require_packages, run_node

pytestmark = [pytest.mark.slow, needs_node]

# The CLI logs this once it serves the supergraph (NO_COLOR keeps escape codes out of the line).
LISTENING = re.compile(r"Listening on (http://[^\s\x1b]+)")

JOINED = """query($id: ID!, $s: ID!) { user(id: $id) {
  id name recommendations(scenarioId: $s, first: 3) { requestId items { item { id } } } } }"""
# An hour's window: nothing counted at the start drops out of it while the test waits for its own page.
METRICS = """subscription($s: ID!) { metrics(scenarioId: $s, window: HOUR) { scenarioId impressions clicks ctr } }"""
RECORD = """mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted duplicates } }"""
ITEMS = [f"hg-{i}" for i in range(5)]
SESSION_SECRET = "product-session-secret-for-tests"


@dataclass
class Hive:
    http: GraphQL
    ws_url: str


@dataclass
class Shop:
    tenant: TenantKeys
    scenario_id: str


@pytest.fixture(scope="module")
async def shop(served: Served, gql: GraphQL) -> Shop:
    """A fresh tenant with a VLOG scenario of five items, written directly to recograph."""
    tenant = await new_tenant(served, f"hive-{uuid.uuid4().hex[:8]}")
    created = await gql.data(
        """mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }""",
        {"input": {"name": "hive-feed", "template": "VLOG"}}, key=tenant.admin,
    )
    scenario_id = created["createScenario"]["id"]
    await gql.data(
        """mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }""",
        {"s": scenario_id, "items": [{"id": item, "title": f"Hive {item}", "categories": ["demo"]} for item in ITEMS]},
        key=tenant.admin,
    )
    return Shop(tenant, scenario_id)


@pytest.fixture(scope="module")
async def supergraph(served: Served, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """Start the users subgraph and compose it with the served recograph; yield the supergraph file's path."""
    require_packages("@graphql-hive/gateway", "@apollo/composition", "@apollo/server", "@apollo/subgraph")
    path = tmp_path_factory.mktemp("hive") / "supergraph.graphql"
    async with node_processes(NodeProcess(["users-subgraph.mjs"], {"PORT": str(free_port())})) as [users_url]:
        await run_node("supergraph.mjs", env={"RECOGRAPH_URL": f"{served.url}/graphql", "USERS_URL": f"{users_url}/",
                                              "OUT": str(path)})
        yield str(path)


@contextlib.asynccontextmanager
async def hive_gateway(supergraph: str, config: str, env: dict[str, str] | None = None) -> AsyncIterator[Hive]:
    """Serve the supergraph with Hive Gateway's CLI and a config file from tests/e2e/federation."""
    gateway = NodeProcess(
        ["node_modules/.bin/hive-gateway", "supergraph", supergraph, "--config-path", config,
         "--host", "127.0.0.1", "--port", str(free_port())],
        {"NO_COLOR": "1", **(env or {})}, ready=LISTENING,
    )
    async with node_processes(gateway) as [url], httpx.AsyncClient(timeout=30) as client:
        yield Hive(GraphQL(client, url), url.replace("http://", "ws://", 1) + "/graphql")


@pytest.fixture(scope="module")
async def hive(supergraph: str) -> AsyncIterator[Hive]:
    """Hive Gateway passing each caller's recograph key and X-User-Id through to recograph."""
    async with hive_gateway(supergraph, "hive-gateway.config.mjs") as gateway:
        yield gateway


@pytest.fixture(scope="module")
async def held(supergraph: str, shop: Shop) -> AsyncIterator[Hive]:
    """Hive Gateway holding the tenant's gateway key itself, acting for the user of a verified session JWT."""
    env = {"RECOGRAPH_GATEWAY_KEY": shop.tenant.gateway, "SESSION_SECRET": SESSION_SECRET}
    async with hive_gateway(supergraph, "hive-gateway.held-key.config.mjs", env) as gateway:
        yield gateway


def session_jwt(user_id: str | None, secret: str = SESSION_SECRET) -> str:
    """Return an HS256 JWT for `user_id` (None: naming no user), valid for an hour: a signed-in browser's session."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"exp": int(time.time()) + 3600} | ({"sub": user_id} if user_id else {})).encode())
    signature = hmac.new(secret.encode(), f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


@contextlib.asynccontextmanager
async def ws_session(url: str, key: str) -> AsyncIterator[Any]:
    """Open a graphql-transport-ws session on the gateway; the key goes in connection_init, as to recograph."""
    transport = WebsocketsTransport(
        url=url, init_payload={"Authorization": f"Bearer {key}"},
        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL], ack_timeout=10, close_timeout=2,
    )
    async with Client(transport=transport, fetch_schema_from_transport=False) as client:
        yield client


async def test_a_query_joins_the_users_name_with_recograph_recommendations(hive: Hive, shop: Shop):
    data = await hive.http.data(JOINED, {"id": "u1", "s": shop.scenario_id}, key=shop.tenant.gateway, x_user_id="u1")
    user = data["user"]
    assert (user["id"], user["name"]) == ("u1", "Ada Lovelace")
    shown = [entry["item"]["id"] for entry in user["recommendations"]["items"]]
    assert shown and set(shown) <= set(ITEMS), shown


async def test_the_acting_user_reaches_recograph_and_binds_the_gateway_key(hive: Hive, shop: Shop):
    variables = {"id": "u2", "s": shop.scenario_id}
    # Acting for u1, the gateway key may not read u2's recommendations: X-User-Id went through to recograph.
    refused = await hive.http(JOINED, variables, key=shop.tenant.gateway, x_user_id="u1")
    [error] = refused["errors"]
    assert error["extensions"] == {"code": "FORBIDDEN", "serviceName": "recograph"}, error
    assert error["path"] == ["user", "recommendations"]
    assert refused["data"] == {"user": None}  # `recommendations` is non-null, so the user is nulled
    # Without the header the same key reads any user's (a trusted backend's call).
    allowed = await hive.http.data(JOINED, variables, key=shop.tenant.gateway)
    assert allowed["user"]["name"] == "Alan Turing" and allowed["user"]["recommendations"]["items"]


async def test_without_a_key_recograph_refuses_and_the_users_subgraph_still_answers(hive: Hive, shop: Shop):
    body = await hive.http(JOINED, {"id": "u1", "s": shop.scenario_id})
    [error] = body["errors"]
    assert error["extensions"] == {"code": "UNAUTHENTICATED", "serviceName": "recograph"}, error
    assert await hive.http.data("""{ user(id: "u1") { name } }""") == {"user": {"name": "Ada Lovelace"}}


async def test_metrics_through_the_gateway_count_a_click_recorded_after_subscribing(hive: Hive, shop: Shop):
    async with ws_session(hive.ws_url, shop.tenant.gateway) as ws:
        stream = ws.subscribe(document(METRICS), variable_values={"s": shop.scenario_id})
        start = (await asyncio.wait_for(anext(stream), 15))["metrics"]
        assert start["scenarioId"] == shop.scenario_id
        # A page served through the gateway for u1, then a click on its first item, recorded through the gateway
        # with the tenant's public key (what a frontend holds).
        variables = {"id": "u1", "s": shop.scenario_id}
        # The earlier tests served u1 this same list: asked again it would be the cached answer under its old
        # requestId, whose impressions were counted then. A view bumps u1's version, so the page is a new one.
        viewed = {"scenarioId": shop.scenario_id, "userId": "u1", "itemId": ITEMS[-1], "type": "VIEW",
                  "eventId": f"hive-{uuid.uuid4().hex}"}
        await hive.http.data(RECORD, {"e": [viewed]}, key=shop.tenant.public)
        page = (await hive.http.data(JOINED, variables, key=shop.tenant.gateway, x_user_id="u1"))["user"]
        shown = page["recommendations"]
        event = {"scenarioId": shop.scenario_id, "userId": "u1", "itemId": shown["items"][0]["item"]["id"],
                 "type": "CLICK", "requestId": shown["requestId"], "eventId": f"hive-{uuid.uuid4().hex}"}
        recorded = await hive.http.data(RECORD, {"e": [event]}, key=shop.tenant.public)
        assert recorded["recordInteractions"] == {"accepted": 1, "duplicates": 0}
        wanted = {"clicks": start["clicks"] + 1, "impressions": start["impressions"] + len(shown["items"])}
        latest, deadline = start, time.monotonic() + 15
        while any(latest[name] < count for name, count in wanted.items()):
            try:
                latest = (await asyncio.wait_for(anext(stream), max(deadline - time.monotonic(), 0.01)))["metrics"]
            except asyncio.TimeoutError:
                pytest.fail(f"wanted at least {wanted} within 15 s; the last snapshot through the gateway: {latest}")
        await stream.aclose()
    assert latest["ctr"] > 0


async def test_another_tenants_key_gets_not_found_through_the_gateway(served: Served, hive: Hive, shop: Shop):
    stranger = await new_tenant(served, f"hive-stranger-{uuid.uuid4().hex[:8]}")
    with pytest.raises(TransportQueryError) as refused:
        async with ws_session(hive.ws_url, stranger.gateway) as ws:
            stream = ws.subscribe(document(METRICS), variable_values={"s": shop.scenario_id})
            await asyncio.wait_for(anext(stream), 15)
    [error] = refused.value.errors
    assert error["extensions"]["code"] == "NOT_FOUND", error


# --- a gateway that holds the key ---------------------------------------------------------------------------------


async def test_a_held_key_gateway_acts_for_the_user_its_session_names(held: Hive, shop: Shop):
    data = await held.http.data(JOINED, {"id": "u1", "s": shop.scenario_id}, key=session_jwt("u1"))
    assert data["user"]["name"] == "Ada Lovelace" and data["user"]["recommendations"]["items"]


async def test_a_held_key_gateway_ignores_a_client_x_user_id(held: Hive, shop: Shop):
    # u1's session asks for u2's recommendations and claims to be u2: recograph still sees u1 as the acting user.
    body = await held.http(JOINED, {"id": "u2", "s": shop.scenario_id}, key=session_jwt("u1"), x_user_id="u2")
    [error] = body["errors"]
    assert error["extensions"] == {"code": "FORBIDDEN", "serviceName": "recograph"}, error


async def test_a_held_key_gateway_sends_nothing_to_recograph_for_a_session_naming_no_user(held: Hive, shop: Shop):
    # Without X-User-Id the gateway's key would read any user's data, so such a session gets an error instead.
    body = await held.http(JOINED, {"id": "u2", "s": shop.scenario_id}, key=session_jwt(None))
    assert body["data"] == {"user": None}, body
    [error] = body["errors"]
    assert (error["message"], error["extensions"]) == ("the session names no user", {"code": "UNAUTHENTICATED"})


@pytest.mark.parametrize(("credential", "status"), [("public", 400), ("forged", 401), (None, 401)])
async def test_a_held_key_gateway_refuses_callers_without_a_valid_session(held: Hive, shop: Shop, credential, status):
    # A recograph key is not a session (400: not a JWT); a token signed with another secret, or none, is refused
    # (401). The gateway answers itself: nothing reaches recograph with its key.
    key = {"public": shop.tenant.public, "forged": session_jwt("u1", "not-the-secret"), None: None}[credential]
    response = await held.http.client.post(
        f"{held.http.url}/graphql", json={"query": JOINED, "variables": {"id": "u1", "s": shop.scenario_id}},
        headers={"Authorization": f"Bearer {key}"} if key else {},
    )
    assert response.status_code == status, response.text
    assert "data" not in response.json()
