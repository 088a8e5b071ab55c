"""Errors the domain raises; each carries a stable code and, for bad input, the dotted path of the field at fault."""

from __future__ import annotations


class DomainError(Exception):
    """Base error with a machine-readable code."""

    code = "INTERNAL_SERVER_ERROR"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    @property
    def extensions(self) -> dict[str, str]:
        """Return the error's `extensions` (graphql-core copies them from the original error)."""
        ext = {"code": self.code}
        if self.field is not None:
            ext["field"] = self.field
        return ext


class BadInput(DomainError):
    """The caller sent something the domain refuses."""

    code = "BAD_USER_INPUT"


class NotFound(DomainError):
    """The object does not exist, or belongs to another tenant (indistinguishable on purpose)."""

    code = "NOT_FOUND"


class Unauthenticated(DomainError):
    """No valid API key."""

    code = "UNAUTHENTICATED"


class Forbidden(DomainError):
    """The key lacks the scope this operation needs."""

    code = "FORBIDDEN"


class Unavailable(DomainError):
    """A store the operation needs cannot be reached."""

    code = "SERVICE_UNAVAILABLE"


class RateLimited(DomainError):
    """The key or its tenant sent more requests than its rate limit allows; `retryAfter` says when to try again."""

    code = "RATE_LIMITED"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after

    @property
    def extensions(self) -> dict[str, str | int]:
        """Return the code and `retryAfter` (whole seconds)."""
        return {**super().extensions, "retryAfter": self.retry_after}
