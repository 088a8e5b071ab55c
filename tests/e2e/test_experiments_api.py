"""Experiments over HTTP: design and validation paths, lifecycle and shipping, layers, tenancy and scopes,
assignment, plans, listing, and what goes with a deleted scenario. Results figures come from the outcome store and
are tested where it is; here results are only read for their shape."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from gql import Client
from gql import gql as document
from gql.transport.exceptions import TransportQueryError
from gql.transport.websockets import WebsocketsTransport

from tests.conftest import new_tenant

FIELDS = """id scenarioId name hypothesis status variants { name weight config } trafficPercent trafficOffset layer
  allocation primaryMetric secondaryMetrics guardrails { metric margin } alpha power minimumDetectableEffect sequential
  cuped armWeights { variant weight } createdAt startedAt pausedAt endedAt shippedVariant"""
CREATE = f"mutation($input: CreateExperimentInput!) {{ createExperiment(input: $input) {{ {FIELDS} }} }}"
UPDATE = f"mutation($id: ID!, $input: UpdateExperimentInput!) {{ updateExperiment(id: $id, input: $input) {{ {FIELDS} }} }}"
START = f"mutation($id: ID!) {{ startExperiment(id: $id) {{ {FIELDS} }} }}"
PAUSE = f"mutation($id: ID!) {{ pauseExperiment(id: $id) {{ {FIELDS} }} }}"
STOP = f"mutation($id: ID!, $ship: String) {{ stopExperiment(id: $id, ship: $ship) {{ {FIELDS} }} }}"
DELETE = f"mutation($id: ID!) {{ deleteExperiment(id: $id) {{ {FIELDS} }} }}"
GET = f"query($id: ID!) {{ experiment(id: $id) {{ {FIELDS} }} }}"
PAGE = """query($s: ID, $status: ExperimentStatus, $first: Int, $after: String) {
  experiments(scenarioId: $s, status: $status, first: $first, after: $after) {
    edges { cursor node { id name status } } pageInfo { hasNextPage endCursor } totalCount } }"""
SCENARIO = """query($id: ID!) { scenario(id: $id) { configVersion config
  configVersions(first: 1) { version origin originRef changed } } }"""
ASSIGN = "query($x: ID!, $u: ID!) { experimentAssignment(experimentId: $x, userId: $u) }"
PLAN = """query($m: ExperimentMetric!, $b: Float!, $sd: Float, $mde: Float!, $v: Int, $s: ID) {
  experimentPlan(metric: $m, baseline: $b, baselineStdDev: $sd, minimumDetectableEffect: $mde, variants: $v,
                 scenarioId: $s) { usersPerVariant totalUsers expectedDays } }"""
FRESH = {"freshness": {"halfLifeHours": 6}}


def error(body: dict) -> dict:
    """Return the only error of a response."""
    assert len(body.get("errors") or []) == 1, body
    return body["errors"][0]


def refused(body: dict, code: str, field: str | None = None) -> None:
    err = error(body)
    assert err["extensions"]["code"] == code, err
    if field is not None:
        assert err["extensions"].get("field") == field, err


@pytest.fixture(scope="module")
async def keys(served):
    return await new_tenant(served, "experiments")


@pytest.fixture(scope="module")
async def other(served):
    return await new_tenant(served, "experiments-other")


async def new_scenario(gql, key: str, name: str | None = None) -> str:
    created = await gql.data("mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }",
                             {"input": {"name": name or f"exp-{uuid.uuid4().hex[:8]}", "template": "VLOG"}}, key=key)
    return created["createScenario"]["id"]


@pytest.fixture
async def scenario(gql, keys) -> str:
    return await new_scenario(gql, keys.admin)


def design(scenario_id: str, **overrides) -> dict:
    return {"scenarioId": scenario_id, "name": "fresher feed", "primaryMetric": "CTR",
            "variants": [{"name": "control"}, {"name": "fresh", "config": FRESH}], **overrides}


async def create(gql, key: str, scenario_id: str, **overrides) -> dict:
    return (await gql.data(CREATE, {"input": design(scenario_id, **overrides)}, key=key))["createExperiment"]


async def call(gql, key: str, query: str, root: str, **variables) -> dict:
    return (await gql.data(query, variables, key=key))[root]


async def listed(gql, key: str, **variables) -> list[str]:
    page = (await gql.data(PAGE, {"first": 200, **variables}, key=key))["experiments"]
    return [e["node"]["id"] for e in page["edges"]]


async def test_create_fills_the_defaults_and_reads_back(gql, keys, scenario):
    exp = await create(gql, keys.admin, scenario, hypothesis="fresh items earn clicks")
    assert exp["status"] == "DRAFT" and exp["scenarioId"] == scenario and exp["id"].startswith("exp_")
    assert exp["variants"] == [{"name": "control", "weight": 1.0, "config": {}},
                               {"name": "fresh", "weight": 1.0, "config": FRESH}]
    assert (exp["trafficPercent"], exp["trafficOffset"], exp["layer"]) == (100.0, 0.0, f"scenario:{scenario}")
    assert (exp["allocation"], exp["alpha"], exp["power"], exp["sequential"], exp["cuped"]) == (
        "USER_HASH", 0.05, 0.8, True, True)
    assert exp["startedAt"] is None and exp["armWeights"] == [] and exp["hypothesis"] == "fresh items earn clicks"
    assert (await call(gql, keys.admin, GET, "experiment", id=exp["id"])) == exp
    more = await gql.data("query($id: ID!) { experiment(id: $id) { results { computedAt } scenario { id } } }",
                          {"id": exp["id"]}, key=keys.admin)
    assert more["experiment"] == {"results": None, "scenario": {"id": scenario}}


async def test_update_changes_a_draft_only(gql, keys, scenario):
    exp = await create(gql, keys.admin, scenario, guardrails=[{"metric": "LATENCY_MS", "margin": 0.1}])
    changed = await call(gql, keys.admin, UPDATE, "updateExperiment", id=exp["id"], input={
        "name": "renamed", "trafficPercent": 40, "secondaryMetrics": ["WATCH_SECONDS"],
        "variants": [{"name": "a"}, {"name": "b", "weight": 3, "config": FRESH}], "alpha": None})
    assert changed["name"] == "renamed" and changed["trafficPercent"] == 40.0
    assert [v["name"] for v in changed["variants"]] == ["a", "b"] and changed["variants"][1]["weight"] == 3.0
    assert changed["secondaryMetrics"] == ["WATCH_SECONDS"] and changed["alpha"] == 0.05
    assert changed["guardrails"] == [{"metric": "LATENCY_MS", "margin": 0.1}]  # left out: kept
    body = await gql(UPDATE, {"id": exp["id"], "input": {"power": 1.5}}, key=keys.admin)
    refused(body, "BAD_USER_INPUT", "input.power")
    assert (await call(gql, keys.admin, GET, "experiment", id=exp["id"])) == changed
    await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    body = await gql(UPDATE, {"id": exp["id"], "input": {"name": "too late"}}, key=keys.admin)
    refused(body, "BAD_USER_INPUT", "id")
    assert (await call(gql, keys.admin, GET, "experiment", id=exp["id"]))["name"] == "renamed"


async def test_lifecycle_and_shipping_a_variant(gql, keys, scenario):
    before = await call(gql, keys.admin, SCENARIO, "scenario", id=scenario)
    exp = await create(gql, keys.admin, scenario)
    running = await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    assert running["status"] == "RUNNING" and running["startedAt"] and running["pausedAt"] is None
    refused(await gql(START, {"id": exp["id"]}, key=keys.admin), "BAD_USER_INPUT", "id")
    paused = await call(gql, keys.admin, PAUSE, "pauseExperiment", id=exp["id"])
    assert paused["status"] == "PAUSED" and paused["pausedAt"] >= running["startedAt"]
    refused(await gql(PAUSE, {"id": exp["id"]}, key=keys.admin), "BAD_USER_INPUT", "id")
    resumed = await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    assert resumed["status"] == "RUNNING" and resumed["pausedAt"] is None
    assert resumed["startedAt"] == running["startedAt"]  # resuming keeps the start (and the locked method)
    refused(await gql(STOP, {"id": exp["id"], "ship": "nope"}, key=keys.admin), "BAD_USER_INPUT", "ship")
    assert (await call(gql, keys.admin, GET, "experiment", id=exp["id"]))["status"] == "RUNNING"
    stopped = await call(gql, keys.admin, STOP, "stopExperiment", id=exp["id"], ship="fresh")
    assert stopped["status"] == "STOPPED" and stopped["endedAt"] and stopped["shippedVariant"] == "fresh"
    after = await call(gql, keys.admin, SCENARIO, "scenario", id=scenario)
    assert after["configVersion"] == before["configVersion"] + 1
    assert after["config"]["freshness"] == FRESH["freshness"] != before["config"]["freshness"]
    shipped = after["configVersions"][0]  # the history says where the new config came from
    assert (shipped["version"], shipped["origin"], shipped["originRef"]) == (after["configVersion"], "SHIPPED", exp["id"])
    assert shipped["changed"] and all(p.startswith("freshness") for p in shipped["changed"])
    for mutation in (START, PAUSE, STOP):
        refused(await gql(mutation, {"id": exp["id"]}, key=keys.admin), "BAD_USER_INPUT", "id")


async def test_shipping_the_control_keeps_the_config_version(gql, keys, scenario):
    exp = await create(gql, keys.admin, scenario)
    await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    version = (await call(gql, keys.admin, SCENARIO, "scenario", id=scenario))["configVersion"]
    stopped = await call(gql, keys.admin, STOP, "stopExperiment", id=exp["id"], ship="control")
    assert stopped["shippedVariant"] == "control"
    assert (await call(gql, keys.admin, SCENARIO, "scenario", id=scenario))["configVersion"] == version


async def test_a_draft_cannot_be_paused_or_stopped_and_delete_works_in_any_state(gql, keys, scenario):
    exp = await create(gql, keys.admin, scenario)
    refused(await gql(PAUSE, {"id": exp["id"]}, key=keys.admin), "BAD_USER_INPUT", "id")
    refused(await gql(STOP, {"id": exp["id"]}, key=keys.admin), "BAD_USER_INPUT", "id")
    await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    deleted = await call(gql, keys.admin, DELETE, "deleteExperiment", id=exp["id"])
    assert deleted["id"] == exp["id"] and deleted["status"] == "RUNNING"
    assert (await call(gql, keys.admin, GET, "experiment", id=exp["id"])) is None
    assert exp["id"] not in await listed(gql, keys.admin, s=scenario)
    refused(await gql(DELETE, {"id": exp["id"]}, key=keys.admin), "NOT_FOUND", "id")
    refused(await gql(START, {"id": exp["id"]}, key=keys.admin), "NOT_FOUND", "id")


BAD = {"recall": [{"source": "popular", "weight": -1}]}


@pytest.mark.parametrize(
    "change,field",
    [
        ({"name": "   "}, "input.name"),
        ({"name": "x" * 201}, "input.name"),
        ({"variants": [{"name": "only"}]}, "input.variants"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "input.variants.1.name"),
        ({"variants": [{"name": "a"}, {"name": " "}]}, "input.variants.1.name"),
        ({"variants": [{"name": "a", "weight": -1}, {"name": "b"}]}, "input.variants.0.weight"),
        ({"variants": [{"name": "a", "weight": 0}, {"name": "b", "weight": 0}]}, "input.variants"),
        ({"variants": [{"name": "a"}, {"name": "b", "config": BAD}]}, "input.variants.1.config.recall.0.weight"),
        ({"variants": [{"name": "a", "config": {"nonsense": 1}}, {"name": "b"}]}, "input.variants.0.config.nonsense"),
        ({"variants": [{"name": "a", "config": [1]}, {"name": "b"}]}, "input.variants.0.config"),
        ({"variants": [{"name": "a", "weight": "heavy"}, {"name": "b"}]}, "input.variants.0.weight"),
        ({"trafficPercent": 101}, "input.trafficPercent"),
        ({"trafficPercent": -1}, "input.trafficPercent"),
        ({"trafficPercent": 50, "trafficOffset": 60}, "input.trafficOffset"),
        ({"alpha": 0}, "input.alpha"),
        ({"alpha": 1}, "input.alpha"),
        ({"power": 1.2}, "input.power"),
        ({"minimumDetectableEffect": 0}, "input.minimumDetectableEffect"),
        ({"minimumDetectableEffect": -0.1}, "input.minimumDetectableEffect"),
        ({"guardrails": [{"metric": "LATENCY_MS", "margin": 0}]}, "input.guardrails.0.margin"),
        ({"guardrails": [{"metric": "CTR", "margin": 0.1}, {"metric": "SPEED", "margin": 0.1}]},
         "input.guardrails.1.metric"),
        ({"allocation": "INTERLEAVE", "variants": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "input.variants"),
        ({"allocation": "RANDOM"}, "input.allocation"),
        ({"primaryMetric": "REVENUE"}, "input.primaryMetric"),
        ({"secondaryMetrics": ["WATCH_SECONDS", "HAPPINESS"]}, "input.secondaryMetrics.1"),
        ({"secondaryMetrics": ["CTR"]}, "input.secondaryMetrics.0"),
    ],
)
async def test_bad_input_names_its_field_and_stores_nothing(gql, keys, scenario, change, field):
    before = await listed(gql, keys.admin)
    body = await gql(CREATE, {"input": design(scenario, **change)}, key=keys.admin)
    refused(body, "BAD_USER_INPUT", field)
    assert body.get("data") is None
    assert await listed(gql, keys.admin) == before


async def test_an_unknown_metric_literal_is_bad_input_with_its_path(gql, keys, scenario):
    doc = f"""mutation {{ createExperiment(input: {{scenarioId: "{scenario}", name: "x", primaryMetric: CTR,
      variants: [{{name: "a"}}, {{name: "b"}}], guardrails: [{{metric: NOPE, margin: 0.1}}]}}) {{ id }} }}"""
    body = await gql(doc, key=keys.admin)
    refused(body, "BAD_USER_INPUT", "input.guardrails.0.metric")
    body = await gql(PLAN, {"m": "NOPE", "b": 0.1, "mde": 0.1}, key=keys.admin)
    refused(body, "BAD_USER_INPUT", "metric")


async def test_an_unknown_scenario_is_not_found(gql, keys):
    body = await gql(CREATE, {"input": design("sc_missing")}, key=keys.admin)
    refused(body, "NOT_FOUND", "input.scenarioId")
    refused(await gql(PAGE, {"s": "sc_missing"}, key=keys.admin), "NOT_FOUND", "scenarioId")


async def test_experiments_of_one_layer_never_overlap(gql, keys, scenario):
    half = await create(gql, keys.admin, scenario, trafficPercent=50)
    early = await create(gql, keys.admin, scenario, trafficPercent=30, trafficOffset=20)  # a DRAFT holds nothing
    await call(gql, keys.admin, START, "startExperiment", id=half["id"])
    before = await listed(gql, keys.admin, s=scenario)
    refused(await gql(CREATE, {"input": design(scenario, trafficPercent=60)}, key=keys.admin),
            "BAD_USER_INPUT", "input.trafficPercent")
    assert await listed(gql, keys.admin, s=scenario) == before
    refused(await gql(START, {"id": early["id"]}, key=keys.admin), "BAD_USER_INPUT", "id")
    assert (await call(gql, keys.admin, GET, "experiment", id=early["id"]))["status"] == "DRAFT"
    # The other half of the layer, or another layer, is free.
    rest = await create(gql, keys.admin, scenario, trafficPercent=50, trafficOffset=50)
    assert (await call(gql, keys.admin, START, "startExperiment", id=rest["id"]))["status"] == "RUNNING"
    layer = f"ranking-{uuid.uuid4().hex[:8]}"
    elsewhere = await create(gql, keys.admin, scenario, layer=layer)
    assert elsewhere["layer"] == layer
    assert (await call(gql, keys.admin, START, "startExperiment", id=elsewhere["id"]))["status"] == "RUNNING"
    # A paused experiment keeps its buckets; a stopped one frees them.
    await call(gql, keys.admin, PAUSE, "pauseExperiment", id=half["id"])
    refused(await gql(START, {"id": early["id"]}, key=keys.admin), "BAD_USER_INPUT", "id")
    await call(gql, keys.admin, STOP, "stopExperiment", id=half["id"])
    assert (await call(gql, keys.admin, START, "startExperiment", id=early["id"]))["status"] == "RUNNING"


async def test_another_tenants_experiment_looks_missing(gql, keys, other, scenario):
    exp = await create(gql, keys.admin, scenario)
    assert (await call(gql, other.admin, GET, "experiment", id=exp["id"])) is None
    assert exp["id"] not in await listed(gql, other.admin)
    for mutation in (START, PAUSE, STOP, DELETE):
        refused(await gql(mutation, {"id": exp["id"]}, key=other.admin), "NOT_FOUND", "id")
    refused(await gql(UPDATE, {"id": exp["id"], "input": {"name": "mine"}}, key=other.admin), "NOT_FOUND", "id")
    refused(await gql(ASSIGN, {"x": exp["id"], "u": "u1"}, key=other.admin), "NOT_FOUND", "experimentId")
    refused(await gql(CREATE, {"input": design(scenario)}, key=other.admin), "NOT_FOUND", "input.scenarioId")
    refused(await gql(PLAN, {"m": "CTR", "b": 0.1, "mde": 0.1, "s": scenario}, key=other.gateway),
            "NOT_FOUND", "scenarioId")
    entity = await gql.data("""query($r: [_Any!]!) { _entities(representations: $r) { ... on Experiment { id } } }""",
                            {"r": [{"__typename": "Experiment", "id": exp["id"]}]}, key=other.gateway)
    assert entity["_entities"] == [None]
    mine = await gql.data("""query($r: [_Any!]!) { _entities(representations: $r) { ... on Experiment { id } } }""",
                          {"r": [{"__typename": "Experiment", "id": exp["id"]}]}, key=keys.gateway)
    assert mine["_entities"] == [{"id": exp["id"]}]
    assert (await call(gql, keys.admin, GET, "experiment", id=exp["id"]))["status"] == "DRAFT"


async def test_public_keys_neither_write_nor_read_experiments(gql, keys, scenario):
    exp = await create(gql, keys.admin, scenario)
    refused(await gql(CREATE, {"input": design(scenario)}, key=keys.public), "FORBIDDEN")
    refused(await gql(CREATE, {"input": design(scenario)}, key=keys.gateway), "FORBIDDEN")
    for mutation in (START, DELETE):
        refused(await gql(mutation, {"id": exp["id"]}, key=keys.public), "FORBIDDEN")
    refused(await gql(GET, {"id": exp["id"]}, key=keys.public), "FORBIDDEN")
    refused(await gql(PAGE, {}, key=keys.public), "FORBIDDEN")
    refused(await gql(ASSIGN, {"x": exp["id"], "u": "u1"}, key=keys.public), "FORBIDDEN")
    refused(await gql(PLAN, {"m": "CTR", "b": 0.1, "mde": 0.1}, key=keys.public), "FORBIDDEN")
    refused(await gql(GET, {"id": exp["id"]}), "UNAUTHENTICATED")
    # A gateway reads.
    assert (await call(gql, keys.gateway, GET, "experiment", id=exp["id"]))["id"] == exp["id"]
    assert (await call(gql, keys.admin, GET, "experiment", id=exp["id"]))["status"] == "DRAFT"


async def assignments(gql, key: str, experiment_id: str, users: list[str]) -> dict[str, str | None]:
    """Return each user's experimentAssignment, 25 aliases a request."""
    found: dict[str, str | None] = {}
    for start in range(0, len(users), 25):
        batch = users[start:start + 25]
        fields = " ".join(f'u{i}: experimentAssignment(experimentId: "{experiment_id}", userId: "{u}")'
                          for i, u in enumerate(batch))
        data = await gql.data(f"{{ {fields} }}", key=key)
        found.update({u: data[f"u{i}"] for i, u in enumerate(batch)})
    return found


async def test_assignment_is_deterministic_and_honours_traffic_and_weights(gql, keys, scenario):
    exp = await create(gql, keys.admin, scenario, trafficPercent=30,
                       variants=[{"name": "control", "weight": 1}, {"name": "fresh", "weight": 3, "config": FRESH}])
    users = [f"user-{i}" for i in range(2000)]
    assert set((await assignments(gql, keys.admin, exp["id"], users[:50])).values()) == {None}  # DRAFT
    await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    first = await assignments(gql, keys.admin, exp["id"], users)
    assert await assignments(gql, keys.admin, exp["id"], users[:300]) == {u: first[u] for u in users[:300]}
    inside = [v for v in first.values() if v is not None]
    # Binomial(2000, 0.3): sd 20.5 users; Binomial(n, 0.75) for the treatment's share.
    assert 510 <= len(inside) <= 690, len(inside)
    assert set(inside) == {"control", "fresh"}
    assert 0.67 <= inside.count("fresh") / len(inside) <= 0.83
    await call(gql, keys.admin, PAUSE, "pauseExperiment", id=exp["id"])
    assert await assignments(gql, keys.admin, exp["id"], users[:200]) == {u: first[u] for u in users[:200]}
    await call(gql, keys.admin, STOP, "stopExperiment", id=exp["id"])
    assert set((await assignments(gql, keys.admin, exp["id"], users[:50])).values()) == {None}


async def test_interleave_assigns_interleaved(gql, keys, scenario):
    exp = await create(gql, keys.admin, scenario, allocation="INTERLEAVE", trafficPercent=50)
    await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    found = await assignments(gql, keys.admin, exp["id"], [f"il-{i}" for i in range(100)])
    assert set(found.values()) == {"interleaved", None}


async def test_thompson_locks_its_starting_weights(gql, keys, scenario):
    exp = await create(gql, keys.admin, scenario, allocation="THOMPSON",
                       variants=[{"name": "a", "weight": 1}, {"name": "b", "weight": 3}])
    started = await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    assert started["armWeights"] == [{"variant": "a", "weight": 0.25}, {"variant": "b", "weight": 0.75}]


async def test_plan_answers_sample_sizes_and_days(gql, keys, scenario):
    ctr = (await gql.data(PLAN, {"m": "CTR", "b": 0.1, "mde": 0.1}, key=keys.gateway))["experimentPlan"]
    # Two proportions 10% -> 11%, alpha 0.05 two-sided, power 0.8: about 14,750 users per arm (Fleiss).
    assert 13_500 <= ctr["usersPerVariant"] <= 16_000 and ctr["totalUsers"] == 2 * ctr["usersPerVariant"]
    assert ctr["expectedDays"] is None
    three = (await gql.data(PLAN, {"m": "CTR", "b": 0.1, "mde": 0.1, "v": 3}, key=keys.admin))["experimentPlan"]
    assert three["usersPerVariant"] > ctr["usersPerVariant"] and three["totalUsers"] == 3 * three["usersPerVariant"]
    # d = 0.1 * 60 / 120 = 0.05: n = 2 (z_0.975 + z_0.8)^2 / d^2, about 6,280 per arm.
    watch = (await gql.data(PLAN, {"m": "WATCH_SECONDS", "b": 60, "sd": 120, "mde": 0.1}, key=keys.admin))
    assert 6_000 <= watch["experimentPlan"]["usersPerVariant"] <= 6_600
    refused(await gql(PLAN, {"m": "WATCH_SECONDS", "b": 60, "mde": 0.1}, key=keys.admin),
            "BAD_USER_INPUT", "baselineStdDev")
    refused(await gql(PLAN, {"m": "CTR", "b": 0.1, "mde": 0}, key=keys.admin), "BAD_USER_INPUT",
            "minimumDetectableEffect")
    # 70 distinct users in the last week: 10 a day.
    await gql.data("mutation($items: [ItemInput!]!, $s: ID!) { upsertItems(scenarioId: $s, items: $items) { upserted } }",
                   {"s": scenario, "items": [{"id": "plan-item", "title": "t"}]}, key=keys.admin)
    now = datetime.now(UTC).isoformat()
    events = [{"scenarioId": scenario, "userId": f"planner-{i}", "itemId": "plan-item", "type": "VIEW",
               "timestamp": now} for i in range(70)]
    recorded = await gql.data("mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted } }",
                              {"e": events}, key=keys.admin)
    assert recorded["recordInteractions"]["accepted"] == 70
    days = (await gql.data(PLAN, {"m": "CTR", "b": 0.1, "mde": 0.1, "s": scenario}, key=keys.admin))["experimentPlan"]
    assert days["expectedDays"] == pytest.approx(days["totalUsers"] / 10, rel=0.01)


async def test_deleting_a_scenario_deletes_its_experiments(gql, keys):
    scenario = await new_scenario(gql, keys.admin)
    kept = await new_scenario(gql, keys.admin)
    doomed = [await create(gql, keys.admin, scenario), await create(gql, keys.admin, scenario, trafficPercent=0)]
    await call(gql, keys.admin, START, "startExperiment", id=doomed[0]["id"])
    survivor = await create(gql, keys.admin, kept)
    assert (await gql.data("mutation($id: ID!) { deleteScenario(id: $id) }", {"id": scenario}, key=keys.admin))
    for exp in doomed:
        assert (await call(gql, keys.admin, GET, "experiment", id=exp["id"])) is None
    remaining = await listed(gql, keys.admin)
    assert survivor["id"] in remaining and not {e["id"] for e in doomed} & set(remaining)


async def test_the_list_pages_newest_first_and_filters(served, gql):
    key = (await new_tenant(served, "experiment-pages")).admin
    scenario, second = await new_scenario(gql, key), await new_scenario(gql, key)
    made = [(await create(gql, key, scenario, name=f"e{i}", trafficPercent=10, trafficOffset=10 * i))["id"]
            for i in range(5)]
    other = (await create(gql, key, second))["id"]
    await call(gql, key, START, "startExperiment", id=made[1])
    seen, after = [], None
    while True:
        page = (await gql.data(PAGE, {"s": scenario, "first": 2, "after": after}, key=key))["experiments"]
        seen += [e["node"]["id"] for e in page["edges"]]
        assert page["totalCount"] == 5 and len(page["edges"]) <= 2
        if not page["pageInfo"]["hasNextPage"]:
            break
        after = page["pageInfo"]["endCursor"]
    assert seen == made[::-1]
    assert await listed(gql, key) == [other, *made[::-1]]
    assert await listed(gql, key, status="RUNNING") == [made[1]]
    assert await listed(gql, key, s=scenario, status="DRAFT") == [made[4], made[3], made[2], made[0]]
    nested = await gql.data("""query($id: ID!) { scenario(id: $id) { experiments(status: RUNNING) {
      edges { node { id status } } totalCount } } }""", {"id": scenario}, key=key)
    assert nested["scenario"]["experiments"] == {"edges": [{"node": {"id": made[1], "status": "RUNNING"}}],
                                                 "totalCount": 1}
    refused(await gql(PAGE, {"first": 201}, key=key), "BAD_USER_INPUT", "first")


async def test_experiment_mutations_are_audited(served, gql):
    keys = await new_tenant(served, "experiment-audit")
    scenario = await new_scenario(gql, keys.admin)
    exp = await create(gql, keys.admin, scenario)
    await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    await gql(PAUSE, {"id": "exp_missing"}, key=keys.admin)
    log = await gql.data("{ auditLog(first: 10) { edges { node { operation outcome } } } }", key=keys.admin)
    entries = [e["node"] for e in log["auditLog"]["edges"]]
    assert entries[:3] == [{"operation": "pauseExperiment", "outcome": "NOT_FOUND"},
                           {"operation": "startExperiment", "outcome": "ok"},
                           {"operation": "createExperiment", "outcome": "ok"}]


async def test_a_list_outside_any_experiment_names_none(gql, keys, scenario):
    query = """query($s: ID!) { recommendations(scenarioId: $s, userId: "outsider") { variant experiment { id } } }"""
    data = await gql.data(query, {"s": scenario}, key=keys.admin)
    assert data["recommendations"] == {"variant": None, "experiment": None}
    body = await gql(query, {"s": scenario}, key=keys.public)
    refused(body, "FORBIDDEN")
    assert body["data"]["recommendations"]["experiment"] is None


FULL_RESULTS = """query($id: ID!) { experiment(id: $id) { results { computedAt frozen exposures { variant users }
  srm { pValue mismatch expected } metrics { metric variant role users value controlValue difference differenceLower
  differenceUpper relativeDifference relativeLower relativeUpper pValue adjustedPValue significant method cuped
  varianceReduction } guardrails { metric variant margin pValue passed method }
  arms { variant mean lower upper probabilityBest weight }
  preference { controlWins treatmentWins ties share lower upper pValue method }
  statistics { variant n sums { component value } products { a b value } } } } }"""


async def test_results_have_their_shape_when_there_are_any(gql, keys, scenario):
    exp = await create(gql, keys.admin, scenario, guardrails=[{"metric": "LATENCY_MS", "margin": 0.2}])
    await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    for key in (keys.admin, keys.gateway):
        found = (await gql.data(FULL_RESULTS, {"id": exp["id"]}, key=key))["experiment"]["results"]
        if found is not None:  # null until an outcome store is wired in
            assert [e["variant"] for e in found["exposures"]] == ["control", "fresh"] and not found["frozen"]
            assert {m["metric"] for m in found["metrics"]} >= {"CTR"}
    stopped = await call(gql, keys.admin, STOP, "stopExperiment", id=exp["id"])
    frozen = (await gql.data(FULL_RESULTS, {"id": stopped["id"]}, key=keys.admin))["experiment"]["results"]
    assert frozen is None or frozen["frozen"] is True


RESULTS = "subscription($id: ID!) { experimentResults(id: $id) { computedAt frozen exposures { variant users } } }"


async def test_results_subscription_is_tenant_scoped_and_ends_with_a_stopped_experiment(served, gql, keys, other,
                                                                                        scenario):
    exp = await create(gql, keys.admin, scenario)
    await call(gql, keys.admin, START, "startExperiment", id=exp["id"])
    await call(gql, keys.admin, STOP, "stopExperiment", id=exp["id"])
    url = served.url.replace("http://", "ws://", 1) + "/graphql"

    async def follow(key: str) -> list:
        transport = WebsocketsTransport(url=url, init_payload={"Authorization": f"Bearer {key}"},
                                        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL], ack_timeout=5)
        async with Client(transport=transport, fetch_schema_from_transport=False) as client:
            return [r async for r in client.subscribe(document(RESULTS), variable_values={"id": exp["id"]})]

    pushed = await follow(keys.admin)
    # Without an outcome store the stop froze nothing: the stream ends without a push; with one, it pushes the
    # frozen results once.
    assert all(p["experimentResults"]["frozen"] for p in pushed) and len(pushed) <= 1
    with pytest.raises(TransportQueryError) as caught:
        await follow(other.admin)
    assert caught.value.errors[0]["extensions"]["code"] == "NOT_FOUND"
    with pytest.raises(TransportQueryError) as caught:
        await follow(keys.public)
    assert caught.value.errors[0]["extensions"]["code"] == "FORBIDDEN"
