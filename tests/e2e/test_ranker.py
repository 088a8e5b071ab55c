"""A scenario with the learned ranker (`ranker: dcn`) over GraphQL: its training reads the served lists, trains and
gates the ranker in the child process, records the choice on the version, and the scenario keeps serving."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from domain.learning.model import ScenarioModel
from models.documents import Impression, ModelVersion
from tests.conftest import new_tenant
from tests.e2e.test_training import RECORD, UPSERT, train

pytestmark = pytest.mark.slow

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id config } }"
RECOMMEND = """query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 5) {
  requestId items { item { id } score } } }"""
USERS, ITEMS = 70, 40


async def stored(tenant_id: str, request_id: str, timeout_s: float = 20.0) -> None:
    """Wait for the consumer's periodic flush to store the served page."""
    deadline = time.monotonic() + timeout_s
    while await Impression.find_one({"tenant_id": tenant_id, "request_id": request_id}) is None:
        assert time.monotonic() < deadline, f"page {request_id} not stored within {timeout_s} s"
        await asyncio.sleep(0.2)


async def test_a_dcn_scenario_trains_gates_and_serves(served, gql):
    owner = await new_tenant(served, "ranker")
    config = {"recall": [{"source": "item_cf", "weight": 1.0, "limit": 40}, {"source": "popular", "limit": 40}],
              "ranker": {"name": "dcn", "params": {"timeBudgetSeconds": 5.0}}}
    created = (await gql.data(CREATE, {"input": {"name": "feed", "template": "CUSTOM", "config": config}},
                              key=owner.admin))["createScenario"]
    sid = created["id"]
    assert created["config"]["ranker"]["name"] == "dcn" and "method" not in created["config"]["ranker"]["params"]
    catalogue = [{"id": f"v{i}", "title": f"Clip {i}", "categories": [f"c{i % 4}"]} for i in range(ITEMS)]
    assert (await gql.data(UPSERT, {"s": sid, "items": catalogue}, key=owner.admin))["upsertItems"]["upserted"]
    start = datetime.now(UTC) - timedelta(days=2)
    events = [{"scenarioId": sid, "userId": f"u{u}", "itemId": f"v{(u % 4) + 4 * ((u + k) % 10)}", "type": "VIEW",
               "timestamp": (start + timedelta(minutes=u * 10 + k)).isoformat()}
              for u in range(USERS) for k in range(6)]
    assert (await gql.data(RECORD, {"events": events}, key=owner.admin))["recordInteractions"]["errors"] == []
    page = (await gql.data(RECOMMEND, {"s": sid, "u": "u1"}, key=owner.admin))["recommendations"]
    click = {"scenarioId": sid, "userId": "u1", "itemId": page["items"][0]["item"]["id"], "type": "CLICK",
             "requestId": page["requestId"], "timestamp": datetime.now(UTC).isoformat()}
    assert (await gql.data(RECORD, {"events": [click]}, key=owner.admin))["recordInteractions"]["errors"] == []
    await stored(owner.tenant_id, page["requestId"])

    job = await train(gql, owner.admin, sid)
    assert job["status"] == "SUCCEEDED", job
    version = await ModelVersion.find_one({"tenant_id": owner.tenant_id, "scenario_id": sid, "version": 1})
    ranker = version.config["fitted"]["ranker"]
    assert ranker["chosen"] in ("dcn", "fusion") and ranker["gate"]["users"] > 0
    assert version.metrics["ndcg@10"] == ranker["gate"][ranker["chosen"]]["ndcg@10"]
    assert version.metrics["ranker_epochs"] >= 1
    info = ScenarioModel.load(served.runtime.models_dir / version.artifact).info["ranker"]
    assert info["lists"]["served"] == 1  # the served page with its click
    after = (await gql.data(RECOMMEND, {"s": sid, "u": "u2"}, key=owner.admin))["recommendations"]
    assert len(after["items"]) == 5 and all(item["score"] > 0 for item in after["items"])
