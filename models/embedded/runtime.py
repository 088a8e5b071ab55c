"""The data dir's runtime.json: which process serves it and at which URLs, so CLI commands attach to it."""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from models.embedded.checks import EmbeddedStartError

RUNTIME_FILE = "runtime.json"
LOCK_FILE = ".runtime.lock"
_DEFAULT_PORTS = {"mongodb": 27017, "redis": 6379, "rediss": 6379}
_owned: dict[Path, int] = {}
_atexit_registered = False


def runtime_path(data_dir: Path) -> Path:
    """Return where the runtime file of data_dir lives."""
    return data_dir / RUNTIME_FILE


def load(data_dir: Path) -> dict[str, Any] | None:
    """Return the runtime file's content, or None when it is missing or unreadable."""
    try:
        info = json.loads(runtime_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and isinstance(info.get("pid"), int) else None


def write(data_dir: Path, info: dict[str, Any]) -> None:
    """Write the runtime file atomically, readable by the owner only."""
    path = runtime_path(data_dir)
    temp = path.with_name(f".{RUNTIME_FILE}.{os.getpid()}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        json.dump(info, out, indent=2)
    os.replace(temp, path)
    _remember(path, info["pid"])


def remove(data_dir: Path, *, pid: int | None = None) -> None:
    """Delete the runtime file; with pid, only while that process is still named as its owner."""
    path = runtime_path(data_dir)
    info = load(data_dir)
    if pid is None or (info is not None and info["pid"] == pid):
        path.unlink(missing_ok=True)
    _owned.pop(path, None)


def read_runtime(data_dir: Path) -> dict[str, Any] | None:
    """Return the runtime info of the live process serving data_dir, or None when none or stale."""
    info = load(data_dir)
    if info is None or not owner_alive(info):
        return None
    urls = [info.get("mongo_url"), info.get("redis_url")]
    return info if all(isinstance(url, str) and _accepts(url) for url in urls) else None


def owner_alive(info: dict[str, Any]) -> bool:
    """Return whether the process that wrote the runtime file still runs (not another one given its pid since)."""
    if not pid_alive(info["pid"]):
        return False
    started, now = info.get("pid_start"), process_start(info["pid"])
    return started is None or now is None or started == now


def process_start(pid: int) -> int | None:
    """Return when the process started, in clock ticks since boot (None without procfs): with the pid, it names
    one process even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return int(fields[19]) if len(fields) > 19 and fields[19].isdigit() else None


def pid_alive(pid: int) -> bool:
    """Return whether the process exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs (macOS): kill(0) is all we know
    return stat.rpartition(")")[2].split()[0] != "Z"


def _accepts(url: str, timeout_s: float = 0.5) -> bool:
    # A quick TCP connect to the first host, enough for a synchronous check; attaching does a real ping.
    parts = urlsplit(url)
    default = _DEFAULT_PORTS.get(parts.scheme)
    if default is None:
        return True  # a URL we cannot probe cheaply (DNS seed list, TLS scheme): trust the live pid
    hostport = parts.netloc.rpartition("@")[2].split(",")[0]
    host, sep, port = hostport.rpartition(":")
    if not sep or hostport.endswith("]") or not port.isdigit():
        host, port = hostport, str(default)
    try:
        socket.create_connection((host.strip("[]") or "localhost", int(port)), timeout_s).close()
    except OSError:
        return False
    return True


@contextlib.asynccontextmanager
async def start_lock(data_dir: Path, timeout_s: float = 60.0) -> AsyncIterator[None]:
    """Hold data_dir's start lock, so two processes never start servers on one directory at once."""
    data_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout_s
        while not _try_lock(fd):
            if time.monotonic() > deadline:
                raise EmbeddedStartError(f"another process has been starting servers in {data_dir} for {timeout_s:.0f} s")
            await asyncio.sleep(0.1)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock; the kernel also does on any death


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _remember(path: Path, pid: int) -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(_remove_owned)
        _atexit_registered = True
    _owned[path] = pid


def _remove_owned() -> None:
    for path, pid in list(_owned.items()):
        remove(path.parent, pid=pid)
