"""EmbeddedServers: the Mongo and Redis servers the app uses, started, attached to or given by URL."""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import structlog

from models.embedded import runtime
from models.embedded.checks import ServerUnavailable, check_mongo, check_redis
from models.embedded.servers import READY_TIMEOUT_S, ServerHandle, start_mongo, start_redis

if TYPE_CHECKING:
    from models.settings import Settings

log = structlog.get_logger()

_NAMES = ("mongo", "redis")
_CHECKS = {"mongo": check_mongo, "redis": check_redis}
_ATTACH_PING_S = 2.0


class EmbeddedServers:
    """Start (or attach to) the Mongo and Redis servers that have no URL; an async context manager."""

    def __init__(
        self,
        *,
        data_dir: Path | None,
        mongo_url: str | None = None,
        redis_url: str | None = None,
        check_timeout_s: float = 5.0,
        ready_timeout_s: float = READY_TIMEOUT_S,
        redis_maxmemory_mb: int = 0,
    ) -> None:
        self.data_dir = data_dir
        self._redis_maxmemory_mb = redis_maxmemory_mb  # for a Redis this object starts (0: no cap)
        self._given = {"mongo": mongo_url, "redis": redis_url}
        self._check_timeout_s = check_timeout_s
        self._ready_timeout_s = ready_timeout_s
        self.handles: dict[str, ServerHandle] = {}
        self._runtime: dict[str, Any] | None = None
        self._scratch: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> EmbeddedServers:
        """Build from the app settings: in-memory mode has no data dir."""
        server = settings.server
        return cls(
            data_dir=None if server.in_memory else server.data_dir,
            mongo_url=settings.mongo.url,
            redis_url=settings.redis.url,
            redis_maxmemory_mb=settings.redis.maxmemory_mb,
        )

    @property
    def mongo(self) -> ServerHandle:
        """Return the Mongo handle (after start)."""
        return self._handle("mongo")

    @property
    def redis(self) -> ServerHandle:
        """Return the Redis handle (after start)."""
        return self._handle("redis")

    @property
    def mongo_url(self) -> str:
        """Return the URL to reach MongoDB: the given one or the started server's."""
        return self.mongo.url

    @property
    def redis_url(self) -> str:
        """Return the URL to reach Redis: the given one or the started server's."""
        return self.redis.url

    @property
    def owns_runtime(self) -> bool:
        """Return whether this object wrote the data dir's runtime file."""
        return self._runtime is not None

    def _handle(self, name: str) -> ServerHandle:
        if name not in self.handles:
            raise RuntimeError(f"EmbeddedServers.{name} is not available before start()")
        return self.handles[name]

    async def __aenter__(self) -> EmbeddedServers:
        return await self.start()

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> EmbeddedServers:
        """Check given URLs, attach to a live `serve` via runtime.json, and start whatever is still missing."""
        try:
            await self._check_given()
            if self._missing():
                await self._attach_or_start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def _check_given(self) -> None:
        given = {name: url for name, url in self._given.items() if url}
        await asyncio.gather(*(_CHECKS[name](url, self._check_timeout_s) for name, url in given.items()))
        self.handles.update({name: ServerHandle(name, url, owned=False) for name, url in given.items()})

    def _missing(self) -> list[str]:
        return [name for name in _NAMES if name not in self.handles]

    async def _attach_or_start(self) -> None:
        if self.data_dir is None:
            self._scratch = Path(tempfile.mkdtemp(prefix="recograph-embedded-"))
            await self._start_missing(self._scratch, persist=False)
            return
        async with runtime.start_lock(self.data_dir):
            if await self._attach(self.data_dir):
                return
            await self._start_missing(self.data_dir, persist=True)
            self._write_runtime(self.data_dir)

    async def _attach(self, data_dir: Path) -> bool:
        info = runtime.load(data_dir)
        if info is None:
            return False
        if not runtime.owner_alive(info):
            log.info("embedded.stale_runtime", path=str(runtime.runtime_path(data_dir)), pid=info["pid"])
            runtime.remove(data_dir, pid=info["pid"])
            return False
        # The owner lives and holds the data dir: a server of its that does not answer now is a hiccup to report,
        # never a reason to forget the file and start servers of our own on its locked directories.
        await _check_owned(info, data_dir)
        for name in self._missing():
            self.handles[name] = ServerHandle(name, info[f"{name}_url"], owned=False)
        log.info("embedded.attached", owner_pid=info["pid"], mongo_url=self.mongo_url, redis_url=self.redis_url)
        return True

    async def _start_missing(self, root: Path, *, persist: bool) -> None:
        logs, timeout_s = root / "logs", self._ready_timeout_s
        starters = {
            "mongo": lambda: start_mongo(root / "mongo" if persist else None, logs / "mongo.log", timeout_s),
            "redis": lambda: start_redis(root / "redis", logs / "redis.log", persist=persist, timeout_s=timeout_s,
                                         maxmemory_mb=self._redis_maxmemory_mb),
        }
        names = self._missing()
        results = await asyncio.gather(*(starters[name]() for name in names), return_exceptions=True)
        self.handles.update({name: r for name, r in zip(names, results) if isinstance(r, ServerHandle)})
        failures = [r for r in results if isinstance(r, BaseException)]
        if failures:
            raise failures[0]

    def _write_runtime(self, data_dir: Path) -> None:
        self._runtime = {
            "pid": os.getpid(),
            "mongo_url": self.mongo_url,
            "redis_url": self.redis_url,
            "api_url": None,
            "pid_start": runtime.process_start(os.getpid()),
            "started_at": datetime.now(UTC).isoformat(),
        }
        runtime.write(data_dir, self._runtime)

    @property
    def logs_dir(self) -> Path:
        """Return where the embedded servers (and other children of this process) write their logs."""
        root = self.data_dir or self._scratch
        return root / "logs" if root is not None else Path(tempfile.gettempdir()) / "recograph-logs"

    def set_api_url(self, url: str) -> None:
        """Record the serving API's URL in runtime.json, when this object owns that file."""
        if self._runtime is not None and self.data_dir is not None:
            self._runtime["api_url"] = url
            runtime.write(self.data_dir, self._runtime)

    async def stop(self) -> None:
        """Stop what this object started and remove its runtime file; attached servers keep running."""
        if self._runtime is not None and self.data_dir is not None:
            # Removed first, so no CLI command attaches to servers that are going away.
            runtime.remove(self.data_dir, pid=self._runtime["pid"])
            self._runtime = None
        await asyncio.gather(*(handle.stop() for handle in self.handles.values()))
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


async def _check_owned(info: dict[str, Any], data_dir: Path) -> None:
    """Raise ServerUnavailable, in one line naming each server that does not answer, unless all of the live owner's
    servers answer a ping."""
    owner = f"recograph (pid {info['pid']}) serves {data_dir}"
    urls = {name: info.get(f"{name}_url") for name in _NAMES}
    if not all(isinstance(url, str) for url in urls.values()):
        raise ServerUnavailable(f"{owner} but its {runtime.runtime_path(data_dir)} names no {' or '.join(_NAMES)} URL")
    checks = [_CHECKS[name](url, _ATTACH_PING_S) for name, url in urls.items()]
    results = await asyncio.gather(*checks, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, ServerUnavailable):
            raise result
    if silent := [str(result) for result in results if isinstance(result, ServerUnavailable)]:
        raise ServerUnavailable(f"{owner} but {'; '.join(silent)}; try again once it answers")


async def attach_or_start(
    *, data_dir: Path | None, mongo_url: str | None = None, redis_url: str | None = None
) -> EmbeddedServers:
    """Return servers for data_dir: attached to the live `serve` that owns it, or freshly started."""
    return await EmbeddedServers(data_dir=data_dir, mongo_url=mongo_url, redis_url=redis_url).start()
