"""Live metrics for subscribers and exporters: snapshots on demand, and a stream that follows the consumer.

One pattern subscription per process (`MetricsFeed`) hears every tenant's metrics channel and wakes the local
listeners of the scenario named in each message; it also remembers which scenarios had traffic lately (what the
Prometheus exporter refreshes). A stream sends a snapshot at once, then at most one per `min_interval_s` while
messages arrive for its scenario (bursts coalesce into one read), and nothing while the scenario is idle.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from domain.errors import Unavailable
from domain.realtime import contracts
from domain.realtime.snapshots import MetricsSnapshot, MetricsWindow, SnapshotReader, SnapshotRequest
from models.cache import Cache, RedisCache

log = structlog.get_logger()

_MARK = "\x00"
_CHANNEL_PREFIX, _, _CHANNEL_SUFFIX = contracts.metrics_channel(_MARK).partition(_MARK)
# Every tenant's channel: Redis glob patterns treat the hash-tag braces literally.
CHANNEL_PATTERN = contracts.metrics_channel("*")
RECENT_TTL_S = 3600.0  # a scenario silent this long drops out of `recent()` (and of the exported gauges)
MAX_RECENT = 200  # bounds the exported label sets however many scenarios are busy
POLL_S = 1.0  # how long one read of the pub/sub socket waits
RETRY_S = 1.0  # pause before resubscribing after Redis failed
START_TIMEOUT_S = 2.0


def tenant_of(channel: str) -> str | None:
    """Return the tenant whose metrics channel this is, or None for another channel."""
    if channel.startswith(_CHANNEL_PREFIX) and channel.endswith(_CHANNEL_SUFFIX):
        return channel[len(_CHANNEL_PREFIX): len(channel) - len(_CHANNEL_SUFFIX)] or None
    return None


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


class Listener:
    """Wakes when a scenario's counters moved, or fails when the feed lost Redis."""

    def __init__(self) -> None:
        self._moved = asyncio.Event()
        self._error: str | None = None

    def notify(self) -> None:
        """Note that the counters moved."""
        self._moved.set()

    def fail(self, reason: str) -> None:
        """Note that no more news will come, and why."""
        self._error = reason
        self._moved.set()

    async def wait(self) -> None:
        """Wait for news; raise Unavailable when the feed failed."""
        await self._moved.wait()
        self._raise_if_failed()

    def clear(self) -> None:
        """Forget news received so far (a snapshot read next includes it)."""
        self._raise_if_failed()
        self._moved.clear()

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise Unavailable(f"live metrics stopped: {self._error}")


class MetricsFeed:
    """One pattern subscription to every tenant's metrics channel, fanned out to in-process listeners."""

    def __init__(
        self, client: aioredis.Redis, *, recent_ttl_s: float = RECENT_TTL_S, max_recent: int = MAX_RECENT
    ) -> None:
        self._r = client
        self._recent_ttl_s = recent_ttl_s
        self._max_recent = max_recent
        self._listeners: dict[tuple[str, str], set[Listener]] = {}
        self._recent: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._subscribed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout_s: float = START_TIMEOUT_S) -> None:
        """Subscribe (once per process); raise Unavailable when Redis does not accept it within timeout_s."""
        if self._task is None or self._task.done():
            self._subscribed.clear()
            self._task = asyncio.create_task(self._run(), name="recograph.metrics-feed")
        try:
            await asyncio.wait_for(self._subscribed.wait(), timeout_s)
        except TimeoutError:
            raise Unavailable("live metrics need Redis pub/sub, which cannot be reached") from None

    async def close(self) -> None:
        """Stop listening and fail every listener still waiting."""
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._fail_all("the server is shutting down")

    @asynccontextmanager
    async def listen(self, tenant_id: str, scenario_id: str) -> AsyncIterator[Listener]:
        """Yield a listener woken by the scenario's messages; it is removed on exit."""
        await self.start()
        key = (tenant_id, scenario_id)
        listener = Listener()
        self._listeners.setdefault(key, set()).add(listener)
        try:
            yield listener
        finally:
            listeners = self._listeners.get(key, set())
            listeners.discard(listener)
            if not listeners:
                self._listeners.pop(key, None)

    def listeners(self) -> int:
        """Return how many listeners are registered (for tests and gauges)."""
        return sum(len(s) for s in self._listeners.values())

    def recent(self, now: float | None = None) -> list[tuple[str, str]]:
        """Return the (tenant, scenario) pairs heard from within the TTL, most recent first."""
        now = time.monotonic() if now is None else now
        while self._recent and next(iter(self._recent.values())) < now - self._recent_ttl_s:
            self._recent.popitem(last=False)
        return list(reversed(self._recent))

    def heard(self, tenant_id: str, scenario_id: str, now: float | None = None) -> None:
        """Record news for a scenario: remember it as recent and wake its listeners."""
        key = (tenant_id, scenario_id)
        self._recent[key] = time.monotonic() if now is None else now
        self._recent.move_to_end(key)
        while len(self._recent) > self._max_recent:
            self._recent.popitem(last=False)
        for listener in self._listeners.get(key, ()):
            listener.notify()

    async def _run(self) -> None:
        while True:
            try:
                await self._listen_once()
            except (RedisError, OSError) as exc:
                self._lost(f"Redis failed ({exc})")
                log.warning("metrics_feed.redis_failed", error=str(exc))
            except Exception as exc:  # a long-lived loop: waiting subscribers must hear of any failure
                self._lost(f"the metrics feed failed ({type(exc).__name__})")
                log.exception("metrics_feed.failed")
            await asyncio.sleep(RETRY_S)

    def _lost(self, reason: str) -> None:
        self._subscribed.clear()
        self._fail_all(reason)

    async def _listen_once(self) -> None:
        pubsub = self._r.pubsub(ignore_subscribe_messages=True)
        try:
            await pubsub.psubscribe(CHANNEL_PATTERN)
            self._subscribed.set()
            while True:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=POLL_S)
                if message is not None and message.get("type") == "pmessage":
                    self._dispatch(_text(message["channel"]), _text(message["data"]))
        finally:
            with suppress(RedisError, OSError):
                await pubsub.aclose()

    def _dispatch(self, channel: str, data: str) -> None:
        tenant_id = tenant_of(channel)
        scenario_id = data.strip()
        if tenant_id and scenario_id:
            self.heard(tenant_id, scenario_id)

    def _fail_all(self, reason: str) -> None:
        for listeners in self._listeners.values():
            for listener in listeners:
                listener.fail(reason)
        self._listeners.clear()


class LiveMetrics:
    """Snapshots and snapshot streams of scenarios' live metrics; needs Redis (any other cache: unavailable)."""

    def __init__(self, client: aioredis.Redis | None, *, min_interval_s: float = 1.0) -> None:
        self._reader = SnapshotReader(client) if client is not None else None
        self.feed = MetricsFeed(client) if client is not None else None
        self._min_interval_s = min_interval_s

    @classmethod
    def over(cls, cache: Cache) -> LiveMetrics:
        """Return live metrics over the cache's Redis client, or an unavailable one for an in-memory cache."""
        return cls(cache.client if isinstance(cache, RedisCache) else None)

    @property
    def available(self) -> bool:
        """Tell whether a Redis client backs these metrics."""
        return self._reader is not None

    async def snapshot(
        self, *, tenant_id: str, scenario_id: str, window: MetricsWindow = MetricsWindow.HOUR
    ) -> MetricsSnapshot:
        """Return the scenario's snapshot over the window ending now."""
        return await self._require_reader().read(tenant_id=tenant_id, scenario_id=scenario_id, window=window)

    async def snapshots(self, requests: list[SnapshotRequest]) -> list[MetricsSnapshot]:
        """Return many snapshots from one round trip."""
        return await self._require_reader().read_many(requests)

    async def stream(
        self, *, tenant_id: str, scenario_id: str, window: MetricsWindow = MetricsWindow.HOUR
    ) -> AsyncIterator[MetricsSnapshot]:
        """Yield a snapshot now, then a fresh one (at most one per interval) whenever the counters move."""
        reader, feed = self._require_reader(), self._require_feed()
        loop = asyncio.get_running_loop()
        async with feed.listen(tenant_id, scenario_id) as listener:
            yield await reader.read(tenant_id=tenant_id, scenario_id=scenario_id, window=window)
            last = loop.time()
            while True:
                await listener.wait()
                await asyncio.sleep(max(0.0, last + self._min_interval_s - loop.time()))
                listener.clear()  # what arrived until now is in the read below
                last = loop.time()
                yield await reader.read(tenant_id=tenant_id, scenario_id=scenario_id, window=window)

    async def start(self) -> None:
        """Start hearing the metrics channels (also done lazily by the first stream)."""
        await self._require_feed().start()

    def recent(self) -> list[tuple[str, str]]:
        """Return the (tenant, scenario) pairs with traffic lately, most recent first."""
        return self.feed.recent() if self.feed is not None else []

    async def close(self) -> None:
        """Stop the feed."""
        if self.feed is not None:
            await self.feed.close()

    def _require_reader(self) -> SnapshotReader:
        if self._reader is None:
            raise Unavailable("live metrics need Redis; this process runs without it")
        return self._reader

    def _require_feed(self) -> MetricsFeed:
        if self.feed is None:
            raise Unavailable("live metrics need Redis pub/sub; this process runs without it")
        return self.feed
