"""Serving processes: `serve` answers from itself and `processes - 1` children on one address.

A request is a few milliseconds of Python, so one process serves on one core. `serve` and each of its children
(`recograph serve-child`) bind their own socket to the same address with SO_REUSEPORT, and the kernel spreads new
connections across them by a hash of the client's address. (One shared socket would not do: asyncio accepts every
waiting connection at each wake-up, so a burst of connections all goes to one process.) The children attach to
the parent's MongoDB and Redis, load the same models from the same models directory and hear the same swap
notices; they run no job worker and no event consumer (the parent does, or its consumer child). When the vector
store is embedded its shards open in the parent only, so children search the models' item embeddings in memory,
which ranks the same. A child that exits is started again. Prometheus series are pooled across the processes
(`graph.metrics.share_across_processes`).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from graph.runtime import Runtime
from models.embedded.process import KeptChild, kept_running
from models.settings import Settings

MAX_AUTO_PROCESSES = 4


def auto_processes() -> int:
    """Return how many serving processes `serve` runs unless told: the usable CPUs, at most MAX_AUTO_PROCESSES."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, MAX_AUTO_PROCESSES))


class PortUnavailable(Exception):
    """The address to serve on cannot be bound."""


def listening_socket(host: str, port: int, *, first: bool = False) -> socket.socket:
    """Return a TCP socket bound to (host, port) that other processes of this user may bind too (SO_REUSEPORT); it
    listens once the server starts on it, so no connection is handed to a process still starting.

    `first` (serve itself): refuse a port that anything holds already, another `serve` included (which SO_REUSEPORT
    alone would let it share), by binding it without SO_REUSEPORT first."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if first and port:
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                probe.bind((host, port))
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # TCP named: asyncio sets TCP_NODELAY
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
    except OSError as exc:
        raise PortUnavailable(f"cannot listen on {host}:{port}: {exc.strerror or exc} (another server there? "
                              "choose one with --port or RECOGRAPH_PORT)") from exc
    return sock


def child_env(settings: Settings, runtime: Runtime, port: int) -> dict[str, str]:
    """Return the environment of a serving child: attached to the parent's servers and models, serving only, on the
    parent's address."""
    root = str(Path(__file__).resolve().parents[1])
    return {
        **os.environ,
        "RECOGRAPH_HOST": settings.server.host, "RECOGRAPH_PORT": str(port),
        "MONGODB_URL": runtime.servers.mongo_url, "REDIS_URL": runtime.servers.redis_url,
        "MONGODB_DATABASE": settings.mongo.database,
        "RECOGRAPH_MODELS_DIR": str(runtime.models_dir),
        "RECOGRAPH_IN_MEMORY": "true",  # the parent owns the data dir; the child keeps nothing there
        "RECOGRAPH_RUN_WORKER": "false", "RECOGRAPH_CONSUMER_PROCESS": "false", "RECOGRAPH_PROCESSES": "1",
        "RECOGRAPH_FREEZE_HEAP": "true" if settings.server.freeze_heap else "false",
        "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
    }


@asynccontextmanager
async def serving_children(
    settings: Settings, runtime: Runtime, port: int, count: int, *, on_exit: Callable[[int], None] | None = None,
) -> AsyncIterator[list[KeptChild]]:
    """Run `count` serving children on the port while the block runs; each is started again if it exits."""
    env = child_env(settings, runtime, port)
    children = [
        KeptChild(f"serve-{n}", [sys.executable, "-m", "graph.cli", "serve-child"], env,
                  runtime.servers.logs_dir / f"serve-{n}.log", on_exit=on_exit)
        for n in range(1, count + 1)
    ]
    async with kept_running(children):
        yield children
