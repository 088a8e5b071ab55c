"""Dead-letter types: stream entries the consumer gave up on, and the connection `deadLetters` returns."""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.scalars import JSON

from domain.realtime.deadletters import DeadLetter as DeadLetterData
from domain.scenarios.service import Page
from graph.types.common import PageInfo, total_count


@strawberry.type(description="An event or served page the consumer could not apply however often it tried; "
                 "replayDeadLetters sends it through again.")
class DeadLetter:
    id: strawberry.ID
    received_at: datetime = strawberry.field(description="When the entry entered the tenant's event stream.")
    failed_at: datetime = strawberry.field(description="When the consumer gave up on it.")
    error: str = strawberry.field(description="The last error applying it.")
    entry: JSON = strawberry.field(description='The stream entry: ["e", eventId, scenarioId, userId, itemId, type, '
                                   'value, tsMs, receivedMs, requestId] or ["i", requestId, scenarioId, userId, '
                                   'variant, servedMs, [[itemId, [source, ...]], ...]].')

    @classmethod
    def from_domain(cls, letter: DeadLetterData) -> DeadLetter:
        """Convert a dead letter."""
        return cls(id=strawberry.ID(letter.id), received_at=letter.received_at, failed_at=letter.failed_at,
                   error=letter.error, entry=letter.entry)


@strawberry.type
class DeadLetterEdge:
    node: DeadLetter
    cursor: str


@strawberry.type(description="A page of dead letters, oldest first.")
class DeadLetterConnection:
    edges: list[DeadLetterEdge]
    page_info: PageInfo
    page: strawberry.Private[Page]

    @strawberry.field(description="How many dead letters the tenant has.")
    async def total_count(self) -> int:
        return await total_count(self.page)

    @classmethod
    def from_domain(cls, page: Page) -> DeadLetterConnection:
        """Convert a page of dead letters."""
        edges = [DeadLetterEdge(node=DeadLetter.from_domain(n), cursor=c)
                 for n, c in zip(page.nodes, page.cursors, strict=True)]
        info = PageInfo(has_next_page=page.has_next, end_cursor=page.cursors[-1] if edges else None)
        return cls(edges=edges, page_info=info, page=page)
