"""A small in-process LRU with expiry, for objects read on every request (items shown in lists, scenarios), a
helper that re-reads stale entries in the background so requests do not wait on the store for them, and the
notices that tell other processes (serving children, other pods) to drop what a write made stale."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

import structlog
from redis.exceptions import RedisError

from models.channel import Channel

V = TypeVar("V")
K = TypeVar("K", bound=Hashable)

log = structlog.get_logger()


class HotCache(Generic[V]):
    """Keep up to `size` values for `ttl_s` seconds; other API pods see changes within ttl_s.

    With `stale_s`, a value past its TTL is still returned by `lookup` for that much longer, marked stale, so the
    caller can answer at once and re-read it in the background (stale-while-revalidate); `get` never returns it.
    """

    def __init__(self, *, size: int = 50_000, ttl_s: float = 30.0, stale_s: float = 0.0) -> None:
        self._data: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._size = size
        self._ttl = ttl_s
        self._stale = stale_s

    def get(self, key: Hashable) -> V | None:
        """Return a live value or None."""
        value, stale = self.lookup(key)
        return None if stale else value

    def lookup(self, key: Hashable) -> tuple[V | None, bool]:
        """Return (value, stale): a live value with False, a value past its TTL but within `stale_s` with True (re-read
        it), else (None, True)."""
        entry = self._data.get(key)
        if entry is None:
            return None, True
        expires, value = entry
        now = time.monotonic()
        if expires < now:
            if expires + self._stale < now:
                del self._data[key]
                return None, True
            return value, True
        self._data.move_to_end(key)
        return value, False

    def put(self, key: Hashable, value: V) -> None:
        """Store a value, evicting the least recently used beyond the size."""
        self._data[key] = (time.monotonic() + self._ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def drop_where(self, predicate: Callable[[Hashable], bool]) -> None:
        """Forget every key the predicate accepts."""
        for key in [k for k in self._data if predicate(k)]:
            del self._data[key]

    def drop(self, keys: Iterable[Hashable]) -> None:
        """Forget keys (after a local write)."""
        for key in keys:
            self._data.pop(key, None)


class Revalidator(Generic[K]):
    """Re-read keys in background tasks, each key at most once at a time; failures are logged and retried on the
    next stale read."""

    def __init__(self, reread: Callable[[list[K]], Awaitable[object]], *, name: str) -> None:
        self._reread = reread
        self._name = name
        self._pending: set[K] = set()
        self._tasks: set[asyncio.Task] = set()

    def schedule(self, keys: Iterable[K]) -> None:
        """Start re-reading the keys not already being re-read."""
        fresh = [k for k in dict.fromkeys(keys) if k not in self._pending]
        if not fresh:
            return
        self._pending.update(fresh)
        task = asyncio.create_task(self._run(fresh), name=f"recograph.revalidate.{self._name}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, keys: list[K]) -> None:
        try:
            await self._reread(keys)
        except Exception as exc:  # noqa: BLE001 - a failed re-read leaves the stale value; the next read retries
            log.warning("hotcache.revalidate_failed", cache=self._name, keys=len(keys), error=repr(exc))
        finally:
            self._pending.difference_update(keys)

    async def drain(self) -> None:
        """Wait for the re-reads in flight (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)


class Invalidations:
    """Tell the other processes which of their cached entries a write here made stale, and drop ours when they tell.

    Notices travel on Redis pub/sub, at most once: an entry whose notice is lost (Redis away, a process starting)
    still expires with its cache's TTL. Each kind of entry has one handler, `on(kind, handler(tenant_id, keys))`.
    """

    def __init__(self, channel: Channel | None) -> None:
        self._channel = channel
        self._origin = uuid.uuid4().hex  # our own notices come back too: skip them
        self._handlers: dict[str, Callable[[str, list[str]], None]] = {}

    def on(self, kind: str, handler: Callable[[str, list[str]], None]) -> None:
        """Call handler(tenant_id, keys) for each notice of this kind from another process."""
        self._handlers[kind] = handler

    async def publish(self, kind: str, tenant_id: str, keys: Iterable[str] = ()) -> None:
        """Tell the other processes (never raises: a lost notice only leaves their entries to expire)."""
        if self._channel is None:
            return
        notice = {"origin": self._origin, "kind": kind, "tenant_id": tenant_id, "keys": list(keys)}
        try:
            await self._channel.publish(notice)
        except (RedisError, OSError) as exc:
            log.warning("invalidations.publish_failed", kind=kind, error=str(exc))

    async def listen(self) -> None:
        """Apply the other processes' notices until cancelled (returns at once without a channel)."""
        if self._channel is not None:
            await self._channel.listen(self._heard)

    async def _heard(self, notice: dict[str, Any]) -> None:
        handler = self._handlers.get(str(notice.get("kind")))
        if handler is None or notice.get("origin") == self._origin:
            return
        keys = notice.get("keys")
        handler(str(notice.get("tenant_id")), [str(k) for k in keys] if isinstance(keys, list) else [])
