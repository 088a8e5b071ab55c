"""JSON messages on a Redis pub/sub channel: every process that listens hears what any process publishes."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

log = structlog.get_logger()


class Channel:
    """Publish JSON objects on one channel, and hear them until cancelled (resubscribing after Redis errors).

    Pub/sub delivers to those listening at that moment, at most once: a listener must also converge without it
    (a TTL, a periodic re-check)."""

    def __init__(self, redis: aioredis.Redis, name: str) -> None:
        self._redis = redis
        self.name = name

    @property
    def client(self) -> aioredis.Redis:
        """Return the Redis client the messages travel over."""
        return self._redis

    async def publish(self, message: dict[str, Any]) -> None:
        """Send a message to every listener."""
        await self._redis.publish(self.name, json.dumps(message))

    async def listen(self, handle: Callable[[dict[str, Any]], Awaitable[Any]], *, retry_s: float = 2.0) -> None:
        """Call handle(message) for each JSON object heard until cancelled; resubscribe after errors."""
        while True:
            try:
                await self._listen_once(handle)
            except (RedisError, OSError) as exc:
                log.warning("channel.lost", channel=self.name, error=str(exc), retry_s=retry_s)
                await asyncio.sleep(retry_s)

    async def _listen_once(self, handle: Callable[[dict[str, Any]], Awaitable[Any]]) -> None:
        async with self._redis.pubsub() as pubsub:
            await pubsub.subscribe(self.name)
            while True:
                # A short read timeout keeps the client's socket timeout from tearing down an idle subscription.
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                if message is None:
                    continue
                try:
                    data = json.loads(message.get("data"))
                except (TypeError, ValueError):
                    data = None
                if not isinstance(data, dict):
                    log.warning("channel.bad_message", channel=self.name, raw=str(message.get("data"))[:200])
                    continue
                await handle(data)
