"""Federation end to end: recograph composed with a tiny users subgraph behind Apollo Gateway (Node).

The Node fixtures live in tests/e2e/federation; `make test` installs their packages (`npm ci`). Hive Gateway over the
same two subgraphs, with a subscription, is in test_hive_gateway.py.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import GraphQL, Served, TenantKeys, free_port, new_tenant
from tests.e2e.node import NodeProcess, needs_node, node_processes, require_packages

pytestmark = [pytest.mark.slow, needs_node]

USER_QUERY = """query($id: ID!) { user(id: $id) { id name profile { userId interactionCount } } }"""


@pytest.fixture(scope="module")
async def gateway(served: Served) -> AsyncIterator[GraphQL]:
    """A client for an Apollo Gateway composing the users subgraph with the served recograph, on loopback ports.

    Apollo's standalone server answers on any path, so the conftest helper's `/graphql` suffix is fine.
    """
    require_packages("@apollo/composition", "@apollo/gateway", "@apollo/server", "@apollo/subgraph")
    composer = await new_tenant(served, f"federation-sdl-{uuid.uuid4().hex[:8]}")
    users_port = free_port()
    gateway_env = {
        "PORT": str(free_port()),
        "RECOGRAPH_URL": f"{served.url}/graphql",
        "RECOGRAPH_KEY": composer.gateway,  # only for fetching recograph's `_service { sdl }`
        "USERS_URL": f"http://127.0.0.1:{users_port}/",  # the gateway retries until the users subgraph listens
    }
    scripts = [NodeProcess(["users-subgraph.mjs"], {"PORT": str(users_port)}), NodeProcess(["gateway.mjs"], gateway_env)]
    async with node_processes(*scripts) as (_, gateway_url), httpx.AsyncClient(timeout=30) as client:
        yield GraphQL(client, gateway_url)


@dataclass
class Seeded:
    tenant: TenantKeys
    scenario_id: str
    recorded: int


@pytest.fixture(scope="module")
async def seeded(served: Served, gql: GraphQL) -> Seeded:
    """A fresh tenant with a scenario, two items and three interactions by user u1, written through recograph."""
    tenant = await new_tenant(served, f"federation-{uuid.uuid4().hex[:8]}")
    created = await gql.data(
        """mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }""",
        {"input": {"name": "fed-feed", "template": "VLOG"}}, key=tenant.admin,
    )
    scenario_id = created["createScenario"]["id"]
    upserted = await gql.data(
        """mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted errors { index message } } }""",
        {"s": scenario_id, "items": [
            {"id": "fed-1", "title": "Federated One", "categories": ["travel"], "tags": ["alps"]},
            {"id": "fed-2", "title": "Federated Two", "categories": ["food"], "tags": ["pasta"]},
        ]},
        key=tenant.admin,
    )
    assert upserted["upsertItems"] == {"upserted": 2, "errors": []}
    events = [
        {"scenarioId": scenario_id, "userId": "u1", "itemId": "fed-1", "type": "VIEW", "eventId": "fed-e1"},
        {"scenarioId": scenario_id, "userId": "u1", "itemId": "fed-1", "type": "CLICK", "eventId": "fed-e2"},
        {"scenarioId": scenario_id, "userId": "u1", "itemId": "fed-2", "type": "VIEW", "eventId": "fed-e3"},
    ]
    recorded = await gql.data(
        """mutation($events: [InteractionInput!]!) { recordInteractions(events: $events) { accepted duplicates errors { index field message } } }""",
        {"events": events}, key=tenant.admin,
    )
    assert recorded["recordInteractions"] == {"accepted": 3, "duplicates": 0, "errors": []}
    return Seeded(tenant=tenant, scenario_id=scenario_id, recorded=len(events))


async def test_gateway_joins_users_name_with_recograph_profile(gateway: GraphQL, seeded: Seeded):
    data = await gateway.data(USER_QUERY, {"id": "u1"}, key=seeded.tenant.gateway)
    assert data == {"user": {"id": "u1", "name": "Ada Lovelace",
                             "profile": {"userId": "u1", "interactionCount": seeded.recorded}}}


async def test_another_tenant_sees_no_profile_through_the_gateway(served: Served, gateway: GraphQL, seeded: Seeded):
    other = await new_tenant(served, f"federation-other-{uuid.uuid4().hex[:8]}")
    data = await gateway.data(USER_QUERY, {"id": "u1"}, key=other.gateway)
    assert data == {"user": {"id": "u1", "name": "Ada Lovelace", "profile": None}}


async def test_gateway_without_a_key_gets_unauthenticated_for_the_profile(gateway: GraphQL, seeded: Seeded):
    body = await gateway(USER_QUERY, {"id": "u1"})
    # The users subgraph answers; recograph's refusal of the entity fetch comes back as the profile's error.
    assert body["data"]["user"]["name"] == "Ada Lovelace"
    assert body["data"]["user"]["profile"] is None
    # Apollo Gateway passes the subgraph's error on, its path rebased onto the client's query.
    [error] = body["errors"]
    assert error["path"] == ["user", "profile"]
    assert error["extensions"]["code"] == "UNAUTHENTICATED"
    assert error["extensions"]["serviceName"] == "recograph"


async def test_item_entity_resolves_directly_against_recograph(gql: GraphQL, seeded: Seeded):
    data = await gql.data(
        """query($r: [_Any!]!) { _entities(representations: $r) { __typename ... on Item { id title categories } } }""",
        {"r": [{"__typename": "Item", "id": "fed-1"}, {"__typename": "Item", "id": "missing"}]},
        key=seeded.tenant.gateway,
    )
    assert data["_entities"] == [{"__typename": "Item", "id": "fed-1", "title": "Federated One", "categories": ["travel"]}, None]
