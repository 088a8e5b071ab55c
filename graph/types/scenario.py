"""Scenario types and inputs."""

from __future__ import annotations

import enum
from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from domain.scenarios.service import Page, ScenarioStats
from graph.types.common import total_count, PageInfo, ScenarioTemplate
from graph.types.experiment import ExperimentConnection, ExperimentStatus
from graph.types.model import ModelVersion
from models.documents import Scenario as ScenarioDoc
from models.documents import ScenarioConfigVersion as ScenarioConfigVersionDoc
from resolvers.experiments import list_experiments
from resolvers.models import list_models
from resolvers.scenarios import get_scenario, scenario_config_versions, scenario_stats


@strawberry.enum(description="How a config version came to be.")
class ConfigOrigin(enum.Enum):
    CREATED = "CREATED"
    UPDATED = "UPDATED"
    SHIPPED = strawberry.enum_value("SHIPPED", description="An experiment's variant shipped when it stopped.")
    ROLLED_BACK = strawberry.enum_value("ROLLED_BACK", description="An earlier version made current again.")
    RECORDED = strawberry.enum_value(
        "RECORDED", description="Found in place: the config a scenario had before its history was kept.")


@strawberry.type(description="One version of a scenario's config: the whole config as it was set, and how.")
class ScenarioConfigVersion:
    version: int
    config: JSON
    created_at: datetime
    origin: ConfigOrigin
    origin_ref: str | None = strawberry.field(
        description="The experiment whose variant shipped (SHIPPED), or the version rolled back to (ROLLED_BACK).")
    key_id: str | None = strawberry.field(description="The API key that made the change (null when RECORDED).")
    changed: list[str] = strawberry.field(
        description="The config paths that differ from the previous version, e.g. `recall[1].weight`.")

    @classmethod
    def from_domain(cls, doc: ScenarioConfigVersionDoc) -> ScenarioConfigVersion:
        """Convert a stored version."""
        return cls(version=doc.version, config=doc.config, created_at=doc.created_at, origin=ConfigOrigin(doc.origin),
                   origin_ref=doc.origin_ref, key_id=doc.key_id, changed=list(doc.changed))


@strawberry.type(name="ScenarioStats")
class ScenarioStatsType:
    items: int
    interactions: int

    @classmethod
    def from_domain(cls, stats: ScenarioStats) -> ScenarioStatsType:
        """Convert scenario counts."""
        return cls(items=stats.items, interactions=stats.interactions)


@strawberry.federation.type(keys=["id"], description="A configured recommendation surface (a feed, a shop page).")
class Scenario:
    id: strawberry.ID
    name: str
    template: ScenarioTemplate
    config: JSON
    config_version: int
    created_at: datetime
    updated_at: datetime

    @strawberry.field(description="What the scenario holds now.")
    async def stats(self, info: strawberry.Info) -> ScenarioStatsType:
        return ScenarioStatsType.from_domain(await scenario_stats(info.context, id=self.id))

    @strawberry.field(description="The scenario's config versions, newest first (admin keys only).")
    async def config_versions(self, info: strawberry.Info, first: int | None = 20) -> list[ScenarioConfigVersion]:
        docs = await scenario_config_versions(info.context, scenario_id=self.id, first=first)
        return [ScenarioConfigVersion.from_domain(d) for d in docs]

    @strawberry.field(description="The scenario's experiments, newest first, optionally of one status.")
    async def experiments(
        self, info: strawberry.Info, status: ExperimentStatus | None = None, first: int | None = 20,
        after: str | None = None,
    ) -> ExperimentConnection:
        page = await list_experiments(info.context, scenario_id=self.id, status=status.value if status else None,
                                      first=first, after=after)
        return ExperimentConnection.from_domain(page)

    @strawberry.field(description="The scenario's model versions of every kind, newest first (at most 50); the "
                      "`champion` of each kind serves.")
    async def models(self, info: strawberry.Info, first: int | None = 20) -> list[ModelVersion]:
        return [ModelVersion.from_domain(d) for d in await list_models(info.context, scenario_id=self.id, first=first)]

    @classmethod
    def from_domain(cls, doc: ScenarioDoc) -> Scenario:
        """Convert a stored scenario."""
        return cls(
            id=strawberry.ID(doc.id), name=doc.name, template=ScenarioTemplate(doc.template), config=doc.config,
            config_version=doc.config_version, created_at=doc.created_at, updated_at=doc.updated_at,
        )

    @classmethod
    async def resolve_reference(cls, info: strawberry.Info, id: strawberry.ID) -> Scenario | None:
        """Resolve a federation reference within the caller's tenant."""
        doc = await get_scenario(info.context, id=id)
        return cls.from_domain(doc) if doc else None


@strawberry.type
class ScenarioEdge:
    node: Scenario
    cursor: str


@strawberry.type
class ScenarioConnection:
    edges: list[ScenarioEdge]
    page_info: PageInfo
    page: strawberry.Private[Page]

    @strawberry.field(description="How many match, across all pages (counted on request).")
    async def total_count(self) -> int:
        return await total_count(self.page)

    @classmethod
    def from_domain(cls, page: Page) -> ScenarioConnection:
        """Convert a page of scenarios."""
        edges = [ScenarioEdge(node=Scenario.from_domain(n), cursor=c) for n, c in zip(page.nodes, page.cursors)]
        info = PageInfo(has_next_page=page.has_next, end_cursor=page.cursors[-1] if edges else None)
        return cls(edges=edges, page_info=info, page=page)


@strawberry.input
class CreateScenarioInput:
    name: str
    template: ScenarioTemplate = ScenarioTemplate.CUSTOM
    config: JSON | None = strawberry.field(
        default=None, description="Merged over the template (objects merge, lists replace); see scenarioConfigSchema."
    )


@strawberry.input
class UpdateScenarioInput:
    name: str | None = None
    config: JSON | None = strawberry.field(
        default=None, description="Merged over the current config; a change becomes the next configVersion."
    )
