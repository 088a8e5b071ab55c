"""The model registry through GraphQL: `Scenario.models` lists a scenario's versions newest first with their status
and aliases; `promoteModel` and `rollbackModel` change which version serves, here and in another serving process;
a version short of the scenario's promotion margin waits as the challenger; a version whose artifact is broken
never replaces the champion; an experiment variant pinned to an older version serves from it; tenancy and
scopes."""

from __future__ import annotations

import asyncio
import shutil

import pytest

from domain.learning import service as learning_service
from domain.learning import versions
from domain.recommend.serving import ModelRegistry, SwapChannel
from models.documents import ModelVersion
from tests.conftest import new_tenant
from tests.e2e.test_training import error, shop, train

pytestmark = pytest.mark.slow

MODELS = """query($s: ID!) { scenario(id: $s) { models { id kind version status aliases metrics trainedAt
  trainingSeconds device sizeBytes config scenario { id } } } }"""
PROMOTE = "mutation($id: ID!) { promoteModel(id: $id) { id version status aliases } }"
ROLLBACK = "mutation($s: ID!) { rollbackModel(scenarioId: $s) { id version status aliases } }"
UPDATE = "mutation($id: ID!, $input: UpdateScenarioInput!) { updateScenario(id: $id, input: $input) { id } }"
DEBUG = """query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 5, debug: true) {
  variant items { item { id } } debug } }"""
CREATE_EXPERIMENT = """mutation($input: CreateExperimentInput!) { createExperiment(input: $input) {
  id variants { name model { version alias } } } }"""
START = "mutation($id: ID!) { startExperiment(id: $id) { status } }"
STOP = "mutation($id: ID!) { stopExperiment(id: $id) { status } }"


@pytest.fixture(scope="module")
async def owner(served):
    return await new_tenant(served, "registry")


@pytest.fixture(scope="module")
async def twice(gql, owner):
    """A scenario trained twice: version 2 is champion, version 1 retired with its artifact."""
    sid = await shop(gql, owner.admin, "registry", users=30, items=40)
    for _ in range(2):
        assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"
    return sid


async def models(gql, key: str, sid: str) -> list[dict]:
    return (await gql.data(MODELS, {"s": sid}, key=key))["scenario"]["models"]


async def by_version(gql, key: str, sid: str) -> dict[int, dict]:
    return {m["version"]: m for m in await models(gql, key, sid)}


async def served_version(gql, key: str, sid: str, user: str = "u1") -> int | None:
    """Return the model version that answered a (debug, so uncached) request."""
    return (await gql.data(DEBUG, {"s": sid, "u": user}, key=key))["recommendations"]["debug"]["modelVersion"]


async def test_scenario_models_lists_the_versions_newest_first(gql, owner, twice):
    listed = await models(gql, owner.admin, twice)
    assert [(m["version"], m["status"], m["aliases"]) for m in listed] == [(2, "READY", ["champion"]),
                                                                           (1, "RETIRED", [])]
    newest = listed[0]
    assert newest["kind"] == "scenario" and newest["scenario"] == {"id": twice} and newest["device"] == "cpu"
    assert newest["metrics"]["interactions"] == 240 and newest["sizeBytes"] == newest["metrics"]["model_bytes"] > 0
    assert 0 < newest["trainingSeconds"] == newest["metrics"]["train_s"] and newest["trainedAt"]
    assert newest["config"]["configVersion"] == 1 and newest["config"]["recall"][0]["source"]
    gateway = await models(gql, owner.gateway, twice)
    assert [m["id"] for m in gateway] == [m["id"] for m in listed]
    first = (await gql.data("query($s: ID!) { scenario(id: $s) { models(first: 1) { version } } }",
                            {"s": twice}, key=owner.admin))["scenario"]["models"]
    assert first == [{"version": 2}]
    refused = error(await gql("query($s: ID!) { scenario(id: $s) { models(first: 51) { id } } }", {"s": twice},
                              key=owner.admin))
    assert refused["extensions"] == {"code": "BAD_USER_INPUT", "field": "first"}  # at most 50 versions a request


async def test_rollback_and_promotion_change_the_version_that_serves(served, gql, owner, twice):
    runtime = served.runtime
    other = ModelRegistry(vectors=None, models_dir=runtime.models_dir, channel=SwapChannel(runtime.cache.client),
                          refresh_s=3600)  # another serving process, told by the swap notice only
    await other.get(owner.tenant_id, twice)
    assert other.version(owner.tenant_id, twice) == 2 and await served_version(gql, owner.admin, twice) == 2
    other.start()
    try:
        await asyncio.sleep(0.3)  # subscribed
        rolled = (await gql.data(ROLLBACK, {"s": twice}, key=owner.admin))["rollbackModel"]
        assert (rolled["version"], rolled["status"], rolled["aliases"]) == (1, "READY", ["champion"])
        assert runtime.registry.version(owner.tenant_id, twice) == 1  # swapped before the mutation answered
        assert await served_version(gql, owner.admin, twice) == 1
        listed = await by_version(gql, owner.admin, twice)
        assert (listed[2]["status"], listed[2]["aliases"]) == ("RETIRED", [])
        refused = error(await gql(ROLLBACK, {"s": twice}, key=owner.admin))  # version 1 replaced no champion
        assert refused["extensions"] == {"code": "BAD_USER_INPUT", "field": "scenarioId"}
        promoted = (await gql.data(PROMOTE, {"id": listed[2]["id"]}, key=owner.admin))["promoteModel"]
        assert (promoted["version"], promoted["aliases"]) == (2, ["champion"])
        assert await served_version(gql, owner.admin, twice) == 2
        await asyncio.sleep(0.2)  # the notice crosses Redis
        await other.get(owner.tenant_id, twice, config_version=0)
        assert other.version(owner.tenant_id, twice) == 2
        again = (await gql.data(PROMOTE, {"id": listed[2]["id"]}, key=owner.admin))["promoteModel"]
        assert again["aliases"] == ["champion"]  # promoting the champion changes nothing
        assert (await gql.data(ROLLBACK, {"s": twice}, key=owner.admin))["rollbackModel"]["version"] == 1
        await asyncio.sleep(0.2)
        await other.get(owner.tenant_id, twice, config_version=0)
        assert other.version(owner.tenant_id, twice) == 1  # the rollback reached the other process too
    finally:
        await other.stop()
        await gql.data(PROMOTE, {"id": (await by_version(gql, owner.admin, twice))[2]["id"]}, key=owner.admin)


async def test_a_broken_artifact_never_replaces_the_champion(served, gql, owner, twice):
    registry = served.runtime.registry
    listed = await by_version(gql, owner.admin, twice)
    assert listed[2]["aliases"] == ["champion"]
    old = await ModelVersion.get(listed[1]["id"])
    path = served.runtime.models_dir / old.artifact
    backup = path.with_name("v1.backup")
    shutil.copytree(path, backup)
    try:
        (path / "meta.json").write_text("{ not json")
        refused = error(await gql(PROMOTE, {"id": old.id}, key=owner.admin))
        assert refused["extensions"] == {"code": "BAD_USER_INPUT", "field": "id"}
        assert "does not load" in refused["message"]
        assert registry.version(owner.tenant_id, twice) == 2
        # Promoted all the same (say, by a process that read it before it broke): serving loads it and keeps the
        # champion it has when that fails; requests keep being answered by it.
        await versions.promote(old)
        assert await registry.swap(owner.tenant_id, twice, 1) is False
        assert registry.version(owner.tenant_id, twice) == 2 and await served_version(gql, owner.admin, twice) == 2
    finally:
        shutil.rmtree(path)
        backup.rename(path)
        await gql.data(PROMOTE, {"id": listed[2]["id"]}, key=owner.admin)
    assert registry.version(owner.tenant_id, twice) == 2


async def test_only_a_ready_or_retired_version_with_its_artifact_can_be_promoted(served, gql, owner, twice,
                                                                                 monkeypatch):
    async def refuse(self, version, data, embeddings):
        raise RuntimeError("vector write refused")

    monkeypatch.setattr(learning_service.TrainingService, "_store_vectors", refuse)
    assert (await train(gql, owner.admin, twice))["status"] == "FAILED"
    monkeypatch.undo()
    failed = (await by_version(gql, owner.admin, twice))[3]
    assert (failed["status"], failed["aliases"], failed["device"]) == ("FAILED", [], None)
    refused = error(await gql(PROMOTE, {"id": failed["id"]}, key=owner.admin))
    assert refused["extensions"] == {"code": "BAD_USER_INPUT", "field": "id"} and "FAILED" in refused["message"]
    missing = error(await gql(PROMOTE, {"id": "mv_missing"}, key=owner.admin))
    assert missing["extensions"] == {"code": "NOT_FOUND", "field": "id"}


async def test_a_version_short_of_the_margin_waits_as_the_challenger(gql, owner, monkeypatch):
    sid = await shop(gql, owner.admin, "margin", users=20, items=30)
    await gql.data(UPDATE, {"id": sid, "input": {"config": {"models": {"promotionMargin": 0.01}}}}, key=owner.admin)
    figures = iter([0.20, 0.205, 0.25])  # validation NDCG@10 of each training in turn
    original = learning_service._metrics

    def scored(data, outcome, seconds):
        return {**original(data, outcome, seconds), "ndcg@10": next(figures)}

    monkeypatch.setattr(learning_service, "_metrics", scored)
    results = [(await train(gql, owner.admin, sid))["result"] for _ in range(2)]
    assert [r["promoted"] for r in results] == [True, False]
    listed = await by_version(gql, owner.admin, sid)
    assert [(v, m["status"], m["aliases"]) for v, m in sorted(listed.items())] == [
        (1, "READY", ["champion"]), (2, "READY", ["challenger"])]
    assert listed[2]["metrics"]["ndcg@10"] == 0.205
    assert await served_version(gql, owner.admin, sid) == 1  # the challenger does not serve
    assert (await train(gql, owner.admin, sid))["result"]["promoted"] is True  # 0.25 beats 0.20 by the margin
    listed = await by_version(gql, owner.admin, sid)
    assert [(v, m["status"], m["aliases"]) for v, m in sorted(listed.items())] == [
        (1, "RETIRED", []), (2, "RETIRED", []), (3, "READY", ["champion"])]
    assert await served_version(gql, owner.admin, sid) == 3


async def test_training_fits_its_blend_and_records_it_on_the_version(gql, owner):
    sid = await shop(gql, owner.admin, "fitted", users=80, items=60)
    assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"
    [version] = await models(gql, owner.admin, sid)
    fitted = version["config"]["fitted"]
    listed = [e["source"] for e in version["config"]["recall"]]
    assert set(fitted["weights"]) == set(listed) and any(w > 0 for w in fitted["weights"].values())
    assert set(fitted["params"]) == {"ease", "item_cf"} and fitted["params"]["ease"]["lambda"] > 0
    assert fitted["chosen"] in fitted["pipelines"]
    assert fitted["pipelines"][fitted["chosen"]] == max(fitted["pipelines"].values())
    assert fitted["validationUsers"] == 80
    metrics = version["metrics"]
    assert metrics["ndcg@10"] == fitted["pipelines"][fitted["chosen"]]  # what promotion compares
    assert 0 <= metrics["recall@20"] <= 1 and 0 < metrics["coverage"] <= 1 and metrics["tuning_s"] > 0
    # Serving runs the fitted weights: a source fitted to 0 is not run.
    debug = (await gql.data(DEBUG, {"s": sid, "u": "u1"}, key=owner.admin))["recommendations"]["debug"]
    ran = set(debug["recall"]) | set(debug["dropped"])
    assert ran and ran <= {s for s, w in fitted["weights"].items() if w > 0} | {"affinity"}
    # A retraining scores the serving champion on its own slice; on the same data the champion trained on every
    # held-out item, so no user is left for a fair comparison and each version's own figure decides.
    assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"
    again = (await models(gql, owner.admin, sid))[0]["config"]["fitted"]["champion"]
    assert again["version"] == version["version"] and again["users"] == 0 and "acted only after" in again["skipped"]
    # With models.tune off the next training fits nothing and the config's weights serve as written.
    await gql.data(UPDATE, {"id": sid, "input": {"config": {"models": {"tune": False}}}}, key=owner.admin)
    assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"
    newest = (await models(gql, owner.admin, sid))[0]
    assert "fitted" not in newest["config"] and "ndcg@10" not in newest["metrics"]


async def test_a_variant_pinned_to_the_previous_version_serves_from_it(served, gql, owner):
    sid = await shop(gql, owner.admin, "pinned", users=20, items=30)
    for _ in range(2):
        assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"

    def design(pin: dict) -> dict:
        return {"scenarioId": sid, "name": "old model", "primaryMetric": "CTR",
                "variants": [{"name": "champion"}, {"name": "previous", "model": pin}]}

    refused = error(await gql(CREATE_EXPERIMENT, {"input": design({"version": 7})}, key=owner.admin))
    assert refused["extensions"] == {"code": "BAD_USER_INPUT", "field": "input.variants.1.model.version"}
    refused = error(await gql(CREATE_EXPERIMENT, {"input": design({"version": 1, "alias": "champion"})},
                              key=owner.admin))
    assert refused["extensions"] == {"code": "BAD_USER_INPUT", "field": "input.variants.1.model"}
    created = (await gql.data(CREATE_EXPERIMENT, {"input": design({"version": 1})}, key=owner.admin))
    experiment = created["createExperiment"]
    assert experiment["variants"][1]["model"] == {"version": 1, "alias": None}
    assert experiment["variants"][0]["model"] is None
    assert (await gql.data(START, {"id": experiment["id"]}, key=owner.admin))["startExperiment"]["status"] == "RUNNING"
    try:
        seen: dict[str, set] = {"champion": set(), "previous": set()}
        for user in (f"u{n}" for n in range(20)):
            page = (await gql.data(DEBUG, {"s": sid, "u": user}, key=owner.admin))["recommendations"]
            seen[page["variant"]].add(page["debug"]["modelVersion"])
        assert seen == {"champion": {2}, "previous": {1}}
        assert served.runtime.registry.version(owner.tenant_id, sid) == 2
        kept = await versions.prune(owner.tenant_id, sid, served.runtime.models_dir, keep=0)
        assert kept == 0  # version 1 is pinned (and the rollback target)
    finally:
        await gql.data(STOP, {"id": experiment["id"]}, key=owner.admin)


async def test_the_registry_is_tenant_scoped_and_needs_the_right_key(served, gql, owner, twice):
    listed = await models(gql, owner.admin, twice)
    stranger = await new_tenant(served, "registry-stranger")
    assert (await gql.data(MODELS, {"s": twice}, key=stranger.admin))["scenario"] is None
    foreign = error(await gql(PROMOTE, {"id": listed[1]["id"]}, key=stranger.admin))
    assert foreign["extensions"] == {"code": "NOT_FOUND", "field": "id"}
    foreign = error(await gql(ROLLBACK, {"s": twice}, key=stranger.admin))
    assert foreign["extensions"] == {"code": "NOT_FOUND", "field": "scenarioId"}
    for key in (owner.public, owner.gateway):
        assert error(await gql(PROMOTE, {"id": listed[1]["id"]}, key=key))["extensions"]["code"] == "FORBIDDEN"
        assert error(await gql(ROLLBACK, {"s": twice}, key=key))["extensions"]["code"] == "FORBIDDEN"
    assert error(await gql(MODELS, {"s": twice}, key=owner.public))["extensions"]["code"] == "FORBIDDEN"
    assert error(await gql(PROMOTE, {"id": listed[1]["id"]}))["extensions"]["code"] == "UNAUTHENTICATED"
    assert (await by_version(gql, owner.admin, twice))[2]["aliases"] == ["champion"]  # nothing changed


async def test_rollback_needs_a_champion_of_that_kind(gql, owner):
    sid = await shop(gql, owner.admin, "untrained", users=5, items=10)
    refused = error(await gql(ROLLBACK, {"s": sid}, key=owner.admin))
    assert refused["extensions"] == {"code": "BAD_USER_INPUT", "field": "kind"}
    assert await models(gql, owner.admin, sid) == []
