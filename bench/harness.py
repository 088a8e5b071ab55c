"""What the benchmarks share about the server under test: ports, the command, and its processes (Linux /proc)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import sys
import time
from pathlib import Path


def free_port() -> int:
    """Return a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recograph_command() -> str:
    """Return the `recograph` script beside this interpreter, or the one on PATH."""
    beside = Path(sys.executable).parent / "recograph"
    return str(beside) if beside.exists() else (shutil.which("recograph") or "recograph")


def children(pid: int) -> list[int]:
    """Return the pids whose parent is pid."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def cmdline(pid: int) -> str:
    """Return a process's command line, or "" once it is gone."""
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    return ""


def stop_leftovers(servers: dict[int, str], timeout_s: float = 10.0) -> None:
    """SIGTERM the servers (pid -> command line) still running, SIGKILL those left after timeout_s.

    Redis refuses to exit on SIGTERM when its final save fails, so one whose directory was removed would stay.
    """
    left = [pid for pid, cmd in servers.items() if cmd and cmdline(pid) == cmd]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [pid for pid in left if cmdline(pid) == servers[pid]]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def cpu_seconds(pids: dict[str, int], *, client: bool = False) -> dict[str, float]:
    """Return user+system CPU seconds of each process, plus this one as `client` when asked."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"client": time.process_time()} if client else {}
    for name, pid in pids.items():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out
