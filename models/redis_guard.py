"""A redis-py client whose every command and pipeline passes one circuit breaker.

`Redis.execute_command` and `Pipeline.execute` are the two doors every command goes through (scripts run as
EVALSHA through them too), so guarding them guards every module that holds the shared client: the cache, stream
appends, served lists, impressions, profiles' hot state. Pub/sub connections are not guarded: a subscription waits
on purpose. While the breaker is open a command raises `RedisCircuitOpen`, a redis-py `ConnectionError`, so every
caller that already copes with Redis being down (`except RedisError`) copes with it the same way, at once.
"""

from __future__ import annotations

from typing import Any

from redis import asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from models.breaker import DEFAULT_COOLDOWN_S, DEFAULT_FAILURES, CircuitBreaker

STORE = "redis"


class RedisCircuitOpen(RedisConnectionError):
    """Redis did not answer lately: the command was not sent (the breaker is open)."""


def is_unavailable(exc: BaseException) -> bool:
    """Return whether an exception means Redis did not answer (a server's error reply means it did)."""
    return isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)) and not isinstance(
        exc, RedisCircuitOpen)


def is_timeout(exc: BaseException) -> bool:
    """Return whether Redis let a command wait out its whole socket timeout."""
    return isinstance(exc, (RedisTimeoutError, TimeoutError))


class GuardedRedis(aioredis.Redis):
    """redis-py's asyncio client with a circuit breaker around every command and pipeline."""

    breaker: CircuitBreaker | None = None  # set by `guarded_redis`; None (a bare `client()` copy) passes through

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run one command through the breaker."""
        if self.breaker is None:
            return await super().execute_command(*args, **options)
        return await self.breaker.call(lambda: super(GuardedRedis, self).execute_command(*args, **options))

    async def unguarded_ping(self) -> bool:
        """Ping past the breaker (its probe)."""
        return bool(await super().execute_command("PING"))

    def pipeline(self, transaction: bool = True, shard_hint: str | None = None) -> GuardedPipeline:
        """Return a pipeline whose `execute` goes through this client's breaker."""
        pipe = GuardedPipeline(self.connection_pool, self.response_callbacks, transaction, shard_hint)
        pipe.breaker = self.breaker
        return pipe


class GuardedPipeline(Pipeline):
    """A pipeline sent through a circuit breaker."""

    breaker: CircuitBreaker | None = None

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        """Send the queued commands through the breaker (an open one drops them and raises)."""
        if self.breaker is None:
            return await super().execute(raise_on_error)
        try:
            return await self.breaker.call(lambda: super(GuardedPipeline, self).execute(raise_on_error))
        except RedisCircuitOpen:
            await self.reset()
            raise


def guarded_redis(
    url: str, *, timeout_s: float, failures: int = DEFAULT_FAILURES, cooldown_s: float = DEFAULT_COOLDOWN_S
) -> GuardedRedis:
    """Create a client for url (not connected yet) behind a breaker named "redis"."""
    client = GuardedRedis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s)
    client.breaker = CircuitBreaker(
        STORE, open_error=RedisCircuitOpen, is_failure=is_unavailable, is_timeout=is_timeout, failures=failures,
        # A slow reply that arrives is no outage (a large script or scan may take longer than a timeout): only a
        # command that waited out its socket timeout opens the breaker at once.
        cooldown_s=cooldown_s, probe=client.unguarded_ping, probe_timeout_s=timeout_s * 2,
    )
    return client
