"""Model registry types: a scenario's model versions, their status and aliases, and experiment variants' pins."""

from __future__ import annotations

import enum
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any

import strawberry
from strawberry.scalars import JSON

from models.documents import ModelVersion as ModelVersionDoc
from resolvers.scenarios import get_scenario

if TYPE_CHECKING:
    from graph.types.scenario import Scenario


@strawberry.enum(description="Where a model version is in its life.")
class ModelStatus(enum.Enum):
    TRAINING = strawberry.enum_value("TRAINING", description="Being trained: its artifact is being written.")
    READY = strawberry.enum_value(
        "READY", description="Trained and kept: the `champion` serves, the `challenger` waits for a promotion.")
    FAILED = strawberry.enum_value("FAILED", description="Its training failed; it has no artifact.")
    RETIRED = strawberry.enum_value(
        "RETIRED", description="Holds no alias any more; the newest few keep their artifact (promote or roll back "
        "to them), older ones lose it.")


@strawberry.type(description="One trained model of a scenario, of one kind (`scenario`: the classical models the "
                 "scenario's config uses, trained together).")
class ModelVersion:
    id: strawberry.ID
    kind: str
    version: int = strawberry.field(description="Numbered 1, 2, ... per scenario and kind.")
    status: ModelStatus
    aliases: list[str] = strawberry.field(
        description="`champion` (serves the scenario) and `challenger` (the newest version that did not beat the "
        "champion by the scenario's `models.promotionMargin`); each held by one version of a kind at most.")
    metrics: JSON = strawberry.field(
        description="What its training measured: counts, seconds per stage, `model_bytes`, and the validation "
        "figures the models compute (e.g. `ndcg@10`, `recall@20`, `coverage`) when they do.")
    trained_at: datetime | None = strawberry.field(description="When its artifact was complete.")
    training_seconds: float | None = strawberry.field(description="Time spent fitting, in the training process.")
    device: str | None = strawberry.field(description="Where it was trained: `cpu` or `cuda`.")
    size_bytes: float | None = strawberry.field(description="Its size in memory, in bytes (a Float: it may pass "
                                                "Int's 2^31).")
    config: JSON = strawberry.field(
        description="What it was trained with: the scenario config version and sections training reads, and under "
        "`fitted` what training fitted on its validation slice (`models.tune`): the recall `weights` served, each "
        "source's `params`, which pipeline was `chosen` (`config`, `fitted` or `single:<source>`) and the "
        "NDCG@10 of each candidate `pipelines` and source alone (`sources`).")
    scenario_id: strawberry.Private[str]

    @strawberry.field(description="The scenario it serves (null once deleted).")
    async def scenario(
        self, info: strawberry.Info
    ) -> Annotated["Scenario", strawberry.lazy("graph.types.scenario")] | None:
        from graph.types.scenario import Scenario  # noqa: PLC0415 - scenario.py lists models: a cycle at import

        doc = await get_scenario(info.context, id=self.scenario_id)
        return Scenario.from_domain(doc) if doc else None

    @classmethod
    def from_domain(cls, doc: ModelVersionDoc) -> ModelVersion:
        """Convert a stored model version."""
        metrics = doc.metrics or {}
        return cls(
            id=strawberry.ID(doc.id), kind=doc.kind, version=doc.version, status=ModelStatus(doc.status),
            aliases=list(doc.aliases), metrics=metrics, trained_at=doc.trained_at,
            training_seconds=_number(metrics.get("train_s")), device=doc.device,
            size_bytes=_number(metrics.get("model_bytes")), config=doc.config or {}, scenario_id=doc.scenario_id,
        )


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) else None


@strawberry.type(description="The model version an experiment variant serves instead of the champion.")
class ModelPin:
    version: int | None = strawberry.field(description="A version number of the scenario's model.")
    alias: str | None = strawberry.field(description="`champion` or `challenger`: whichever version holds it.")

    @classmethod
    def from_domain(cls, pin: dict[str, Any] | None) -> ModelPin | None:
        """Convert a stored pin (None: the variant serves the champion)."""
        return cls(version=pin.get("version"), alias=pin.get("alias")) if pin else None


@strawberry.input(description="Pin a variant to a model version: exactly one of `version` or `alias`.")
class ModelPinInput:
    version: int | None = strawberry.field(
        default=None, description="A version of the scenario's model, READY or RETIRED with its artifact.")
    alias: str | None = strawberry.field(default=None, description="`champion` or `challenger`.")

    def to_domain(self) -> dict[str, Any]:
        """Return the pin as the domain reads it (the keys given)."""
        return {k: v for k, v in (("version", self.version), ("alias", self.alias)) if v is not None}
