"""Experiment types: the federation entity, its design inputs, its results and sufficient statistics, and plans."""

from __future__ import annotations

import dataclasses
import enum
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.scalars import JSON
from strawberry.utils.str_converters import to_camel_case

from domain.experiments import report
from domain.experiments.service import ExperimentPlan as PlanResult
from domain.scenarios.service import Page
from graph.types.common import PageInfo, total_count
from graph.types.model import ModelPin, ModelPinInput
from models.documents import Experiment as ExperimentDoc
from resolvers.experiments import experiment_results, get_experiment
from resolvers.scenarios import get_scenario

if TYPE_CHECKING:
    from graph.types.scenario import Scenario


@strawberry.enum(description="Where an experiment is in its life.")
class ExperimentStatus(enum.Enum):
    DRAFT = strawberry.enum_value("DRAFT", description="Being designed: it can change and serves nobody.")
    RUNNING = strawberry.enum_value("RUNNING", description="Assigning and exposing users; its method is locked.")
    PAUSED = strawberry.enum_value(
        "PAUSED", description="No new exposures: users get the scenario as is; assignments are kept.")
    STOPPED = strawberry.enum_value("STOPPED", description="Ended for good; its results are frozen.")


@strawberry.enum(description="How users are split among the variants.")
class Allocation(enum.Enum):
    USER_HASH = strawberry.enum_value("USER_HASH", description="A salted hash of the user picks a variant by weight.")
    THOMPSON = strawberry.enum_value(
        "THOMPSON", description="A bandit on the primary metric: new users follow the arms' current weights.")
    INTERLEAVE = strawberry.enum_value(
        "INTERLEAVE", description="Two variants' lists team-draft interleaved; clicks credit the variant that "
        "placed the item.")


@strawberry.enum(description="What an experiment measures, per exposed user.")
class ExperimentMetric(enum.Enum):
    CTR = strawberry.enum_value("CTR", description="Clicks / impressions (a ratio, delta method).")
    USER_CONVERSION = strawberry.enum_value(
        "USER_CONVERSION", description="Share of exposed users with an attributed PURCHASE.")
    WATCH_SECONDS = strawberry.enum_value("WATCH_SECONDS", description="Attributed seconds watched per user.")
    COMPLETION_RATE = strawberry.enum_value(
        "COMPLETION_RATE", description="Mean share of an item watched, over attributed WATCH events.")
    INTERACTIONS_PER_USER = strawberry.enum_value(
        "INTERACTIONS_PER_USER", description="Attributed interactions of any type per user.")
    LATENCY_MS = strawberry.enum_value("LATENCY_MS", description="Answer time per served list (lower is better).")
    EMPTY_RATE = strawberry.enum_value("EMPTY_RATE", description="Share of served lists left empty (lower is better).")


@strawberry.enum(description="Why a metric is in the results.")
class MetricRole(enum.Enum):
    PRIMARY = "PRIMARY"
    SECONDARY = "SECONDARY"
    GUARDRAIL = "GUARDRAIL"


@strawberry.type(description="One arm of an experiment; the first is the control.")
class ExperimentVariant:
    name: str
    weight: float
    config: JSON = strawberry.field(description="Overrides merged over the scenario's config for this variant.")
    model: ModelPin | None = strawberry.field(
        default=None, description="The model version it serves instead of the champion (null: the champion).")


@strawberry.type(description="A metric the treatment must not worsen by more than `margin` (relative).")
class Guardrail:
    metric: ExperimentMetric
    margin: float


@strawberry.type(description="THOMPSON: an arm's current share of new users.")
class ArmWeight:
    variant: str
    weight: float


@strawberry.type(description="Users exposed to one variant.")
class VariantExposure:
    variant: str
    users: int


@strawberry.type(description="Sample-ratio mismatch: a chi-square test of exposures against the planned weights.")
class SampleRatioCheck:
    p_value: float | None
    mismatch: bool = strawberry.field(description="True when p < 0.001: the split itself is broken.")
    expected: list[float] = strawberry.field(description="Each variant's planned share, in variant order.")


@strawberry.type(description="One metric of one variant against the control (the control's row has no difference).")
class MetricResult:
    metric: ExperimentMetric
    variant: str
    role: MetricRole
    users: int
    value: float | None
    control_value: float | None
    difference: float | None
    difference_lower: float | None
    difference_upper: float | None
    relative_difference: float | None
    relative_lower: float | None
    relative_upper: float | None
    p_value: float | None
    adjusted_p_value: float | None = strawberry.field(description="Holm-adjusted across the secondary metrics.")
    significant: bool | None
    method: str
    cuped: bool
    variance_reduction: float | None


@strawberry.type(description="A one-sided non-inferiority test of a guardrail.")
class GuardrailResult:
    metric: ExperimentMetric
    variant: str
    margin: float
    p_value: float | None
    passed: bool | None = strawberry.field(description="Null: not enough data to tell.")
    method: str


@strawberry.type(description="THOMPSON: an arm's posterior on the primary metric.")
class ArmPosterior:
    variant: str
    mean: float | None
    lower: float | None
    upper: float | None
    probability_best: float | None
    weight: float


@strawberry.type(description="INTERLEAVE: users whose clicks favoured each variant, and the test over them.")
class Preference:
    control_wins: int
    treatment_wins: int
    ties: int
    share: float | None
    lower: float | None
    upper: float | None
    p_value: float | None
    method: str


@strawberry.type(description="The sum of one outcome component over a variant's users.")
class ComponentSum:
    component: str
    value: float


@strawberry.type(description="The sum over a variant's users of the product of two components.")
class ComponentProduct:
    a: str
    b: str
    value: float


@strawberry.type(description="A variant's sufficient statistics: every figure can be recomputed from them.")
class VariantStatistics:
    variant: str
    n: int
    sums: list[ComponentSum]
    products: list[ComponentProduct]

    @classmethod
    def from_domain(cls, stats: report.VariantStatistics) -> VariantStatistics:
        """Convert one variant's sums ("a*b" product keys split in two)."""
        return cls(
            variant=stats.variant, n=stats.n,
            sums=[ComponentSum(component=k, value=v) for k, v in stats.sums.items()],
            products=[ComponentProduct(a=k.partition("*")[0], b=k.partition("*")[2], value=v)
                      for k, v in stats.products.items()],
        )


@strawberry.type(description="Exposures, the split's health, each metric's effect, and the sums behind them.")
class ExperimentResults:
    computed_at: datetime
    frozen: bool = strawberry.field(description="Computed when the experiment stopped, and kept.")
    exposures: list[VariantExposure]
    srm: SampleRatioCheck | None = strawberry.field(description="Null under THOMPSON and INTERLEAVE.")
    metrics: list[MetricResult]
    guardrails: list[GuardrailResult]
    arms: list[ArmPosterior]
    preference: Preference | None
    statistics: list[VariantStatistics]

    @classmethod
    def from_domain(cls, results: report.ExperimentResults) -> ExperimentResults:
        """Convert computed results."""
        srm = results.srm
        return cls(
            computed_at=results.computed_at, frozen=results.frozen,
            exposures=[VariantExposure(variant=e.variant, users=e.users) for e in results.exposures],
            srm=SampleRatioCheck(p_value=srm.p_value, mismatch=srm.mismatch, expected=list(srm.expected))
            if srm else None,
            metrics=[MetricResult(**_fields(m, metric=ExperimentMetric(m.metric), role=MetricRole(m.role)))
                     for m in results.metrics],
            guardrails=[GuardrailResult(**_fields(g, metric=ExperimentMetric(g.metric))) for g in results.guardrails],
            arms=[ArmPosterior(**_fields(a)) for a in results.arms],
            preference=Preference(**_fields(results.preference)) if results.preference else None,
            statistics=[VariantStatistics.from_domain(s) for s in results.statistics],
        )


def _fields(obj: Any, **overrides: Any) -> dict[str, Any]:
    """Return a slotted dataclass's fields as keyword arguments, some replaced."""
    return {**{name: getattr(obj, name) for name in obj.__slots__}, **overrides}


@strawberry.federation.type(keys=["id"], description="An A/B test of scenario variants.")
class Experiment:
    id: strawberry.ID
    scenario_id: strawberry.ID
    name: str
    hypothesis: str | None
    status: ExperimentStatus
    variants: list[ExperimentVariant]
    traffic_percent: float = strawberry.field(description="Share of the layer's users in the experiment (0-100).")
    traffic_offset: float = strawberry.field(description="Where its traffic starts among the layer's buckets.")
    layer: str = strawberry.field(description="Experiments of one layer never share a user.")
    allocation: Allocation
    primary_metric: ExperimentMetric
    secondary_metrics: list[ExperimentMetric]
    guardrails: list[Guardrail]
    alpha: float
    power: float
    minimum_detectable_effect: float | None = strawberry.field(description="Relative: 0.1 = a 10% lift.")
    sequential: bool = strawberry.field(description="Always-valid confidence sequences: look as often as you like.")
    cuped: bool
    arm_weights: list[ArmWeight] = strawberry.field(description="THOMPSON: the arms' current weights.")
    created_at: datetime
    started_at: datetime | None
    paused_at: datetime | None = strawberry.field(description="When it was paused, while PAUSED.")
    ended_at: datetime | None
    shipped_variant: str | None = strawberry.field(description="The variant whose config the stop shipped.")
    doc: strawberry.Private[ExperimentDoc]

    @strawberry.field(description="The scenario it tests.")
    async def scenario(self, info: strawberry.Info) -> Annotated["Scenario", strawberry.lazy("graph.types.scenario")] | None:
        from graph.types.scenario import Scenario  # noqa: PLC0415 - scenario.py lists experiments: a cycle at import

        doc = await get_scenario(info.context, id=self.scenario_id)
        return Scenario.from_domain(doc) if doc else None

    @strawberry.field(description="Null for a DRAFT; fresh while it runs; frozen once STOPPED.")
    async def results(self, info: strawberry.Info) -> ExperimentResults | None:
        found = await experiment_results(info.context, experiment=self.doc)
        return ExperimentResults.from_domain(found) if found else None

    @classmethod
    def from_domain(cls, doc: ExperimentDoc) -> Experiment:
        """Convert a stored experiment."""
        return cls(
            id=strawberry.ID(doc.id), scenario_id=strawberry.ID(doc.scenario_id), name=doc.name,
            hypothesis=doc.hypothesis, status=ExperimentStatus(doc.status),
            variants=[ExperimentVariant(name=v["name"], weight=v["weight"], config=v.get("config") or {},
                                        model=ModelPin.from_domain(v.get("model"))) for v in doc.variants],
            traffic_percent=doc.traffic_percent, traffic_offset=doc.traffic_offset, layer=doc.layer,
            allocation=Allocation(doc.allocation), primary_metric=ExperimentMetric(doc.primary_metric),
            secondary_metrics=[ExperimentMetric(m) for m in doc.secondary_metrics],
            guardrails=[Guardrail(metric=ExperimentMetric(g["metric"]), margin=g["margin"]) for g in doc.guardrails],
            alpha=doc.alpha, power=doc.power, minimum_detectable_effect=doc.minimum_detectable_effect,
            sequential=doc.sequential, cuped=doc.cuped,
            arm_weights=[ArmWeight(variant=k, weight=v) for k, v in doc.arm_weights.items()],
            created_at=doc.created_at, started_at=doc.started_at, paused_at=doc.paused_at, ended_at=doc.ended_at,
            shipped_variant=doc.shipped, doc=doc,
        )

    @classmethod
    async def resolve_reference(cls, info: strawberry.Info, id: strawberry.ID) -> Experiment | None:
        """Resolve a federation reference within the caller's tenant."""
        doc = await get_experiment(info.context, id=id)
        return cls.from_domain(doc) if doc else None


@strawberry.type
class ExperimentEdge:
    node: Experiment
    cursor: str


@strawberry.type
class ExperimentConnection:
    edges: list[ExperimentEdge]
    page_info: PageInfo
    page: strawberry.Private[Page]

    @strawberry.field(description="How many match, across all pages (counted on request).")
    async def total_count(self) -> int:
        return await total_count(self.page)

    @classmethod
    def from_domain(cls, page: Page) -> ExperimentConnection:
        """Convert a page of experiments."""
        edges = [ExperimentEdge(node=Experiment.from_domain(n), cursor=c) for n, c in zip(page.nodes, page.cursors)]
        info = PageInfo(has_next_page=page.has_next, end_cursor=page.cursors[-1] if edges else None)
        return cls(edges=edges, page_info=info, page=page)


@strawberry.type(description="How many users an experiment needs, and how long the scenario's traffic takes.")
class ExperimentPlan:
    users_per_variant: int
    total_users: int
    expected_days: float | None = strawberry.field(
        description="From the scenario's distinct users over the last 7 days; null without scenarioId or traffic.")

    @classmethod
    def from_domain(cls, plan: PlanResult) -> ExperimentPlan:
        """Convert a sample-size plan."""
        return cls(users_per_variant=plan.users_per_variant, total_users=plan.total_users,
                   expected_days=plan.expected_days)


@strawberry.input(description="One arm; the first variant is the control.")
class VariantInput:
    name: str
    weight: float = strawberry.field(default=1.0, description="Relative share of the traffic (>= 0).")
    config: JSON | None = strawberry.field(
        default=None, description="Overrides merged over the scenario's config, validated like a scenario config.")
    model: ModelPinInput | None = strawberry.field(
        default=None, description="Serve this model version of the scenario instead of its champion.")

    def to_domain(self) -> dict[str, Any]:
        """Return the variant as the domain reads it."""
        pin = {"model": self.model.to_domain()} if self.model is not None else {}
        return {"name": self.name, "weight": self.weight, "config": self.config, **pin}


@strawberry.input(description="A metric the treatment must not worsen by more than `margin` (relative, > 0).")
class GuardrailInput:
    metric: ExperimentMetric
    margin: float

    def to_domain(self) -> dict[str, Any]:
        """Return the guardrail as the domain reads it."""
        return {"metric": self.metric.value, "margin": self.margin}


@strawberry.input
class CreateExperimentInput:
    scenario_id: strawberry.ID
    name: str
    variants: list[VariantInput] = strawberry.field(description="At least 2; the first is the control.")
    primary_metric: ExperimentMetric
    hypothesis: str | None = None
    traffic_percent: float = strawberry.field(default=100.0, description="0-100 percent of the layer's users.")
    traffic_offset: float = strawberry.field(
        default=0.0, description="Where the traffic starts in the layer (offset + percent <= 100).")
    layer: str | None = strawberry.field(default=None, description="Default: the scenario's own layer.")
    allocation: Allocation = Allocation.USER_HASH
    secondary_metrics: list[ExperimentMetric] = strawberry.field(default_factory=list)
    guardrails: list[GuardrailInput] = strawberry.field(default_factory=list)
    alpha: float = 0.05
    power: float = 0.8
    minimum_detectable_effect: float | None = strawberry.field(default=None, description="Relative: 0.1 = +10%.")
    sequential: bool = True
    cuped: bool = True

    def to_domain(self) -> dict[str, Any]:
        """Return the design as the domain reads it (the GraphQL names, so errors name the field sent)."""
        return _design(self)


@strawberry.input(description="Changes to a DRAFT's design; a field left out is kept, null takes its default.")
class UpdateExperimentInput:
    name: str | None = strawberry.UNSET
    hypothesis: str | None = strawberry.UNSET
    variants: list[VariantInput] | None = strawberry.UNSET
    primary_metric: ExperimentMetric | None = strawberry.UNSET
    traffic_percent: float | None = strawberry.UNSET
    traffic_offset: float | None = strawberry.UNSET
    layer: str | None = strawberry.UNSET
    allocation: Allocation | None = strawberry.UNSET
    secondary_metrics: list[ExperimentMetric] | None = strawberry.UNSET
    guardrails: list[GuardrailInput] | None = strawberry.UNSET
    alpha: float | None = strawberry.UNSET
    power: float | None = strawberry.UNSET
    minimum_detectable_effect: float | None = strawberry.UNSET
    sequential: bool | None = strawberry.UNSET
    cuped: bool | None = strawberry.UNSET

    def to_domain(self) -> dict[str, Any]:
        """Return the fields given, as the domain reads them."""
        return _design(self)


def _design(given: CreateExperimentInput | UpdateExperimentInput) -> dict[str, Any]:
    """Return the given fields under their GraphQL names, enums as their values, inputs as plain dicts."""
    values = ((to_camel_case(f.name), getattr(given, f.name)) for f in dataclasses.fields(given))
    return {name: _plain(value) for name, value in values if value is not strawberry.UNSET}


def _plain(value: Any) -> Any:
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (VariantInput, GuardrailInput)):
        return value.to_domain()
    return value
