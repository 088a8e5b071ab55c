"""The GraphQL schema: root fields, each one line that calls a resolver and converts its result."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from datetime import datetime
from typing import Annotated

import structlog
import strawberry
from graphql import GraphQLError
from strawberry.extensions import (
    MaxAliasesLimiter, MaxTokensLimiter, ParserCache, QueryDepthLimiter, SchemaExtension, ValidationCache,
)
from strawberry.scalars import JSON
from strawberry.types import ExecutionContext

from domain.errors import DomainError
from domain.tenancy import Scope
from graph.input_errors import mark_input_error
from graph.types.analytics import AnalyticsGranularity, AnalyticsRefresh, AnalyticsSeries, AudienceStats, CatalogueStats
from graph.types.apikey import ApiKey, NewApiKey
from graph.types.audit import AuditEntryConnection
from graph.types.common import ApiKeyScope
from graph.types.deadletter import DeadLetterConnection
from graph.types.health import SystemHealth
from graph.types.experiment import (
    CreateExperimentInput, Experiment, ExperimentConnection, ExperimentMetric, ExperimentPlan, ExperimentResults,
    ExperimentStatus, UpdateExperimentInput,
)
from graph.types.interaction import IngestResult, InteractionInput
from graph.types.item import Item, ItemConnection, ItemFilter, ItemInput, UpsertItemsResult
from graph.types.job import Job, JobConnection, JobKind, JobStatus
from graph.types.metrics import MetricsSnapshot, MetricsWindow, domain_window
from graph.types.model import ModelVersion
from graph.types.profile import User, UserProfile, load_profile
from graph.types.recommendation import RecommendationList
from graph.types.scenario import CreateScenarioInput, Scenario, ScenarioConnection, UpdateScenarioInput
from resolvers import audit, experiments, interactions, jobs, keys, recommendations, scenarios, subscriptions
from resolvers import analytics, deadletters
from resolvers import health
from resolvers import models as registry
from resolvers import metrics as live
from resolvers import items as catalogue

log = structlog.get_logger()
From = Annotated[datetime, strawberry.argument(name="from", description="Range start (inclusive, UTC).")]
To = Annotated[datetime, strawberry.argument(description="Range end (exclusive); at most 92 days after `from`.")]


@strawberry.type
class Query:
    @strawberry.field(description="One of your scenarios, or null.")
    async def scenario(self, info: strawberry.Info, id: strawberry.ID) -> Scenario | None:
        doc = await scenarios.get_scenario(info.context, id=id)
        return Scenario.from_domain(doc) if doc else None

    @strawberry.field(description="Your scenarios, oldest first.")
    async def scenarios(self, info: strawberry.Info, first: int | None = 20, after: str | None = None) -> ScenarioConnection:
        return ScenarioConnection.from_domain(await scenarios.list_scenarios(info.context, first=first, after=after))

    @strawberry.field(description="One of your items by its id, or null.")
    async def item(self, info: strawberry.Info, id: strawberry.ID) -> Item | None:
        doc = await catalogue.get_item(info.context, id=id)
        return Item.from_domain(doc) if doc else None

    @strawberry.field(description="A scenario's items ordered by id.")
    async def items(
        self, info: strawberry.Info, scenario_id: strawberry.ID, filter: ItemFilter | None = None,
        first: int | None = 20, after: str | None = None,
    ) -> ItemConnection:
        page = await catalogue.list_items(
            info.context, scenario_id=scenario_id, filters=filter.to_domain() if filter else None, first=first, after=after
        )
        return ItemConnection.from_domain(page)

    @strawberry.field(description="A user's profile, or null for a user never seen.")
    async def profile(self, info: strawberry.Info, user_id: strawberry.ID) -> UserProfile | None:
        return await load_profile(info, str(user_id))

    @strawberry.field(description="The JSON Schema that scenario configs are validated against.")
    async def scenario_config_schema(self, info: strawberry.Info) -> JSON:
        return await scenarios.scenario_config_schema(info.context)

    @strawberry.field(description="A user's recommendations in a scenario; an unknown user gets cold-start items.")
    async def recommendations(
        self, info: strawberry.Info, scenario_id: strawberry.ID, user_id: strawberry.ID, first: int | None = 20,
        after: str | None = None, context: JSON | None = None, exclude_seen: bool = True, debug: bool = False,
    ) -> RecommendationList:
        page = await recommendations.recommend(
            info.context, scenario_id=scenario_id, user_id=user_id, first=first, after=after, context=context,
            exclude_seen=exclude_seen, debug=debug,
        )
        return RecommendationList.from_domain(page)

    @strawberry.field(description="Items similar to an item, within a scenario.")
    async def similar_items(
        self, info: strawberry.Info, scenario_id: strawberry.ID, item_id: strawberry.ID, first: int | None = 20
    ) -> RecommendationList:
        page = await recommendations.similar_items(info.context, scenario_id=scenario_id, item_id=item_id, first=first)
        return RecommendationList.from_domain(page)

    @strawberry.field(description="Your tenant's live API keys (admin).")
    async def api_keys(self, info: strawberry.Info) -> list[ApiKey]:
        return [ApiKey.from_domain(k) for k in await keys.list_keys(info.context)]

    @strawberry.field(description="Your tenant's admin mutations, newest first (admin): key, operation, arguments "
                      "digest, time, outcome.")
    async def audit_log(self, info: strawberry.Info, first: int | None = 20, after: str | None = None) -> AuditEntryConnection:
        return AuditEntryConnection.from_domain(await audit.audit_log(info.context, first=first, after=after))

    @strawberry.field(description="One of your jobs (e.g. a training started by trainScenario), or null.")
    async def job(self, info: strawberry.Info, id: strawberry.ID) -> Job | None:
        doc = await jobs.get_job(info.context, id=id)
        return Job.from_domain(doc) if doc else None

    @strawberry.field(description="Your jobs, newest first, optionally of one scenario, status or kind.")
    async def jobs(
        self, info: strawberry.Info, scenario_id: strawberry.ID | None = None, status: JobStatus | None = None,
        kind: JobKind | None = None, first: int | None = 20, after: str | None = None,
    ) -> JobConnection:
        page = await jobs.list_jobs(
            info.context, scenario_id=scenario_id, status=status.value if status else None,
            kind=kind.value if kind else None, first=first, after=after,
        )
        return JobConnection.from_domain(page)

    @strawberry.field(description="Events and served pages the consumer gave up on, oldest first (admin).")
    async def dead_letters(self, info: strawberry.Info, first: int | None = 20, after: str | None = None) -> DeadLetterConnection:
        return DeadLetterConnection.from_domain(await deadletters.list_dead_letters(info.context, first=first, after=after))

    @strawberry.field(description="Each store's state and latency, and your tenant's consumer lag, dead letters, jobs "
                      "and serving models (admin); a store that is down is reported, never an error.")
    async def system_health(self, info: strawberry.Info) -> SystemHealth:
        return SystemHealth.from_domain(await health.system_health(info.context))

    @strawberry.field(description="A scenario's live metrics over a sliding window ending now (default: the last hour).")
    async def metrics(
        self, info: strawberry.Info, scenario_id: strawberry.ID, window: MetricsWindow | None = MetricsWindow.HOUR
    ) -> MetricsSnapshot:
        snapshot = await live.metrics_snapshot(info.context, scenario_id=scenario_id, window=domain_window(window))
        return MetricsSnapshot.from_domain(snapshot)

    @strawberry.field(description="A scenario's counters per hour or day over [from, to), by event time, from the "
                      "rollups (admin).")
    async def analytics(
        self, info: strawberry.Info, scenario_id: strawberry.ID, from_: From, to: To,
        granularity: AnalyticsGranularity = AnalyticsGranularity.DAY,
    ) -> AnalyticsSeries:
        return AnalyticsSeries.from_domain(await analytics.analytics_series(
            info.context, scenario_id=scenario_id, start=from_, end=to, granularity=granularity.to_domain()))

    @strawberry.field(description="Catalogue coverage, concentration (Gini) and the top items and categories of a "
                      "scenario over the UTC days of [from, to) (admin).")
    async def catalogue_stats(
        self, info: strawberry.Info, scenario_id: strawberry.ID, from_: From, to: To, first: int = 10,
        min_impressions: int = 20,
    ) -> CatalogueStats:
        return CatalogueStats.from_domain(await analytics.catalogue_stats(
            info.context, scenario_id=scenario_id, start=from_, end=to, first=first, min_impressions=min_impressions))

    @strawberry.field(description="Events per user, weekly retention cohorts and CTR by list position and recall "
                      "source of a scenario over the UTC days of [from, to) (admin).")
    async def audience_stats(
        self, info: strawberry.Info, scenario_id: strawberry.ID, from_: From, to: To
    ) -> AudienceStats:
        return AudienceStats.from_domain(await analytics.audience_stats(info.context, scenario_id=scenario_id,
                                                                        start=from_, end=to))

    @strawberry.field(description="One of your experiments, or null.")
    async def experiment(self, info: strawberry.Info, id: strawberry.ID) -> Experiment | None:
        doc = await experiments.get_experiment(info.context, id=id)
        return Experiment.from_domain(doc) if doc else None

    @strawberry.field(description="Your experiments, newest first, optionally of one scenario and status.")
    async def experiments(
        self, info: strawberry.Info, scenario_id: strawberry.ID | None = None, status: ExperimentStatus | None = None,
        first: int | None = 20, after: str | None = None,
    ) -> ExperimentConnection:
        page = await experiments.list_experiments(
            info.context, scenario_id=scenario_id, status=status.value if status else None, first=first, after=after
        )
        return ExperimentConnection.from_domain(page)

    @strawberry.field(description="The variant a user has or would get in a RUNNING or PAUSED experiment (null "
                      "outside its traffic); reads only: it neither assigns nor exposes.")
    async def experiment_assignment(
        self, info: strawberry.Info, experiment_id: strawberry.ID, user_id: strawberry.ID
    ) -> str | None:
        return await experiments.experiment_assignment(info.context, experiment_id=experiment_id, user_id=user_id)

    @strawberry.field(description="Users needed to detect a relative lift `minimumDetectableEffect` of `baseline` "
                      "(a rate, or a mean with `baselineStdDev`); days from the scenario's recent traffic.")
    async def experiment_plan(
        self, info: strawberry.Info, metric: ExperimentMetric, baseline: float, baseline_std_dev: float | None = None,
        *, minimum_detectable_effect: float, alpha: float | None = 0.05, power: float | None = 0.8,
        variants: int | None = 2, scenario_id: strawberry.ID | None = None,
    ) -> ExperimentPlan:
        plan = await experiments.experiment_plan(
            info.context, metric=metric.value, baseline=baseline, baseline_sd=baseline_std_dev,
            mde=minimum_detectable_effect, alpha=alpha, power=power, variants=variants, scenario_id=scenario_id,
        )
        return ExperimentPlan.from_domain(plan)


@strawberry.type
class Mutation:
    @strawberry.mutation(description="Send dead letters (all when ids is null) through the consumer again and remove "
                         "them from the dead letters; returns how many (admin).")
    async def replay_dead_letters(self, info: strawberry.Info, ids: list[strawberry.ID] | None = None) -> int:
        return await deadletters.replay_dead_letters(info.context, ids=ids)

    @strawberry.mutation(description="Roll up your new events and served pages into the analytics now (at most ~20 s; "
                         "the periodic pass finishes what is left); with from and to, first recompute every hour "
                         "of that range, of one scenario or of all (admin).")
    async def refresh_analytics(
        self, info: strawberry.Info, scenario_id: strawberry.ID | None = None,
        from_: Annotated[datetime | None, strawberry.argument(name="from")] = None, to: datetime | None = None,
    ) -> AnalyticsRefresh:
        return AnalyticsRefresh.from_domain(await analytics.refresh_analytics(
            info.context, scenario_id=scenario_id, start=from_, end=to))

    @strawberry.mutation(description="Create a scenario from a template, with config merged over it.")
    async def create_scenario(self, info: strawberry.Info, input: CreateScenarioInput) -> Scenario:
        doc = await scenarios.create_scenario(
            info.context, name=input.name, template=input.template.value, config=input.config
        )
        return Scenario.from_domain(doc)

    @strawberry.mutation(description="Rename a scenario or change its config (validated). A config that differs from "
                         "the current one becomes the next configVersion, kept in `configVersions`.")
    async def update_scenario(self, info: strawberry.Info, id: strawberry.ID, input: UpdateScenarioInput) -> Scenario:
        doc = await scenarios.update_scenario(info.context, id=id, name=input.name, config=input.config)
        return Scenario.from_domain(doc)

    @strawberry.mutation(description="Make an earlier config version the scenario's config again. It is recorded as a "
                         "new version (ROLLED_BACK), so the history only grows; nothing changes if it is the current "
                         "config already.")
    async def roll_back_scenario_config(self, info: strawberry.Info, id: strawberry.ID, version: int) -> Scenario:
        doc = await scenarios.roll_back_scenario_config(info.context, id=id, version=version)
        return Scenario.from_domain(doc)

    @strawberry.mutation(description="Delete a scenario, its interactions, and items that served it alone.")
    async def delete_scenario(self, info: strawberry.Info, id: strawberry.ID) -> bool:
        return await scenarios.delete_scenario(info.context, id=id)

    @strawberry.mutation(description="Create a DRAFT experiment of a scenario's variants.")
    async def create_experiment(self, info: strawberry.Info, input: CreateExperimentInput) -> Experiment:
        return Experiment.from_domain(await experiments.create_experiment(info.context, input=input.to_domain()))

    @strawberry.mutation(description="Change a DRAFT experiment's design (BAD_USER_INPUT once it started).")
    async def update_experiment(self, info: strawberry.Info, id: strawberry.ID, input: UpdateExperimentInput) -> Experiment:
        return Experiment.from_domain(await experiments.update_experiment(info.context, id=id, input=input.to_domain()))

    @strawberry.mutation(description="Start a DRAFT (its method is locked) or resume a PAUSED experiment.")
    async def start_experiment(self, info: strawberry.Info, id: strawberry.ID) -> Experiment:
        return Experiment.from_domain(await experiments.start_experiment(info.context, id=id))

    @strawberry.mutation(description="Pause a RUNNING experiment: no new exposures, assignments kept.")
    async def pause_experiment(self, info: strawberry.Info, id: strawberry.ID) -> Experiment:
        return Experiment.from_domain(await experiments.pause_experiment(info.context, id=id))

    @strawberry.mutation(description="Stop an experiment for good and freeze its results; `ship` names the variant "
                         "whose config becomes the scenario's (a new config version).")
    async def stop_experiment(self, info: strawberry.Info, id: strawberry.ID, ship: str | None = None) -> Experiment:
        return Experiment.from_domain(await experiments.stop_experiment(info.context, id=id, ship=ship))

    @strawberry.mutation(description="Delete an experiment and its outcomes; returns it as it was.")
    async def delete_experiment(self, info: strawberry.Info, id: strawberry.ID) -> Experiment:
        return Experiment.from_domain(await experiments.delete_experiment(info.context, id=id))

    @strawberry.mutation(description="Insert or update up to 5,000 items under a scenario, idempotent by id.")
    async def upsert_items(self, info: strawberry.Info, scenario_id: strawberry.ID, items: list[ItemInput]) -> UpsertItemsResult:
        result = await catalogue.upsert_items(
            info.context, scenario_id=scenario_id, items=[i.to_domain() for i in items]
        )
        return UpsertItemsResult.from_domain(result)

    @strawberry.mutation(description="Remove items from a scenario; returns how many were removed.")
    async def delete_items(self, info: strawberry.Info, scenario_id: strawberry.ID, ids: list[strawberry.ID]) -> int:
        return await catalogue.delete_items(info.context, scenario_id=scenario_id, ids=[str(i) for i in ids])

    @strawberry.mutation(description="Record up to 5,000 interactions; each is accepted or refused on its own.")
    async def record_interactions(self, info: strawberry.Info, events: list[InteractionInput]) -> IngestResult:
        result = await interactions.record_interactions(info.context, events=[e.to_domain() for e in events])
        return IngestResult.from_domain(result)

    @strawberry.mutation(description="Erase a user's interactions, profile and cached state; returns records removed.")
    async def delete_user_data(self, info: strawberry.Info, user_id: strawberry.ID) -> int:
        return await interactions.delete_user_data(info.context, user_id=str(user_id))

    @strawberry.mutation(description="Queue a (re)training of what the scenario uses (or return the queued/running one).")
    async def train_scenario(self, info: strawberry.Info, scenario_id: strawberry.ID) -> Job:
        return Job.from_domain(await jobs.train_scenario(info.context, scenario_id=scenario_id))

    @strawberry.mutation(description="Queue a job of one kind for a scenario (or return the queued/running one).")
    async def run_job(self, info: strawberry.Info, scenario_id: strawberry.ID, kind: JobKind) -> Job:
        return Job.from_domain(await jobs.run_job(info.context, scenario_id=scenario_id, kind=kind.value))

    @strawberry.mutation(description="Cancel a QUEUED job (it never runs) or a RUNNING one (its worker stops it).")
    async def cancel_job(self, info: strawberry.Info, id: strawberry.ID) -> Job:
        return Job.from_domain(await jobs.cancel_job(info.context, id=id))

    @strawberry.mutation(
        description="Create an API key for your tenant; the secret is returned once. `expiresAt`: the key stops "
        "working then. `requireUserToken` (public keys): it serves and records only for the user a valid "
        "`X-User-Token` names."
    )
    async def create_api_key(
        self, info: strawberry.Info, scope: ApiKeyScope, expires_at: datetime | None = None,
        require_user_token: bool = False,
    ) -> NewApiKey:
        new = await keys.create_key(
            info.context, scope=Scope(scope.value), expires_at=expires_at, require_user_token=require_user_token
        )
        return NewApiKey.from_domain(new)

    @strawberry.mutation(
        description="Create or replace your tenant's user-signing secret (HMAC-SHA256 key of `X-User-Token`s) and "
        "return it, this once; tokens signed with the old one stop working."
    )
    async def rotate_user_signing_secret(self, info: strawberry.Info) -> str:
        return await keys.rotate_signing_secret(info.context)

    @strawberry.mutation(description="Make a model version (READY or RETIRED, with its artifact) its kind's champion: "
                         "every serving process loads it, then serves it; the champion it replaces retires.")
    async def promote_model(self, info: strawberry.Info, id: strawberry.ID) -> ModelVersion:
        return ModelVersion.from_domain(await registry.promote_model(info.context, id=id))

    @strawberry.mutation(description="Serve again the champion that the current one of `kind` replaced (one step "
                         "back per call); BAD_USER_INPUT when none can still serve.")
    async def rollback_model(self, info: strawberry.Info, scenario_id: strawberry.ID, kind: str = "scenario") -> ModelVersion:
        return ModelVersion.from_domain(await registry.rollback_model(info.context, scenario_id=scenario_id, kind=kind))

    @strawberry.mutation(description="Revoke an API key of your tenant.")
    async def revoke_api_key(self, info: strawberry.Info, id: strawberry.ID) -> bool:
        return await keys.revoke_key(info.context, id=id)

    @strawberry.mutation(description="Replace an API key by a new one of the same scope and revoke the old one.")
    async def rotate_api_key(self, info: strawberry.Info, id: strawberry.ID) -> NewApiKey:
        return NewApiKey.from_domain(await keys.rotate_key(info.context, id=id))


@strawberry.type
class Subscription:
    @strawberry.subscription(
        description="A scenario's live metrics: a snapshot at once, then at most one a second while events arrive."
    )
    async def metrics(
        self, info: strawberry.Info, scenario_id: strawberry.ID, window: MetricsWindow | None = MetricsWindow.HOUR
    ) -> AsyncGenerator[MetricsSnapshot, None]:
        async for snapshot in subscriptions.metrics(info.context, scenario_id=scenario_id, window=domain_window(window)):
            yield MetricsSnapshot.from_domain(snapshot)

    @strawberry.subscription(description="One of your jobs at once, then on each change; completes when it ends.")
    async def job_progress(self, info: strawberry.Info, id: strawberry.ID) -> AsyncGenerator[Job, None]:
        async for doc in subscriptions.job_progress(info.context, id=id):
            yield Job.from_domain(doc)

    @strawberry.subscription(description="An experiment's results at once, then at most every 2 s while its figures "
                             "change; completes after the frozen results of a stopped experiment.")
    async def experiment_results(self, info: strawberry.Info, id: strawberry.ID) -> AsyncGenerator[ExperimentResults, None]:
        async for results in subscriptions.experiment_results(info.context, id=id):
            yield ExperimentResults.from_domain(results)


def guard_extensions(*, max_depth: int = 12, max_tokens: int = 5000, max_aliases: int = 30) -> list[SchemaExtension]:
    """Return the parser/validation caches and the query guards."""
    return [
        ParserCache(maxsize=1024),
        ValidationCache(maxsize=1024),
        QueryDepthLimiter(max_depth=max_depth),
        MaxTokensLimiter(max_token_count=max_tokens),
        MaxAliasesLimiter(max_alias_count=max_aliases),
    ]


class RecographSchema(strawberry.federation.Schema):
    """Federation schema that logs refusals (bad input, auth) briefly and only real failures with tracebacks."""

    def process_errors(self, errors: list[GraphQLError], execution_context: ExecutionContext | None = None) -> None:
        document = execution_context.graphql_document if execution_context is not None else None
        unexpected = []
        for error in errors:
            # graphql-core's own refusals of an input value become BAD_USER_INPUT with the field path, like ours.
            if isinstance(error.original_error, DomainError) or mark_input_error(error, document):
                log.info("graphql.refused", code=(error.extensions or {}).get("code"), message=error.message,
                         path=error.path)
            else:
                unexpected.append(error)
        if unexpected:
            super().process_errors(unexpected, execution_context)


def build_schema(extensions: Sequence[SchemaExtension | type[SchemaExtension]] = ()) -> strawberry.federation.Schema:
    """Return the federation v2 schema with the given extensions."""
    return RecographSchema(
        query=Query, mutation=Mutation, subscription=Subscription, types=[User, Item, Scenario, Experiment],
        extensions=list(extensions),
        federation_version="2.7",
    )


# For `strawberry export-schema graph.schema:schema`; the app builds its own with the configured guards.
schema = build_schema(guard_extensions())
