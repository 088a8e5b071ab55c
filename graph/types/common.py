"""Shared GraphQL types: enums, page info, row errors."""

from __future__ import annotations

import enum

import strawberry

from domain.catalogue import RowError
from domain.scenarios.service import Page


@strawberry.enum(description="How a user interacted with an item.")
class InteractionType(enum.Enum):
    VIEW = "VIEW"
    CLICK = "CLICK"
    LIKE = "LIKE"
    SHARE = "SHARE"
    COMMENT = "COMMENT"
    PURCHASE = "PURCHASE"
    ADD_TO_CART = "ADD_TO_CART"
    RATING = "RATING"
    WATCH = "WATCH"
    SKIP = "SKIP"
    DISLIKE = "DISLIKE"


@strawberry.enum(description="Starting point of a scenario's configuration.")
class ScenarioTemplate(enum.Enum):
    VLOG = "VLOG"
    NEWS = "NEWS"
    ECOMMERCE = "ECOMMERCE"
    MUSIC = "MUSIC"
    CUSTOM = "CUSTOM"


@strawberry.enum(description="Whether an item may be recommended.")
class ItemStatus(enum.Enum):
    ACTIVE = "ACTIVE"
    INACTIVE = "INACTIVE"


@strawberry.enum(description="What a key may do.")
class ApiKeyScope(enum.Enum):
    PUBLIC = "public"
    ADMIN = "admin"
    GATEWAY = "gateway"


@strawberry.type
class PageInfo:
    has_next_page: bool
    end_cursor: str | None


async def total_count(page: Page) -> int:
    """Return the number of nodes matching a list's filter (across all pages)."""
    return await page.total() if page.total else len(page.nodes)


@strawberry.type(description="A problem with one row of a bulk call; `index` is 0-based.")
class RowErrorType:
    index: int
    field: str | None
    message: str

    @classmethod
    def from_domain(cls, error: RowError) -> RowErrorType:
        """Convert a domain row error."""
        return cls(index=error.index, field=error.field, message=error.message)


@strawberry.type(name="EventError", description="Why one event of a batch was refused.")
class EventError(RowErrorType):
    pass


@strawberry.type(name="ItemError", description="Why one item of a batch was refused.")
class ItemError(RowErrorType):
    pass
