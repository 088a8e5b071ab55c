"""The audit log: every admin mutation, who made it, when and how it ended, never with its arguments in clear."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import structlog

from domain.ids import check_first, decode_cursor, encode_cursor, new_id, utcnow
from domain.scenarios.service import Page
from models.documents import AuditEntry

log = structlog.get_logger()


def arguments_digest(arguments: Mapping[str, Any]) -> str:
    """Return the SHA-256 hex digest of a field's arguments in a canonical JSON form (keys sorted)."""
    canonical = json.dumps(arguments, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class AuditLog:
    """Write and page the tenant's audit entries."""

    async def record(
        self, *, tenant_id: str, key_id: str, operation: str, arguments: Mapping[str, Any], outcome: str
    ) -> AuditEntry | None:
        """Store one entry; a failure to store is logged (with the digest) rather than failing the mutation."""
        entry = AuditEntry(
            id=new_id("au"), tenant_id=tenant_id, key_id=key_id, operation=operation,
            arguments_sha256=arguments_digest(arguments), outcome=outcome, at=utcnow(),
        )
        try:
            await entry.insert()
        except Exception as exc:  # noqa: BLE001 - the mutation has happened; say so in the logs at least
            log.error("audit.write_failed", tenant_id=tenant_id, key_id=key_id, operation=operation,
                      arguments_sha256=entry.arguments_sha256, outcome=outcome, error=repr(exc))
            return None
        return entry

    async def page(self, *, tenant_id: str, first: int | None, after: str | None, max_first: int) -> Page:
        """Return a page of the tenant's entries, newest first (entry ids sort by creation time)."""
        limit = check_first(first, maximum=max_first)
        query: dict[str, Any] = {"tenant_id": tenant_id}
        if (start := decode_cursor(after)) is not None:
            query["_id"] = {"$lt": start}
        docs = await AuditEntry.find(query).sort([("_id", -1)]).limit(limit + 1).to_list()
        nodes = docs[:limit]
        total = lambda: AuditEntry.get_pymongo_collection().count_documents({"tenant_id": tenant_id})  # noqa: E731
        return Page(nodes=nodes, cursors=[encode_cursor(e.id) for e in nodes], has_next=len(docs) > limit, total=total)
