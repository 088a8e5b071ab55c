"""A scenario's config history over HTTP: a version per config change (created, updated, shipped, rolled back) with
what changed and who changed it; roll back; concurrent updates each keep their version; admins only; tenant-scoped;
deleted with the scenario; migration 2 records the config of a scenario older than the history."""

from __future__ import annotations

import asyncio

import pytest

from domain.ids import utcnow
from domain.migrations import m0002_scenario_config_history
from domain.scenarios.history import changed_paths
from models.documents import Scenario, ScenarioConfigVersion
from tests.conftest import new_tenant

CREATE = """mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id configVersion } }"""
UPDATE = """mutation($id: ID!, $input: UpdateScenarioInput!) {
  updateScenario(id: $id, input: $input) { id configVersion config } }"""
ROLL_BACK = """mutation($id: ID!, $v: Int!) { rollBackScenarioConfig(id: $id, version: $v) { configVersion config } }"""
HISTORY = """query($id: ID!, $first: Int) { scenario(id: $id) { configVersion
  configVersions(first: $first) { version config createdAt origin originRef keyId changed } } }"""
DELETE = "mutation($id: ID!) { deleteScenario(id: $id) }"


@pytest.fixture(scope="module")
async def keys(served):
    return await new_tenant(served, "history")


async def create(gql, key: str, name: str) -> str:
    return (await gql.data(CREATE, {"input": {"name": name, "template": "NEWS"}}, key=key))["createScenario"]["id"]


async def history(gql, key: str, sid: str, first: int | None = None) -> list[dict]:
    return (await gql.data(HISTORY, {"id": sid, "first": first}, key=key))["scenario"]["configVersions"]


def test_changed_paths_name_each_difference():
    before = {"recall": [{"source": "popular", "weight": 1.0}, {"source": "fresh", "weight": 0.5}],
              "freshness": {"halfLifeHours": 24}, "retention": {"days": 30}}
    after = {"recall": [{"source": "popular", "weight": 1.0}, {"source": "fresh", "weight": 0.8}],
             "freshness": {"halfLifeHours": 24}, "limits": {"maxCandidates": 500}}
    assert changed_paths(before, after) == ["recall[1].weight", "retention", "limits"]
    assert changed_paths(before, before) == []
    # A list that grew is named whole: its entries have no stable identity to compare by.
    assert changed_paths({"recall": [1]}, {"recall": [1, 2]}) == ["recall"]
    assert changed_paths(1, 2) == ["."]


async def test_each_config_change_is_a_version_with_what_changed_and_who(gql, keys):
    sid = await create(gql, keys.admin, "versions")
    await gql.data(UPDATE, {"id": sid, "input": {"config": {"freshness": {"halfLifeHours": 9}}}}, key=keys.admin)
    renamed = await gql.data(UPDATE, {"id": sid, "input": {"name": "versions-renamed"}}, key=keys.admin)
    assert renamed["updateScenario"]["configVersion"] == 2  # a rename is not a config change
    same = await gql.data(UPDATE, {"id": sid, "input": {"config": {"freshness": {"halfLifeHours": 9}}}},
                          key=keys.admin)
    assert same["updateScenario"]["configVersion"] == 2  # nor is setting what is already set
    await gql.data(UPDATE, {"id": sid, "input": {"config": {"limits": {"maxCandidates": 500}}}}, key=keys.admin)

    versions = await history(gql, keys.admin, sid)
    assert [v["version"] for v in versions] == [3, 2, 1]
    assert [v["origin"] for v in versions] == ["UPDATED", "UPDATED", "CREATED"]
    assert versions[0]["changed"] == ["limits.maxCandidates"]
    assert versions[1]["changed"] == ["freshness.halfLifeHours"] and versions[2]["changed"] == []
    assert versions[1]["config"]["freshness"]["halfLifeHours"] == 9
    assert versions[2]["config"]["freshness"]["halfLifeHours"] != 9
    assert all(v["keyId"] and v["keyId"] == versions[0]["keyId"] for v in versions)
    assert versions[0]["createdAt"] >= versions[1]["createdAt"] >= versions[2]["createdAt"]
    assert [v["version"] for v in await history(gql, keys.admin, sid, first=1)] == [3]
    assert await history(gql, keys.admin, sid, first=0) == []
    for first in (-1, 101):
        body = await gql(HISTORY, {"id": sid, "first": first}, key=keys.admin)
        assert [e["extensions"] for e in body["errors"]] == [{"code": "BAD_USER_INPUT", "field": "first"}]


async def test_roll_back_serves_an_old_config_as_a_new_version(gql, keys):
    sid = await create(gql, keys.admin, "roll-back")
    first = (await history(gql, keys.admin, sid))[0]["config"]
    await gql.data(UPDATE, {"id": sid, "input": {"config": {"freshness": {"halfLifeHours": 3}}}}, key=keys.admin)
    rolled = (await gql.data(ROLL_BACK, {"id": sid, "v": 1}, key=keys.admin))["rollBackScenarioConfig"]
    assert rolled["configVersion"] == 3 and rolled["config"] == first
    newest = (await history(gql, keys.admin, sid))[0]
    assert (newest["version"], newest["origin"], newest["originRef"]) == (3, "ROLLED_BACK", "1")
    assert newest["changed"] == ["freshness.halfLifeHours"]
    again = (await gql.data(ROLL_BACK, {"id": sid, "v": 1}, key=keys.admin))["rollBackScenarioConfig"]
    assert again["configVersion"] == 3  # already the current config: nothing to do

    for version, word in ((0, "between 1 and 3"), (4, "between 1 and 3")):
        body = await gql(ROLL_BACK, {"id": sid, "v": version}, key=keys.admin)
        error = body["errors"][0]
        assert error["extensions"]["code"] == "BAD_USER_INPUT" and error["extensions"]["field"] == "version"
        assert word in error["message"]


async def test_concurrent_updates_each_keep_their_change_and_their_version(gql, keys):
    sid = await create(gql, keys.admin, "concurrent")
    changes = [{"freshness": {"halfLifeHours": 2}}, {"limits": {"maxCandidates": 700}},
               {"limits": {"recallTimeoutMs": 80}}, {"fallback": {"minItems": 3}}]
    await asyncio.gather(*(gql.data(UPDATE, {"id": sid, "input": {"config": c}}, key=keys.admin) for c in changes))
    versions = await history(gql, keys.admin, sid)
    assert [v["version"] for v in versions] == [5, 4, 3, 2, 1]
    assert sorted(p for v in versions for p in v["changed"]) == sorted(
        ["freshness.halfLifeHours", "limits.maxCandidates", "limits.recallTimeoutMs", "fallback.minItems"])
    final = versions[0]["config"]
    assert final["freshness"]["halfLifeHours"] == 2 and final["fallback"]["minItems"] == 3
    assert final["limits"]["maxCandidates"] == 700 and final["limits"]["recallTimeoutMs"] == 80


async def test_history_is_for_the_tenants_admins_and_goes_with_the_scenario(served, gql, keys):
    sid = await create(gql, keys.admin, "private")
    denied = await gql(HISTORY, {"id": sid}, key=keys.public)
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    other = await new_tenant(served, "history-other")
    assert (await gql.data(HISTORY, {"id": sid}, key=other.admin))["scenario"] is None
    refused = await gql(ROLL_BACK, {"id": sid, "v": 1}, key=other.admin)
    assert refused["errors"][0]["extensions"]["code"] == "NOT_FOUND"

    await gql.data(DELETE, {"id": sid}, key=keys.admin)
    left = await ScenarioConfigVersion.find({"tenant_id": keys.tenant_id, "scenario_id": sid}).to_list()
    assert left == []


async def test_migration_2_records_the_config_of_a_scenario_older_than_the_history(served, keys):
    now = utcnow()
    legacy = Scenario(id=f"sc_legacy_{now.timestamp():.0f}", tenant_id=keys.tenant_id, name=f"legacy-{now}",
                      template="CUSTOM", config={"recall": []}, config_version=4, created_at=now, updated_at=now)
    await legacy.insert()
    assert await m0002_scenario_config_history.apply(served.runtime.mongo[served.settings.mongo.database]) >= 1
    recorded = await ScenarioConfigVersion.find({"scenario_id": legacy.id}).to_list()
    assert [(v.version, v.origin, v.config, v.tenant_id) for v in recorded] == [
        (4, "RECORDED", {"recall": []}, keys.tenant_id)]
    assert await m0002_scenario_config_history.apply(served.runtime.mongo[served.settings.mongo.database]) == 0  # applied again: nothing to do
