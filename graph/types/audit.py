"""Audit log types: admin mutations as the audit log keeps them."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain.scenarios.service import Page
from graph.types.common import PageInfo, total_count
from models.documents import AuditEntry as AuditEntryDoc


@strawberry.type(description="One admin mutation: the key that made it, when, and how it ended.")
class AuditEntry:
    id: strawberry.ID
    key_id: strawberry.ID
    operation: str = strawberry.field(description="The Mutation field, e.g. `createApiKey`.")
    arguments_sha256: str = strawberry.field(
        description="SHA-256 (hex) of the field's arguments as canonical JSON (keys sorted); never the arguments."
    )
    outcome: str = strawberry.field(description="`ok`, or the error code it ended with (e.g. `NOT_FOUND`).")
    at: datetime

    @classmethod
    def from_domain(cls, doc: AuditEntryDoc) -> AuditEntry:
        """Convert a stored entry."""
        return cls(
            id=strawberry.ID(doc.id), key_id=strawberry.ID(doc.key_id), operation=doc.operation,
            arguments_sha256=doc.arguments_sha256, outcome=doc.outcome, at=doc.at,
        )


@strawberry.type
class AuditEntryEdge:
    node: AuditEntry
    cursor: str


@strawberry.type(description="A page of audit entries, newest first.")
class AuditEntryConnection:
    edges: list[AuditEntryEdge]
    page_info: PageInfo
    page: strawberry.Private[Page]

    @strawberry.field(description="How many entries the tenant's audit log holds.")
    async def total_count(self) -> int:
        return await total_count(self.page)

    @classmethod
    def from_domain(cls, page: Page) -> AuditEntryConnection:
        """Convert a page of entries."""
        edges = [AuditEntryEdge(node=AuditEntry.from_domain(n), cursor=c) for n, c in zip(page.nodes, page.cursors,
                                                                                          strict=True)]
        info = PageInfo(has_next_page=page.has_next, end_cursor=page.cursors[-1] if edges else None)
        return cls(edges=edges, page_info=info, page=page)
