"""API key types."""

from __future__ import annotations

from datetime import datetime

import strawberry

from domain.tenancy import NewKey
from graph.types.common import ApiKeyScope
from models.documents import ApiKey as ApiKeyDoc


@strawberry.type(description="An API key as listed: never its secret.")
class ApiKey:
    id: strawberry.ID
    scope: ApiKeyScope
    prefix: str
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None = strawberry.field(description="Past this time the key authenticates as nothing.")
    last_used_at: datetime | None = strawberry.field(
        description="When the key last authenticated a request (updated at most once a minute per serving process)."
    )
    require_user_token: bool = strawberry.field(
        description="The key serves and records only for the user a valid `X-User-Token` names."
    )

    @classmethod
    def from_domain(cls, doc: ApiKeyDoc) -> ApiKey:
        """Convert a stored key."""
        return cls(
            id=strawberry.ID(doc.id), scope=ApiKeyScope(doc.scope), prefix=doc.prefix,
            created_at=doc.created_at, revoked_at=doc.revoked_at, expires_at=doc.expires_at,
            last_used_at=doc.last_used_at, require_user_token=doc.require_user_token,
        )


@strawberry.type(description="A new key; `secret` is shown this once.")
class NewApiKey:
    key: ApiKey
    secret: str

    @classmethod
    def from_domain(cls, new: NewKey) -> NewApiKey:
        """Convert a created key."""
        return cls(key=ApiKey.from_domain(new.key), secret=new.secret)
