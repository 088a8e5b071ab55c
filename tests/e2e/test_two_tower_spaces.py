"""Two-tower item vectors in the embedded vector store, end to end: trainScenario writes one space per version,
an item upserted after training gets its vector there from the item tower (the in-process worker's item-vector
job) and is recalled by two_tower through the store, as the in-memory scan recalls it, without retraining; a
removed item leaves the space, and a deleted scenario takes its spaces with it. (Which spaces a later training keeps
is tested on fakes: tests/unit/test_tower_spaces.py.)"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest

from domain.recommend.base import RecRequest
from domain.recommend.serving import ModelRegistry
from models.documents import ModelVersion
from models.vectors import SpaceNotFoundError
from tests.conftest import new_tenant
from tests.e2e.test_training import train

pytestmark = pytest.mark.slow

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
DELETE_ITEMS = "mutation($s: ID!, $ids: [ID!]!) { deleteItems(scenarioId: $s, ids: $ids) }"
DELETE_SCENARIO = "mutation($id: ID!) { deleteScenario(id: $id) }"
RECORD = "mutation($events: [InteractionInput!]!) { recordInteractions(events: $events) { accepted } }"
CLUSTERS, PER_CLUSTER, USERS = "abc", 12, 45
FAST = {"maxEpochs": 8, "patience": 3, "timeBudgetSeconds": 20.0, "dim": 16, "targetsPerUser": 8,
        "batchSize": 128, "idDropout": 0.3, "minItemUsers": 1}
CONFIG = {"recall": [{"source": "two_tower", "weight": 1.0, "limit": 60, "params": FAST}],
          "fallback": {"sources": ["popular"], "minItems": 1}, "models": {"tune": False}}
FRESH = {"id": "fresh-a", "title": "Just in", "categories": ["a"], "tags": ["ta", "ua"], "attributes": {"size": 3}}


class Counted:
    """The served vector store, counting the searches per space (the recall must go through it)."""

    def __init__(self, store) -> None:
        self.store, self.searches = store, []

    async def search(self, space, vector, **kwargs):
        self.searches.append(space)
        return await self.store.search(space, vector, **kwargs)


async def until(check: Callable[[], Awaitable[bool]], timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "the item-vector job did not get there in time"
        await asyncio.sleep(0.1)


async def clustered_scenario(gql, key: str) -> str:
    """Create a scenario serving two_tower whose users each view one cluster of items; return its id."""
    sid = (await gql.data(CREATE, {"input": {"name": "towers", "template": "CUSTOM", "config": CONFIG}},
                          key=key))["createScenario"]["id"]
    items = [{"id": f"{c}{n}", "title": f"item {c}{n}", "categories": [c], "tags": [f"t{c}", f"u{c}"],
              "attributes": {"size": "abc".index(c) * 10 + n % 3}} for c in CLUSTERS for n in range(PER_CLUSTER)]
    await gql.data(UPSERT, {"s": sid, "items": items}, key=key)
    start = datetime.now(UTC) - timedelta(days=2)
    events = [{"scenarioId": sid, "userId": f"u{u}", "itemId": f"{CLUSTERS[u % 3]}{(u * 5 + k) % PER_CLUSTER}",
               "type": "VIEW", "timestamp": (start + timedelta(minutes=u * 11 + k)).isoformat()}
              for u in range(USERS) for k in range(8)]
    await gql.data(RECORD, {"events": events}, key=key)
    return sid


async def version(tenant_id: str, sid: str, number: int) -> ModelVersion:
    return await ModelVersion.find_one({"tenant_id": tenant_id, "scenario_id": sid, "version": number})


async def test_an_item_upserted_after_training_is_recalled_through_its_versions_space(served, gql):
    owner = await new_tenant(served, "towers")
    vectors, tenant = served.runtime.vectors, owner.tenant_id
    sid = await clustered_scenario(gql, owner.admin)
    assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"
    first = (await version(tenant, sid, 1)).spaces["two_tower"]
    assert first == f"two_tower_{sid}_v1"
    assert await vectors.count(first, tenant_id=tenant) == len(CLUSTERS) * PER_CLUSTER

    await gql.data(UPSERT, {"s": sid, "items": [FRESH]}, key=owner.admin)  # no retraining from here on

    async def stored() -> bool:
        return "fresh-a" in await vectors.get_vectors(first, ["fresh-a"], tenant_id=tenant)

    await until(stored)
    counted = Counted(vectors)
    through_store = ModelRegistry(vectors=counted, models_dir=served.runtime.models_dir, ann_min_items=0)  # type: ignore[arg-type]
    in_memory = ModelRegistry(vectors=None, models_dir=served.runtime.models_dir)
    history = ("a1", "a2", "a3", "a4")
    request = RecRequest(user_id="fan", limit=10, history=history, exclude=frozenset(history))
    found = []
    for registry in (through_store, in_memory):
        engine = await registry.get(tenant, sid)
        candidates = (await engine.recall_filtered(request))["two_tower"]
        found.append([engine.catalogue.item_ids[i] for i in candidates.idx])
    assert counted.searches == [first]  # one search, in the champion's space
    ranked = found[0]
    assert "fresh-a" in ranked[: min(r for r, i in enumerate(ranked) if i[0] in "bc")]  # among its cluster's items
    assert found[0][:10] == found[1][:10]  # the store ranks as the scan

    await gql.data(DELETE_ITEMS, {"s": sid, "ids": ["fresh-a"]}, key=owner.admin)

    async def removed() -> bool:
        return not await vectors.get_vectors(first, ["fresh-a"], tenant_id=tenant)

    await until(removed)
    assert (await gql.data(DELETE_SCENARIO, {"id": sid}, key=owner.admin))["deleteScenario"] is True
    with pytest.raises(SpaceNotFoundError):  # the scenario's spaces went with it
        await vectors.count(first, tenant_id=tenant)
