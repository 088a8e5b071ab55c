"""Experiments end to end through the API, on the demo's movies: simulated users ask for recommendations (which
assigns and exposes them), click each item shown with their variant's probability, and the results read back.

- 10% vs 12% click probability: the lift is found, its interval covers the true difference of 0.02;
- an A/A run (10% and 10%) finds nothing;
- dropping a third of one variant's exposures raises the sample-ratio mismatch flag;
- `experimentAssignment` answers what serving gave, and reads only (nobody is exposed by it).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest
from statsmodels.stats.gof import chisquare

from domain import erasure
from domain.datasets.movielens import read_movielens
from models.documents import Tenant
from tests.conftest import new_tenant

pytestmark = pytest.mark.slow

DEMO = Path(__file__).resolve().parents[2] / "demo" / "ml-latest-small"
ITEMS = 2000
PAGE = 20
BATCH = 25  # users per GraphQL request (aliases)

CREATE = """mutation($input: CreateExperimentInput!) { createExperiment(input: $input) { id status } }"""
START = "mutation($id: ID!) { startExperiment(id: $id) { id status } }"
STOP = "mutation($id: ID!) { stopExperiment(id: $id) { id status } }"
RESULTS = """query($id: ID!) { experiment(id: $id) { results {
  exposures { variant users } srm { pValue mismatch }
  metrics { metric variant role users value controlValue difference differenceLower differenceUpper pValue
            significant method }
} } }"""
RECORD = "mutation($events: [InteractionInput!]!) { recordInteractions(events: $events) { accepted } }"


@pytest.fixture(scope="module")
async def demo(served):
    """A tenant with a CUSTOM scenario over the first ITEMS movies of the demo data."""
    keys = await new_tenant(served, "experiments-e2e")
    # A fixed hash key, so the layer's salt and with it the users' split is the same every run: with the clicks'
    # fixed seed, each run draws the same data (a new random key per run made the interval miss its truth in a
    # few percent of the runs, as any 95% interval does).
    await Tenant.get_pymongo_collection().update_one({"_id": keys.tenant_id}, {"$set": {"hash_key": "ab" * 32}})
    erasure._KEYS.pop(keys.tenant_id, None)
    services = served.runtime.services
    scenario = await services.scenarios.create(name="movies", template="CUSTOM", config=None,
                                               tenant_id=keys.tenant_id)
    items = read_movielens(DEMO).items[:ITEMS]
    assert not (await services.catalogue.upsert(items, tenant_id=keys.tenant_id, scenario_id=scenario.id)).errors
    return keys, scenario.id


def recommend_query(users: list[str]) -> str:
    fields = " ".join(
        f'u{i}: recommendations(scenarioId: $s, userId: "{user}", first: {PAGE}) '
        "{ requestId variant experiment { id } items { item { id } } }"
        for i, user in enumerate(users)
    )
    return f"query($s: ID!) {{ {fields} }}"


async def assignments(gql, key: str, experiment_id: str, users: list[str]) -> dict[str, str]:
    """Return each user's variant as `experimentAssignment` answers it (one request for the batch)."""
    fields = " ".join(f'a{i}: experimentAssignment(experimentId: $x, userId: "{u}")' for i, u in enumerate(users))
    data = await gql.data(f"query($x: ID!) {{ {fields} }}", {"x": experiment_id}, key=key)
    return {user: data[f"a{i}"] for i, user in enumerate(users)}


async def simulate(gql, key: str, scenario_id: str, users: list[str], click: dict[str, float], *,
                   rng: np.random.Generator, skip: dict[str, float] | None = None, experiment_id: str) -> dict:
    """Serve each user one page and click each item with the variant's probability; return users per variant."""
    served: dict[str, int] = {}
    variants: dict[str, str] = {}
    for start in range(0, len(users), BATCH):
        batch = users[start:start + BATCH]
        if skip:  # users of a variant who never load the page: their exposures are lost
            variants = await assignments(gql, key, experiment_id, batch)
            batch = [user for user in batch if rng.random() >= skip.get(variants[user], 0.0)]
            if not batch:
                continue
        data = await gql.data(recommend_query(batch), {"s": scenario_id}, key=key)
        events = []
        for i, user in enumerate(batch):
            page = data[f"u{i}"]
            assert page["experiment"]["id"] == experiment_id
            assert variants.get(user, page["variant"]) == page["variant"]  # what experimentAssignment said
            served[page["variant"]] = served.get(page["variant"], 0) + 1
            for item in page["items"]:
                if rng.random() < click[page["variant"]]:
                    events.append({"scenarioId": scenario_id, "userId": user, "itemId": item["item"]["id"],
                                   "type": "CLICK", "requestId": page["requestId"]})
        if events:
            assert (await gql.data(RECORD, {"events": events}, key=key))["recordInteractions"]["accepted"] == len(events)
    return served


async def run(served, gql, demo, name: str, click: dict[str, float], users: int, *, seed: int,
              skip: dict[str, float] | None = None) -> tuple[dict, dict]:
    keys, scenario_id = demo
    created = await gql.data(CREATE, {"input": {
        "scenarioId": scenario_id, "name": name, "primaryMetric": "CTR",
        "variants": [{"name": "control", "weight": 1}, {"name": "treatment", "weight": 1}],
    }}, key=keys.admin)
    experiment_id = created["createExperiment"]["id"]
    assert (await gql.data(START, {"id": experiment_id}, key=keys.admin))["startExperiment"]["status"] == "RUNNING"
    ids = [f"{name}-{u}" for u in range(users)]
    counts = await simulate(gql, keys.admin, scenario_id, ids, click, rng=np.random.default_rng(seed), skip=skip,
                            experiment_id=experiment_id)
    assert await served.runtime.services.realtime.wait_drained(tenant_id=keys.tenant_id, timeout_s=30)
    results = await settled(gql, keys.admin, experiment_id, sum(counts.values()))
    assert (await gql.data(STOP, {"id": experiment_id}, key=keys.admin))["stopExperiment"]["status"] == "STOPPED"
    return counts, results


async def settled(gql, key: str, experiment_id: str, exposed: int) -> dict:
    """Return the results once every exposure served is counted."""
    for _ in range(100):
        results = (await gql.data(RESULTS, {"id": experiment_id}, key=key))["experiment"]["results"]
        if sum(e["users"] for e in results["exposures"]) == exposed:
            return results
        await asyncio.sleep(0.1)
    raise AssertionError(f"exposures never reached {exposed}: {results['exposures']}")


def ctr_row(results: dict) -> dict:
    (row,) = [m for m in results["metrics"] if m["metric"] == "CTR" and m["variant"] == "treatment"]
    return row


async def test_a_lift_of_two_points_is_found_and_covered(served, gql, demo):
    counts, results = await run(served, gql, demo, "lift", {"control": 0.10, "treatment": 0.12}, 1600, seed=11)
    assert {e["variant"]: e["users"] for e in results["exposures"]} == counts
    assert not results["srm"]["mismatch"]
    row = ctr_row(results)
    assert row["method"].startswith("sequential")  # the default: always valid however often it is read
    assert row["significant"] and row["pValue"] < 0.05
    assert row["differenceLower"] < 0.02 < row["differenceUpper"]
    assert row["controlValue"] == pytest.approx(0.10, abs=0.01) and row["value"] == pytest.approx(0.12, abs=0.01)


async def test_an_aa_run_finds_nothing(served, gql, demo):
    _, results = await run(served, gql, demo, "aa", {"control": 0.10, "treatment": 0.10}, 1000, seed=12)
    row = ctr_row(results)
    assert not row["significant"] and row["differenceLower"] < 0 < row["differenceUpper"]
    assert not results["srm"]["mismatch"]


async def test_lost_exposures_of_one_variant_raise_srm(served, gql, demo):
    # A third of one variant's exposures lost: of 1,200 users the expected chi-square is near 30 (p ~ 1e-7), far
    # past the 0.001 threshold.
    counts, results = await run(served, gql, demo, "srm", {"control": 0.10, "treatment": 0.10}, 1200, seed=13,
                                skip={"treatment": 0.33})
    assert counts["treatment"] < 0.8 * counts["control"]
    observed = [counts["control"], counts["treatment"]]
    expected = chisquare(observed, [sum(observed) / 2] * 2)[1]
    assert results["srm"]["pValue"] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    assert results["srm"]["mismatch"] and results["srm"]["pValue"] < 0.001
