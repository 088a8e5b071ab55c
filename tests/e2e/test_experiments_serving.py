"""Experiments as served, through the API: the variant's config really drives the list, pausing and stopping end
assignments at once (here, and in another process through the invalidation notice), THOMPSON moves its weights
toward the better arm while users keep their arm, INTERLEAVE credits the team that placed each clicked item, and
`deleteUserData` removes a user's outcomes."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from domain.catalogue import ItemData
from domain.experiments.routing import ExperimentRouter
from domain.hotcache import Invalidations
from domain.services import INVALIDATIONS
from models.channel import Channel
from tests.conftest import new_tenant

COMEDY = [f"c{i}" for i in range(40)]
DRAMA = [f"d{i}" for i in range(40)]


def only(category: str) -> dict:
    """Return a config that keeps only items of one category."""
    return {"filters": [{"name": "seen"}, {"name": "availability"},
                        {"name": "rules", "params": {"expressions": [f"'{category}' in categories"]}}]}


CREATE = "mutation($input: CreateExperimentInput!) { createExperiment(input: $input) { id } }"
START = "mutation($id: ID!) { startExperiment(id: $id) { status } }"
PAUSE = "mutation($id: ID!) { pauseExperiment(id: $id) { status } }"
STOP = "mutation($id: ID!) { stopExperiment(id: $id) { status } }"
ASSIGN = "query($x: ID!, $u: ID!) { experimentAssignment(experimentId: $x, userId: $u) }"
LIST = """query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 10) {
  requestId variant experiment { id } items { item { id } sources } } }"""
RECORD = "mutation($events: [InteractionInput!]!) { recordInteractions(events: $events) { accepted } }"
RESULTS = """query($id: ID!) { experiment(id: $id) { armWeights { variant weight } results {
  exposures { variant users } srm { pValue } metrics { metric variant value pValue method }
  arms { variant mean lower upper probabilityBest weight }
  preference { controlWins treatmentWins ties share pValue } } } }"""


@pytest.fixture
async def shop(served):
    """A fresh tenant and scenario with 40 comedies and 40 dramas."""
    keys = await new_tenant(served, "xserve")
    services = served.runtime.services
    scenario = await services.scenarios.create(name="films", template="CUSTOM", config=None, tenant_id=keys.tenant_id)
    now = datetime.now(UTC)
    items = [ItemData(i, categories=("comedy",), published_at=now) for i in COMEDY]
    items += [ItemData(i, categories=("drama",), published_at=now) for i in DRAMA]
    assert not (await services.catalogue.upsert(items, tenant_id=keys.tenant_id, scenario_id=scenario.id)).errors
    return keys, scenario.id


async def experiment(gql, keys, scenario_id: str, **design) -> str:
    variants = design.pop("variants", [{"name": "control", "config": only("comedy")},
                                       {"name": "drama", "config": only("drama")}])
    created = await gql.data(CREATE, {"input": {"scenarioId": scenario_id, "name": design.pop("name", "x"),
                                                "primaryMetric": "CTR", "variants": variants, **design}}, key=keys.admin)
    experiment_id = created["createExperiment"]["id"]
    assert (await gql.data(START, {"id": experiment_id}, key=keys.admin))["startExperiment"]["status"] == "RUNNING"
    return experiment_id


async def serve(gql, keys, scenario_id: str, user: str) -> dict:
    return (await gql.data(LIST, {"s": scenario_id, "u": user}, key=keys.admin))["recommendations"]


async def click(gql, keys, scenario_id: str, user: str, page: dict, items: list[str]) -> None:
    events = [{"scenarioId": scenario_id, "userId": user, "itemId": i, "type": "CLICK", "requestId": page["requestId"]}
              for i in items]
    if events:
        assert (await gql.data(RECORD, {"events": events}, key=keys.admin))["recordInteractions"]["accepted"] == len(events)


async def results(served, gql, keys, experiment_id: str) -> dict:
    assert await served.runtime.services.realtime.wait_drained(tenant_id=keys.tenant_id, timeout_s=10)
    await asyncio.sleep(1.1)  # live results are reused for a second
    return (await gql.data(RESULTS, {"id": experiment_id}, key=keys.admin))["experiment"]


async def test_the_variants_config_drives_the_list(gql, shop):
    keys, sid = shop
    experiment_id = await experiment(gql, keys, sid)
    seen = {"control": 0, "drama": 0}
    for u in range(30):
        page = await serve(gql, keys, sid, f"user-{u}")
        assert page["experiment"]["id"] == experiment_id
        assert page["variant"] == (await gql.data(ASSIGN, {"x": experiment_id, "u": f"user-{u}"},
                                                  key=keys.admin))["experimentAssignment"]
        ids = {r["item"]["id"] for r in page["items"]}
        assert ids and ids <= set(COMEDY if page["variant"] == "control" else DRAMA), page
        seen[page["variant"]] += 1
    assert min(seen.values()) >= 5


async def test_pausing_and_stopping_end_assignments_at_once_here_and_elsewhere(served, gql, shop):
    keys, sid = shop
    experiment_id = await experiment(gql, keys, sid)
    # Another serving process: its own router and invalidation listener on the same Redis.
    redis = served.runtime.cache.client
    elsewhere = Invalidations(Channel(redis, INVALIDATIONS))
    router = ExperimentRouter(None, invalidations=elsewhere, ttl_s=3600)
    listening = asyncio.create_task(elsewhere.listen())
    try:
        await asyncio.sleep(0.2)
        assert (await router.route(tenant_id=keys.tenant_id, scenario_id=sid, user_id="u1")) is not None
        before = (await gql.data(ASSIGN, {"x": experiment_id, "u": "u1"}, key=keys.admin))["experimentAssignment"]
        await gql.data(PAUSE, {"id": experiment_id}, key=keys.admin)
        assert (await serve(gql, keys, sid, "u1"))["variant"] is None  # paused: the scenario as is, at once
        assert (await gql.data(ASSIGN, {"x": experiment_id, "u": "u1"}, key=keys.admin))["experimentAssignment"] == before
        for _ in range(50):  # the other process hears of it (its own cache would keep it for an hour)
            if await router.route(tenant_id=keys.tenant_id, scenario_id=sid, user_id="u1") is None:
                break
            await asyncio.sleep(0.02)
        else:
            raise AssertionError("the other process still serves the paused experiment")
        await gql.data(START, {"id": experiment_id}, key=keys.admin)
        assert (await serve(gql, keys, sid, "u1"))["variant"] == before
        await gql.data(STOP, {"id": experiment_id}, key=keys.admin)
        page = await serve(gql, keys, sid, "u1")
        assert page["variant"] is None and page["experiment"] is None
    finally:
        listening.cancel()


async def test_thompson_moves_toward_the_better_arm_and_users_keep_theirs(served, gql, shop):
    keys, sid = shop
    experiment_id = await experiment(gql, keys, sid, allocation="THOMPSON", name="bandit")
    given: dict[str, str] = {}
    for u in range(60):
        user = f"bandit-{u}"
        page = await serve(gql, keys, sid, user)
        given[user] = page["variant"]
        if page["variant"] == "drama":  # dramas are clicked four times as often
            await click(gql, keys, sid, user, page, [r["item"]["id"] for r in page["items"][:4]])
        else:
            await click(gql, keys, sid, user, page, [page["items"][0]["item"]["id"]])
    assert set(given.values()) == {"control", "drama"}
    assert await served.runtime.services.realtime.wait_drained(tenant_id=keys.tenant_id, timeout_s=10)
    assert await served.runtime.services.experiment_results.refresh_running() >= 1  # the minute's job
    found = await results(served, gql, keys, experiment_id)
    weights = {w["variant"]: w["weight"] for w in found["armWeights"]}
    assert weights["drama"] > 0.8 and weights["control"] >= 0.05 and sum(weights.values()) == pytest.approx(1)
    arms = {a["variant"]: a for a in found["results"]["arms"]}
    assert arms["drama"]["probabilityBest"] > 0.9 and arms["drama"]["mean"] > arms["control"]["mean"]
    assert found["results"]["srm"] is None and all(m["pValue"] is None for m in found["results"]["metrics"])
    for user, variant in list(given.items())[:10]:  # a user keeps the arm first given, whatever the weights
        assert (await serve(gql, keys, sid, user))["variant"] == variant
    await gql.data(STOP, {"id": experiment_id}, key=keys.admin)


async def test_interleaving_credits_the_team_that_placed_the_item(served, gql, shop):
    keys, sid = shop
    experiment_id = await experiment(gql, keys, sid, allocation="INTERLEAVE", name="mixed")
    for u in range(40):
        user = f"mixed-{u}"
        page = await serve(gql, keys, sid, user)
        if page["variant"] is None:
            continue
        assert page["variant"] == "interleaved"
        ids = [r["item"]["id"] for r in page["items"]]
        assert any(i in COMEDY for i in ids) and any(i in DRAMA for i in ids)  # both teams placed items
        await click(gql, keys, sid, user, page, [i for i in ids if i in DRAMA][:2])  # users prefer dramas
    found = (await results(served, gql, keys, experiment_id))["results"]
    pref = found["preference"]
    assert pref["treatmentWins"] >= 30 and pref["controlWins"] == 0 and pref["pValue"] < 0.001
    assert found["exposures"] == [{"variant": "interleaved", "users": pref["controlWins"] + pref["treatmentWins"]
                                   + pref["ties"]}]
    await gql.data(STOP, {"id": experiment_id}, key=keys.admin)


async def test_erasing_a_user_removes_their_outcomes(served, gql, shop):
    keys, sid = shop
    experiment_id = await experiment(gql, keys, sid, name="erase")
    for u in range(6):
        page = await serve(gql, keys, sid, f"gone-{u}")
        await click(gql, keys, sid, f"gone-{u}", page, [page["items"][0]["item"]["id"]])
    before = (await results(served, gql, keys, experiment_id))["results"]
    total = sum(e["users"] for e in before["exposures"])
    assert total == 6
    await gql.data("mutation($u: ID!) { deleteUserData(userId: $u) }", {"u": "gone-0"}, key=keys.admin)
    after = (await results(served, gql, keys, experiment_id))["results"]
    assert sum(e["users"] for e in after["exposures"]) == 5
