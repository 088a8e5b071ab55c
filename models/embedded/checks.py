"""Ping MongoDB and Redis, turning every failure into one readable line."""

from __future__ import annotations

import re

from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from redis.asyncio import Redis
from redis.exceptions import RedisError


class ServerUnavailable(Exception):
    """A server that should answer does not; the message is one line fit for a terminal."""


class EmbeddedStartError(ServerUnavailable):
    """An embedded server could not be started (missing command, early exit, no answer)."""


_PASSWORD = re.compile(r"(//[^:/@]*:)[^@/]*@")
_REASON_CHARS = 240


def redact(url: str) -> str:
    """Return url with any password replaced by ***."""
    return _PASSWORD.sub(r"\1***@", url)


def one_line(text: str, limit: int = _REASON_CHARS) -> str:
    """Return the first line of text, cut to limit characters."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    first = lines[0] if lines else "no detail"
    return first if len(first) <= limit else first[: limit - 3] + "..."


def _unavailable(label: str, url: str, exc: BaseException) -> ServerUnavailable:
    # pymongo appends its timeouts and a long topology description; the part before them names the cause.
    reason = one_line(re.split(r", Timeout:| \(configured timeouts", str(exc))[0] or type(exc).__name__)
    return ServerUnavailable(f"{label} at {redact(url)} is not reachable ({reason})")


async def check_mongo(url: str, timeout_s: float = 5.0) -> None:
    """Ping MongoDB at url; raise ServerUnavailable with the reason when it does not answer."""
    ms = max(1, int(timeout_s * 1000))
    try:
        client: AsyncMongoClient = AsyncMongoClient(
            url, serverSelectionTimeoutMS=ms, connectTimeoutMS=ms, socketTimeoutMS=ms
        )
    except (PyMongoError, ValueError, TypeError) as exc:
        raise _unavailable("MongoDB", url, exc) from None
    try:
        await client.admin.command("ping")
    except (PyMongoError, OSError) as exc:
        raise _unavailable("MongoDB", url, exc) from None
    finally:
        await client.close()


async def check_redis(url: str, timeout_s: float = 5.0) -> None:
    """Ping Redis at url; raise ServerUnavailable with the reason when it does not answer."""
    try:
        client = Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    except (ValueError, TypeError) as exc:
        raise _unavailable("Redis", url, exc) from None
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        raise _unavailable("Redis", url, exc) from None
    finally:
        await client.aclose()
