"""Id and cursor helpers shared by the domain services."""

from __future__ import annotations

import base64
import secrets
import time
from datetime import UTC, datetime

from domain.errors import BadInput


def new_id(prefix: str) -> str:
    """Return a random id that sorts by creation time (`prefix_` + 11 time chars + 10 random)."""
    return f"{prefix}_{time.time_ns() // 1_000_000:011x}{secrets.token_hex(5)}"


def utcnow() -> datetime:
    """Return the current time in UTC, at millisecond precision (what MongoDB keeps)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def encode_cursor(value: str) -> str:
    """Return an opaque cursor for a sort key."""
    return base64.urlsafe_b64encode(f"v1:{value}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None, *, field: str = "after") -> str | None:
    """Return the sort key inside a cursor, or raise BadInput naming the argument."""
    if cursor is None:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (ValueError, UnicodeDecodeError):
        raw = ""
    if not raw.startswith("v1:"):
        raise BadInput("not a cursor this API returned", field=field)
    return raw[3:]


def check_first(first: int | None, *, maximum: int, default: int = 20, field: str = "first") -> int:
    """Return a valid page size or raise BadInput (never clamp silently)."""
    if first is None:
        return default
    if first < 0 or first > maximum:
        raise BadInput(f"must be between 0 and {maximum}, got {first}", field=field)
    return first
