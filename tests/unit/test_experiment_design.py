"""Experiment designs and the experiment service on fakes: validation paths and defaults (pure), then the
lifecycle's side effects (covariates prepared, method locked, results frozen, outcomes dropped, serving told) with
fake outcome and results stores on the embedded MongoDB, and the results subscription's change detection."""

from __future__ import annotations

import copy
from dataclasses import replace
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest

from domain.errors import BadInput, Forbidden, NotFound
from domain.experiments.design import (
    check_design, check_variant_configs, default_layer, design_input, locked_method, normalised_weights,
)
from domain.experiments.report import ExperimentResults, Exposure, MetricResult, SampleRatio, VariantStatistics
from domain.experiments.service import ExperimentService, user_variant
from domain.hotcache import Invalidations
from domain.ids import new_id
from domain.scenarios.service import ScenarioService
from domain.scenarios.templates import TEMPLATES
from domain.tenancy import Principal, Scope
from graph.types.experiment import ExperimentMetric, ExperimentResults as ResultsType, MetricRole
from models.documents import Experiment
from resolvers.context import RequestContext
from resolvers.subscriptions import experiment_results

CONFIG = TEMPLATES["VLOG"]
FRESH = {"freshness": {"halfLifeHours": 6}}


def given(**overrides) -> dict:
    return {"name": "fresher", "primaryMetric": "CTR",
            "variants": [{"name": "control"}, {"name": "fresh", "config": FRESH}], **overrides}


def refusal(**overrides) -> str | None:
    with pytest.raises(BadInput) as caught:
        check_design(given(**overrides), scenario_config=CONFIG)
    return caught.value.field


# --- the design, pure --------------------------------------------------------------------------------------------


def test_a_minimal_design_takes_every_default():
    fields = check_design(given(), scenario_config=CONFIG)
    assert fields["variants"] == [{"name": "control", "weight": 1.0, "config": {}},
                                  {"name": "fresh", "weight": 1.0, "config": FRESH}]
    assert (fields["traffic_percent"], fields["traffic_offset"], fields["layer"]) == (100.0, 0.0, None)
    assert (fields["allocation"], fields["alpha"], fields["power"]) == ("USER_HASH", 0.05, 0.8)
    assert fields["sequential"] is fields["cuped"] is True
    assert fields["secondary_metrics"] == [] and fields["guardrails"] == []
    assert fields["hypothesis"] is None and fields["minimum_detectable_effect"] is None


def test_null_takes_the_default_and_text_is_trimmed():
    fields = check_design(given(name="  spaced  ", alpha=None, trafficPercent=None, allocation=None, layer="  "),
                          scenario_config=CONFIG)
    assert fields["name"] == "spaced" and fields["alpha"] == 0.05 and fields["traffic_percent"] == 100.0
    assert fields["allocation"] == "USER_HASH" and fields["layer"] is None


def test_overrides_are_stored_as_sent_not_merged():
    overrides = {"recall": [{"source": "popular", "weight": 2}]}
    fields = check_design(given(variants=[{"name": "a"}, {"name": "b", "config": overrides}]), scenario_config=CONFIG)
    assert fields["variants"][1]["config"] == overrides
    overrides["recall"][0]["weight"] = 9  # a copy was kept
    assert fields["variants"][1]["config"]["recall"][0]["weight"] == 2


@pytest.mark.parametrize(
    "change,field",
    [
        ({"name": ""}, "input.name"),
        ({"name": None}, "input.name"),
        ({"name": 7}, "input.name"),
        ({"variants": None}, "input.variants"),
        ({"variants": "ab"}, "input.variants"),
        ({"variants": [{"name": "a"}] * 21}, "input.variants"),
        ({"variants": [{"name": "a"}, "b"]}, "input.variants.1"),
        ({"variants": [{"name": "a"}, {"name": "a"}]}, "input.variants.1.name"),
        ({"variants": [{"name": "a"}, {"name": "interleaved"}]}, "input.variants.1.name"),
        ({"variants": [{"name": "a", "weight": -0.5}, {"name": "b"}]}, "input.variants.0.weight"),
        ({"variants": [{"name": "a", "weight": True}, {"name": "b"}]}, "input.variants.0.weight"),
        ({"variants": [{"name": "a", "weight": float("nan")}, {"name": "b"}]}, "input.variants.0.weight"),
        ({"variants": [{"name": "a", "weight": 0}, {"name": "b", "weight": 0.0}]}, "input.variants"),
        ({"variants": [{"name": "a"}, {"name": "b", "config": {"recall": []}}]}, "input.variants.1.config.recall"),
        ({"variants": [{"name": "a"}, {"name": "b", "config": "fresh"}]}, "input.variants.1.config"),
        ({"trafficPercent": 100.5}, "input.trafficPercent"),
        ({"trafficOffset": -1}, "input.trafficOffset"),
        ({"trafficOffset": 90, "trafficPercent": 20}, "input.trafficOffset"),
        ({"allocation": "ROUND_ROBIN"}, "input.allocation"),
        ({"allocation": "INTERLEAVE", "variants": [{"name": "a"}, {"name": "b"}, {"name": "c"}]}, "input.variants"),
        ({"primaryMetric": None}, "input.primaryMetric"),
        ({"primaryMetric": "ctr"}, "input.primaryMetric"),
        ({"secondaryMetrics": "CTR"}, "input.secondaryMetrics"),
        ({"secondaryMetrics": ["WATCH_SECONDS", "WATCH_SECONDS"]}, "input.secondaryMetrics.1"),
        ({"guardrails": [{"metric": "LATENCY_MS", "margin": -0.1}]}, "input.guardrails.0.margin"),
        ({"guardrails": [{"metric": "LATENCY_MS"}]}, "input.guardrails.0.margin"),
        ({"guardrails": [{"metric": "CTR", "margin": 0.1}, {"metric": "CTR", "margin": 0.2}]},
         "input.guardrails.1.metric"),
        ({"guardrails": ["CTR"]}, "input.guardrails.0"),
        ({"alpha": 0.0}, "input.alpha"),
        ({"alpha": 1.0}, "input.alpha"),
        ({"power": -0.2}, "input.power"),
        ({"minimumDetectableEffect": 0}, "input.minimumDetectableEffect"),
        ({"sequential": "yes"}, "input.sequential"),
        ({"layer": "x" * 201}, "input.layer"),
    ],
)
def test_each_refusal_names_its_field(change, field):
    assert refusal(**change) == field


def test_traffic_bounds_are_inclusive():
    fields = check_design(given(trafficPercent=0, trafficOffset=100), scenario_config=CONFIG)
    assert (fields["traffic_percent"], fields["traffic_offset"]) == (0.0, 100.0)
    fields = check_design(given(trafficPercent=25.5, trafficOffset=74.5), scenario_config=CONFIG)
    assert fields["traffic_percent"] + fields["traffic_offset"] == 100.0


def test_a_stored_design_round_trips_through_its_input_form():
    fields = check_design(given(secondaryMetrics=["WATCH_SECONDS"], guardrails=[{"metric": "LATENCY_MS", "margin": 0.2}],
                                layer="ranking", minimumDetectableEffect=0.05), scenario_config=CONFIG)
    exp = SimpleNamespace(id="exp_1", scenario_id="sc_1", **fields)  # what design_input reads of a document
    assert check_design(design_input(exp), scenario_config=CONFIG) == fields
    exp.layer = default_layer("sc_1")
    assert design_input(exp)["layer"] is None  # the default layer stays the default when the design is updated


def test_variant_configs_are_checked_against_the_scenarios_current_config():
    variants = [{"name": "a", "config": {}}, {"name": "b", "config": {"recall": [{"source": "popular", "weight": 2}]}}]
    check_variant_configs(variants, CONFIG, prefix="variants")
    broken = copy.deepcopy(variants)
    broken[1]["config"]["recall"][0]["weight"] = -1
    with pytest.raises(BadInput) as caught:
        check_variant_configs(broken, CONFIG, prefix="variants")
    assert caught.value.field == "variants.1.config.recall.0.weight"


def test_the_locked_method_and_starting_arm_weights():
    fields = check_design(given(guardrails=[{"metric": "LATENCY_MS", "margin": 0.2}], alpha=0.01),
                          scenario_config=CONFIG)
    exp = SimpleNamespace(**fields)
    method = locked_method(exp)
    assert method == {"alpha": 0.01, "power": 0.8, "sequential": True, "cuped": True, "tuning_n": 5000,
                      "allocation": "USER_HASH", "primary_metric": "CTR", "secondary_metrics": [],
                      "guardrails": [{"metric": "LATENCY_MS", "margin": 0.2}]}
    exp.guardrails[0]["margin"] = 0.5
    assert method["guardrails"][0]["margin"] == 0.2  # a copy: later changes do not reach the lock
    assert normalised_weights([{"name": "a", "weight": 1}, {"name": "b", "weight": 3}]) == {"a": 0.25, "b": 0.75}


# --- the service's side effects, on fakes ------------------------------------------------------------------------


class FakeOutcomes:
    def __init__(self) -> None:
        self.prepared: list[Experiment] = []
        self.dropped: list[str] = []
        self.arms: dict[str, str] = {}
        self.on_prepare = None

    async def prepare(self, experiment: Experiment) -> None:
        self.prepared.append(experiment)
        if self.on_prepare is not None:
            await self.on_prepare(experiment)

    async def drop(self, experiment: Experiment) -> None:
        self.dropped.append(experiment.id)

    async def stored_arm(self, experiment: Experiment, user_id: str) -> str | None:
        return self.arms.get(user_id)


def results(users: int, *, frozen: bool = False, at: datetime | None = None) -> ExperimentResults:
    return ExperimentResults(
        computed_at=at or datetime.now(UTC), exposures=[Exposure("control", users), Exposure("fresh", users)],
        srm=SampleRatio(p_value=0.5, mismatch=False, expected=(0.5, 0.5)),
        metrics=[MetricResult(metric="CTR", variant="fresh", role="PRIMARY", users=users, value=0.11,
                              control_value=0.1, difference=0.01)],
        statistics=[VariantStatistics("control", users, {"clicks": 3.0}, {"clicks*impressions": 40.0})],
        frozen=frozen,
    )


class FakeResults:
    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []
        self.users = 10

    async def compute(self, experiment: Experiment, *, frozen: bool = False) -> ExperimentResults:
        self.calls.append((experiment.status, frozen))
        return results(self.users, frozen=frozen)


class RecordingInvalidations(Invalidations):
    def __init__(self) -> None:
        super().__init__(None)
        self.published: list[tuple[str, str, list[str]]] = []

    async def publish(self, kind: str, tenant_id: str, keys=()) -> None:
        self.published.append((kind, tenant_id, list(keys)))


@pytest.fixture
async def world(served):  # `served` initialises Beanie on the embedded MongoDB
    scenarios = ScenarioService(served.runtime.cache)
    outcomes, computed, invalidations = FakeOutcomes(), FakeResults(), RecordingInvalidations()
    service = ExperimentService(scenarios, invalidations=invalidations, outcomes=outcomes, results=computed)
    heard: list[tuple[str, list[str]]] = []
    service.on_change(lambda tenant_id, keys: heard.append((tenant_id, keys)))
    tenant_id = new_id("tn")
    scenario = await scenarios.create(tenant_id=tenant_id, name="feed", template="VLOG", config=None)
    return SimpleNamespace(service=service, scenarios=scenarios, outcomes=outcomes, results=computed,
                           invalidations=invalidations, heard=heard, tenant_id=tenant_id, scenario=scenario)


async def draft(world, **overrides) -> Experiment:
    return await world.service.create(tenant_id=world.tenant_id, input={"scenarioId": world.scenario.id,
                                                                         **given(**overrides)})


async def test_start_prepares_covariates_locks_the_method_and_tells_serving(world):
    exp = await draft(world, allocation="THOMPSON", variants=[{"name": "a", "weight": 1}, {"name": "b", "weight": 4}])
    assert exp.salt and exp.layer == default_layer(world.scenario.id)
    started = await world.service.start(exp.id, tenant_id=world.tenant_id)
    assert started.status == "RUNNING" and started.method == locked_method(exp)
    assert started.arm_weights == {"a": 0.2, "b": 0.8}
    [prepared] = world.outcomes.prepared
    assert prepared.started_at == started.started_at  # the covariates' window ends at the start
    assert world.invalidations.published == [("experiments", world.tenant_id, [world.scenario.id])]
    assert world.heard == [(world.tenant_id, [world.scenario.id])]
    await world.service.pause(exp.id, tenant_id=world.tenant_id)
    resumed = await world.service.start(exp.id, tenant_id=world.tenant_id)
    assert len(world.outcomes.prepared) == 1 and resumed.started_at == started.started_at
    assert len(world.invalidations.published) == 3


async def test_a_start_that_raced_with_an_overlapping_one_is_undone(world):
    exp = await draft(world, trafficPercent=50)

    async def rival_starts(_: Experiment) -> None:  # after our check, before our move
        rival = await draft(world, trafficPercent=50, trafficOffset=25)
        await Experiment.get_pymongo_collection().update_one({"_id": rival.id}, {"$set": {"status": "RUNNING"}})

    world.outcomes.on_prepare = rival_starts
    with pytest.raises(BadInput) as caught:
        await world.service.start(exp.id, tenant_id=world.tenant_id)
    assert caught.value.field == "id"
    back = await world.service.get(exp.id, tenant_id=world.tenant_id)
    assert back.status == "DRAFT" and back.started_at is None and back.method == {}
    assert world.outcomes.dropped == [exp.id]


async def test_results_are_none_for_a_draft_fresh_while_running_and_frozen_at_stop(world):
    exp = await draft(world)
    assert await world.service.results(exp.id, tenant_id=world.tenant_id) is None
    await world.service.start(exp.id, tenant_id=world.tenant_id)
    live = await world.service.results(exp.id, tenant_id=world.tenant_id)
    assert live.exposures[0].users == 10 and not live.frozen
    assert world.results.calls == [("RUNNING", False)]
    await world.service.results(exp.id, tenant_id=world.tenant_id)
    assert len(world.results.calls) == 1  # followers within a second share one computation
    stopped = await world.service.stop(exp.id, tenant_id=world.tenant_id, ship="fresh")
    assert world.results.calls[-1] == ("STOPPED", True) and stopped.shipped == "fresh"
    world.results.users = 99  # outcomes keep moving; the frozen results do not
    kept = await world.service.results(exp.id, tenant_id=world.tenant_id)
    assert kept == replace(results(10, frozen=True), computed_at=kept.computed_at) and kept.frozen
    assert kept.statistics[0].products == {"clicks*impressions": 40.0}
    assert len(world.results.calls) == 2
    shipped = await world.scenarios.get(world.scenario.id, tenant_id=world.tenant_id)
    assert shipped.config_version == world.scenario.config_version + 1 and shipped.config["freshness"] == FRESH["freshness"]


async def test_assignment_reads_thompson_arms_and_nothing_else(world):
    exp = await draft(world, allocation="THOMPSON")
    world.outcomes.arms["u1"] = "fresh"
    assert await world.service.assignment(exp.id, "u1", tenant_id=world.tenant_id) is None  # DRAFT
    await world.service.start(exp.id, tenant_id=world.tenant_id)
    assert await world.service.assignment(exp.id, "u1", tenant_id=world.tenant_id) == "fresh"
    assert await world.service.assignment(exp.id, "u2", tenant_id=world.tenant_id) is None  # not given yet
    with pytest.raises(NotFound) as caught:
        await world.service.assignment(exp.id, "u1", tenant_id="someone-else")
    assert caught.value.field == "experimentId"


async def test_user_hash_assignment_matches_the_variant_the_hash_picks(world):
    exp = await draft(world, variants=[{"name": "a", "weight": 1}, {"name": "b", "weight": 1}, {"name": "c"}])
    await world.service.start(exp.id, tenant_id=world.tenant_id)
    for user in (f"user-{i}" for i in range(50)):
        index = user_variant(exp, user)
        assert await world.service.assignment(exp.id, user, tenant_id=world.tenant_id) == exp.variants[index]["name"]


async def test_deleting_drops_outcomes_and_a_deleted_scenario_takes_its_experiments(world):
    one, two = await draft(world, trafficPercent=10), await draft(world, trafficPercent=10, trafficOffset=10)
    await world.service.delete(one.id, tenant_id=world.tenant_id)
    assert world.outcomes.dropped == [one.id]
    assert await world.service.get(one.id, tenant_id=world.tenant_id) is None
    await world.scenarios.delete(world.scenario.id, tenant_id=world.tenant_id)
    assert await world.service.get(two.id, tenant_id=world.tenant_id) is None
    assert world.outcomes.dropped == [one.id, two.id]
    assert world.invalidations.published[-1] == ("experiments", world.tenant_id, [world.scenario.id])


# --- the results subscription ------------------------------------------------------------------------------------


class ScriptedExperiments:
    """An ExperimentService fake whose reads follow a script of (status, users or None)."""

    def __init__(self, *states: tuple[str, int | None]) -> None:
        self.states = list(states)
        self.reads = 0

    async def get_or_raise(self, experiment_id: str, *, tenant_id: str, field: str = "id"):
        if tenant_id != "t1":
            raise NotFound(f"no experiment {experiment_id}", field=field)
        status, users = self.states[min(self.reads, len(self.states) - 1)]
        self.reads += 1
        return SimpleNamespace(id=experiment_id, status=status, users=users)

    async def results_of(self, exp):
        # computedAt moves on every read: only the figures decide whether to push.
        return None if exp.users is None else results(exp.users, frozen=exp.status == "STOPPED",
                                                      at=datetime.now(UTC))


def context(experiments, scope: Scope = Scope.GATEWAY) -> RequestContext:
    principal = Principal(tenant_id="t1", scope=scope, key_id="k1")
    return RequestContext(services=SimpleNamespace(experiments=experiments), principal=principal, loaders=None,
                          log=None, request_id="r1")


async def test_results_subscription_pushes_changes_only_and_ends_when_stopped():
    experiments = ScriptedExperiments(("DRAFT", None), ("RUNNING", 5), ("RUNNING", 5), ("RUNNING", 8),
                                      ("PAUSED", 8), ("STOPPED", 8), ("STOPPED", 9))
    pushed = [r async for r in experiment_results(context(experiments), id="x1", poll_s=0)]
    assert [(r.exposures[0].users, r.frozen) for r in pushed] == [(5, False), (8, False), (8, True)]
    assert experiments.reads == 6  # nothing read after the stopped experiment's results


async def test_results_subscription_checks_scope_and_tenant():
    with pytest.raises(Forbidden):
        await anext(experiment_results(context(ScriptedExperiments(("RUNNING", 1)), Scope.PUBLIC), id="x1", poll_s=0))
    other = RequestContext(services=SimpleNamespace(experiments=ScriptedExperiments(("RUNNING", 1))),
                           principal=Principal(tenant_id="t2", scope=Scope.ADMIN, key_id="k2"), loaders=None,
                           log=None, request_id="r2")
    with pytest.raises(NotFound):
        await anext(experiment_results(other, id="x1", poll_s=0))


def test_results_convert_to_graphql_with_products_split():
    converted = ResultsType.from_domain(results(10, frozen=True))
    assert [(e.variant, e.users) for e in converted.exposures] == [("control", 10), ("fresh", 10)]
    assert converted.srm.expected == [0.5, 0.5] and converted.frozen
    [row] = converted.metrics
    assert (row.metric, row.role, row.difference, row.p_value) == (ExperimentMetric.CTR, MetricRole.PRIMARY, 0.01, None)
    [stats] = converted.statistics
    assert [(s.component, s.value) for s in stats.sums] == [("clicks", 3.0)]
    assert [(p.a, p.b, p.value) for p in stats.products] == [("clicks", "impressions", 40.0)]
