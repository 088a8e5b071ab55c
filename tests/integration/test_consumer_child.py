"""The consumer child that `serve` runs in embedded mode: it consumes, and it is started again when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import redis.asyncio as aioredis

from domain.realtime.keys import HEARTBEAT
from models.embedded import EmbeddedServers
from models.settings import Settings
from workers.consumer import consumer_child


async def wait_for(predicate, timeout_s: float = 30.0) -> bool:  # noqa: ANN001
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_killed_consumer_child_is_started_again_and_the_last_one_stops_with_the_block() -> None:
    servers = await EmbeddedServers(data_dir=None).start()
    client = aioredis.Redis.from_url(servers.redis_url)
    try:
        async with consumer_child(Settings(), mongo_url=servers.mongo_url, redis_url=servers.redis_url,
                                  logs_dir=servers.logs_dir, check_every_s=0.2) as supervisor:
            first = supervisor.child
            assert first is not None
            assert await wait_for(lambda: client.exists(HEARTBEAT)), first.tail(20)
            os.kill(first.pid, signal.SIGKILL)

            async def replaced() -> bool:
                child = supervisor.child
                return child is not None and child.pid != first.pid and child.exit_code() is None

            assert await wait_for(replaced), first.tail(20)
            assert supervisor.restarts == 1
            await client.delete(HEARTBEAT)
            assert await wait_for(lambda: client.exists(HEARTBEAT)), supervisor.child.tail(20)  # the new one consumes
            last = supervisor.child
        assert last.exit_code() is not None  # stopped with the block
    finally:
        await client.aclose()
        await servers.stop()
