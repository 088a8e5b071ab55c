"""What every resolver receives: who is calling, for which tenant, and the services and loaders to use."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from domain.errors import Forbidden, Unauthenticated
from domain.services import Services
from domain.tenancy import Principal, Scope

READERS = frozenset({Scope.ADMIN, Scope.GATEWAY})
ANYONE = frozenset(Scope)
ADMINS = frozenset({Scope.ADMIN})


@dataclass(frozen=True, slots=True)
class Limits:
    max_first: int = 200
    max_batch: int = 5000


@dataclass(frozen=True)
class RequestContext:
    """Per-request state; the tenant comes only from the authenticated key."""

    services: Services
    principal: Principal | None
    loaders: Any
    log: Any
    request_id: str
    limits: Limits = Limits()
    end_user_id: str | None = None

    @property
    def tenant_id(self) -> str:
        """Return the caller's tenant (only after `require`)."""
        return self.require(ANYONE).tenant_id

    def require(self, scopes: Collection[Scope]) -> Principal:
        """Return the principal if its key has one of scopes, else raise UNAUTHENTICATED or FORBIDDEN."""
        if self.principal is None:
            raise Unauthenticated("a valid API key is required: send `Authorization: Bearer <key>`")
        if self.principal.scope not in scopes:
            allowed = " or ".join(sorted(s.value for s in scopes))
            raise Forbidden(f"this operation needs a key with scope {allowed}")
        return self.principal
