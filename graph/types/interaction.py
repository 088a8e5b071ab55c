"""Interaction inputs and results."""

from __future__ import annotations

from datetime import datetime

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
