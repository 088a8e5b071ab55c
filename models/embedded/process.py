"""Run embedded servers as child processes that never outlive this one."""

from __future__ import annotations

import asyncio
import atexit
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO

import structlog

log = structlog.get_logger()

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT_S = 10.0
_EXIT_TIMEOUT_S = 5.0
_PR_SET_PDEATHSIG = 1
_TAIL_BYTES = 8192

# PR_SET_PDEATHSIG fires when the *thread* that forked the child ends, not the process. Forking from one
# long-lived thread keeps a server alive when start() runs on a short-lived thread (a test client's portal).
_SPAWNER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedded-spawner")
_LIVE: set[subprocess.Popen[bytes]] = set()
_atexit_registered = False


@dataclass(eq=False)
class Child:
    """A started server process and the log file its output goes to."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    log_offset: int
    wake_port: int | None = None

    @property
    def pid(self) -> int:
        """Return the process id."""
        return self.process.pid

    def exit_code(self) -> int | None:
        """Return the exit code, or None while it runs."""
        return self.process.poll()

    def tail(self, lines: int = 5) -> str:
        """Return the last lines this run wrote to its log, joined into one line."""
        try:
            with self.log_path.open("rb") as out:
                out.seek(max(self.log_offset, out.seek(0, os.SEEK_END) - _TAIL_BYTES))
                text = out.read().decode(errors="replace")
        except OSError:
            return "no output"
        kept = [line.strip() for line in text.splitlines() if line.strip()][-lines:]
        return " | ".join(kept) or "no output"

    async def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Send SIGTERM, wait up to timeout_s for a clean exit, then SIGKILL."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            if not await _wait_exit(self.process, timeout_s, self.wake_port):
                log.warning("embedded.kill", server=self.name, pid=self.pid, after_s=timeout_s)
                self.process.kill()
                await _wait_exit(self.process, _EXIT_TIMEOUT_S)
        _LIVE.discard(self.process)


async def _wait_exit(process: subprocess.Popen[bytes], timeout_s: float, wake_port: int | None = None) -> bool:
    deadline = time.monotonic() + timeout_s
    while process.poll() is None:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
        if wake_port is not None:
            # SecantusDB's accept thread stays blocked in accept() after its socket is closed and stop() waits
            # 2 s for it; a connection wakes it, so shutdown takes ~0.15 s instead of ~2.1 s.
            await port_open(wake_port, 0.2)
    return True


def free_port() -> int:
    """Return a loopback port that is free right now (the caller retries if it is taken before use)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


async def port_open(port: int, timeout_s: float = 0.5) -> bool:
    """Return whether something accepts TCP connections on the loopback port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(LOOPBACK, port), timeout_s)
    except (OSError, asyncio.TimeoutError):
        return False
    writer.close()
    return True


async def spawn(
    name: str, argv: list[str], log_path: Path, *, wake_port: int | None = None, env: Mapping[str, str] | None = None
) -> Child:
    """Start argv with its output appended to log_path, tied to this process's life (with env, else ours)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as out:
        offset = out.tell()
        process = await asyncio.get_running_loop().run_in_executor(_SPAWNER, partial(_popen, argv, out, env))
    _LIVE.add(process)
    _register_atexit()
    return Child(name, process, log_path, offset, wake_port)


def _popen(argv: list[str], out: IO[bytes], env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    # A new session keeps a terminal's Ctrl-C away from the servers: the app stops them itself, after it has
    # closed its own connections, instead of them dying under it.
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=_death_signal_setup(os.getpid()),
        env=env,
    )


def _death_signal_setup(parent_pid: int) -> Callable[[], None] | None:
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before fork: the child only calls it

    def setup() -> None:
        # SIGTERM rather than SIGKILL: Redis writes its files and WiredTiger closes cleanly, so a restart
        # on the same directory works at once even after the app was killed.
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent_pid:  # the parent died before prctl took effect
            os._exit(1)

    return setup


def _register_atexit() -> None:
    global _atexit_registered
    if not _atexit_registered:
        atexit.register(kill_leftovers)
        _atexit_registered = True


def kill_leftovers(timeout_s: float = _EXIT_TIMEOUT_S) -> None:
    """Terminate every server child still running (the fallback when stop() was never awaited)."""
    running = [process for process in _LIVE if process.poll() is None]
    for process in running:
        process.terminate()
    deadline = time.monotonic() + timeout_s
    for process in running:
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    _LIVE.clear()


class KeptChild:
    """Keep one child process running: `watch` starts it again when it exits (after telling `on_exit` its pid)."""

    def __init__(
        self, name: str, argv: list[str], env: Mapping[str, str], log_path: Path, *,
        on_exit: Callable[[int], None] | None = None,
    ) -> None:
        self.name = name
        self._argv = argv
        self._env = env
        self._log_path = log_path
        self._on_exit = on_exit
        self.child: Child | None = None
        self.restarts = 0

    async def start(self) -> None:
        """Start the child."""
        self.child = await spawn(self.name, self._argv, self._log_path, env=self._env)
        log.info("child.started", child=self.name, pid=self.child.pid)

    async def watch(self, every_s: float) -> None:
        """Check every `every_s` that the child lives; start another when it has exited."""
        while True:
            await asyncio.sleep(every_s)
            if self.child is not None and (code := self.child.exit_code()) is not None:
                log.warning("child.exited", child=self.name, pid=self.child.pid, exit_code=code, tail=self.child.tail())
                if self._on_exit is not None:
                    self._on_exit(self.child.pid)
                self.restarts += 1
                try:
                    await self.start()
                except (OSError, RuntimeError) as exc:
                    log.error("child.restart_failed", child=self.name, error=str(exc))

    async def stop(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL after a grace period)."""
        if self.child is not None:
            await self.child.stop()


@asynccontextmanager
async def kept_running(children: list[KeptChild], check_every_s: float = 1.0) -> AsyncIterator[list[KeptChild]]:
    """Start the children, restart any that exits while the block runs, and stop them all after it."""
    started: list[KeptChild] = []
    watches: list[asyncio.Task] = []
    try:
        for kept in children:
            await kept.start()
            started.append(kept)
            watches.append(asyncio.create_task(kept.watch(check_every_s), name=f"recograph-keep-{kept.name}"))
        yield children
    finally:
        for task in watches:
            task.cancel()
        await asyncio.gather(*watches, return_exceptions=True)
        await asyncio.gather(*(kept.stop() for kept in started))
