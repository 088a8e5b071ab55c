"""Item 10: the runtime file is stale only when its owner is gone; a live owner's silent server is reported, in one
line, and the file kept (the CLI never starts servers of its own on a directory `serve` holds)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from models.embedded import RUNTIME_FILE, EmbeddedServers, ServerUnavailable, read_runtime
from models.embedded.process import free_port
from models.embedded.runtime import owner_alive, process_start
from models.embedded.servers import start_redis


@pytest.fixture
def owner():
    """A live process standing in for `serve`."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield process
    process.kill()
    process.wait()


def write_runtime(data_dir: Path, pid: int, *, mongo_url: str, redis_url: str, pid_start: int | None) -> None:
    info = {"pid": pid, "mongo_url": mongo_url, "redis_url": redis_url, "pid_start": pid_start}
    (data_dir / RUNTIME_FILE).write_text(json.dumps(info))


async def test_item10_a_live_owners_paused_redis_is_one_line_and_the_file_stays(tmp_path: Path, owner) -> None:
    redis = await start_redis(tmp_path / "paused", tmp_path / "redis.log", persist=False)
    mongo_url = f"mongodb://127.0.0.1:{free_port()}/"
    write_runtime(tmp_path, owner.pid, mongo_url=mongo_url, redis_url=redis.url, pid_start=process_start(owner.pid))
    os.kill(redis.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ServerUnavailable) as failure:
            await EmbeddedServers(data_dir=tmp_path).start()
    finally:
        os.kill(redis.pid, signal.SIGCONT)
        await redis.stop()
    message = str(failure.value)
    assert "\n" not in message and f"pid {owner.pid}" in message
    assert f"Redis at {redis.url} is not reachable" in message and "MongoDB at" in message
    assert (tmp_path / RUNTIME_FILE).exists()
    assert not (tmp_path / "mongo").exists()  # nothing was started on the owner's directory


async def test_item10_a_reused_pid_does_not_keep_a_dead_owners_file(tmp_path: Path) -> None:
    # Our own pid is alive, but it names another process than the one that wrote the file.
    write_runtime(tmp_path, os.getpid(), mongo_url="mongodb://127.0.0.1:1/", redis_url="redis://127.0.0.1:1/0",
                  pid_start=(process_start(os.getpid()) or 0) + 1)
    info = json.loads((tmp_path / RUNTIME_FILE).read_text())
    assert not owner_alive(info) and read_runtime(tmp_path) is None

    async with EmbeddedServers(data_dir=tmp_path) as servers:
        assert servers.mongo.owned and servers.redis.owned
        assert read_runtime(tmp_path)["pid_start"] == process_start(os.getpid())
