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
    # The user this request acts for: from a verified X-User-Token (keys that require one) or a gateway's X-User-Id.
    end_user_id: str | None = None
    user_problem: str | None = None  # why a key that requires a user token has no verified user

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

    def require_user(self, user_id: str) -> None:
        """Raise FORBIDDEN unless this request may act for `user_id` (call after `require`).

        A key that requires a user token acts only for the user its verified token names; a gateway that sent
        X-User-Id only for that user; any other key for whichever user it names.
        """
        requires_token = self.principal is not None and self.principal.require_user_token
        if requires_token and self.end_user_id is None:
            raise Forbidden(self.user_problem or "this key acts for one user only: send X-User-Token")
        if self.end_user_id is not None and str(user_id) != self.end_user_id:
            source = "X-User-Token" if requires_token else "X-User-Id"
            raise Forbidden(f"this request acts for the user its {source} names, not for another user")
