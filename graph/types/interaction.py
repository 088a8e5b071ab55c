"""Interaction inputs and results."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import strawberry
from strawberry.scalars import JSON

from domain.events import IngestResult as IngestResultData, InteractionData
from graph.types.common import EventError, InteractionType


@strawberry.input(description="One interaction. WATCH value = seconds watched; RATING value = the rating.")
class InteractionInput:
    scenario_id: strawberry.ID
    user_id: strawberry.ID
    item_id: strawberry.ID
    type: InteractionType
    value: float | None = None
    timestamp: datetime | None = strawberry.field(default=None, description="Defaults to the time of receipt.")
    context: JSON | None = None
    request_id: strawberry.ID | None = strawberry.field(
        default=None, description="The requestId of the recommendation list this interaction came from."
    )
    event_id: strawberry.ID | None = strawberry.field(
        default=None, description="Client id making retries idempotent: an event id is stored once."
    )

    def to_domain(self) -> InteractionData:
        """Convert to the domain's interaction data."""
        return InteractionData(
            scenario_id=str(self.scenario_id), user_id=str(self.user_id), item_id=str(self.item_id),
            type=self.type.value, value=self.value, timestamp=self.timestamp, context=self.context,
            request_id=None if self.request_id is None else str(self.request_id),
            event_id=None if self.event_id is None else str(self.event_id),
        )


# GraphQL field name -> python name, for `_from_input`.
_NAMES = (
    ("scenarioId", "scenario_id"), ("userId", "user_id"), ("itemId", "item_id"), ("type", "type"), ("value", "value"),
    ("timestamp", "timestamp"), ("context", "context"), ("requestId", "request_id"), ("eventId", "event_id"),
)


def _from_input(cls: type[InteractionInput], value: Mapping[str, Any], _: object) -> InteractionInput:
    """Build an input from its GraphQL value. graphql-core has coerced every field already (enum, scalars), so
    Strawberry's generic conversion, field by field with type resolution (~0.17 ms an event, most of a
    recordInteractions call), has nothing left to do."""
    kwargs = {python: value[name] for name, python in _NAMES if name in value}
    kind = kwargs["type"]
    if not isinstance(kind, InteractionType):
        kwargs["type"] = InteractionType(kind)
    return cls(**kwargs)


InteractionInput.__strawberry_definition__.from_input = _from_input


@strawberry.type
class IngestResult:
    accepted: int = strawberry.field(description="Events stored by this call.")
    duplicates: int = strawberry.field(description="Events whose eventId was already stored (or repeated).")
    errors: list[EventError]

    @classmethod
    def from_domain(cls, result: IngestResultData) -> IngestResult:
        """Convert an ingest result."""
        return cls(
            accepted=result.accepted, duplicates=result.duplicates,
            errors=[EventError.from_domain(e) for e in result.errors],
        )
