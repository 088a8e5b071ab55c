"""The event consumer: read every tenant's stream in one consumer group, apply, acknowledge, reclaim, persist.

At least once: an entry is acknowledged only after its batch was applied, and the script's markers make a second
application a no-op, so a consumer that dies at any point loses nothing and double counts nothing; entries it left
pending are claimed by another consumer once idle for `claim_idle_ms` (XAUTOCLAIM, whose reply has two elements
on Redis 6.2 and three on 7). While a rebuild holds a tenant, that tenant's batch is held in memory, unacknowledged,
and retried, and its stream is not read further. When Redis comes back after an outage (or at start), `on_recover`
runs: the realtime service replays from MongoDB what ingest stored while the stream could not take it; while it
runs, `sweep` (the periodic catch-up) is called every `sweep_every_s` beside it, for events whose append was lost
without Redis going away.

One tenant's bad data never stops the others: a batch whose script fails on its data (a `ResponseError` that is not
Redis refusing all work, or an error preparing it) is applied again in halves down to single entries, so its good
entries still apply; an entry that still fails after `retries` more tries goes to its tenant's dead letters
(domain.realtime.deadletters) and is acknowledged. Errors of Redis itself (connection, timeout, OOM, read-only,
loading) stay what they were: Redis is down, the batch stays pending and is applied once it is back.

Every `trim_every_s`, after a successful flush, each tenant stream is trimmed below its oldest entry not yet
acknowledged, delivered, or persisted by some consumer (domain.realtime.trim).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass

import structlog
from pymongo.errors import PyMongoError
from redis import asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from domain.realtime.contracts import metrics_channel
from domain.realtime.keys import FIELD, GROUP, HEARTBEAT, HEARTBEAT_TTL_MS, STREAMS, stream_key
from domain.realtime.apply import Payload
from domain.realtime.deadletters import Burial, DeadLetters, is_poison
from domain.realtime.persist import SNAPSHOT_LIMIT, SNAPSHOT_RATE, MongoWriter
from domain.realtime.processor import Processor
from domain.realtime.stream import Entry, StreamImpression, decode
from domain.realtime.trim import TRIM_EVERY_S, StreamTrimmer

log = structlog.get_logger()
Message = tuple[bytes | str, dict]
# tenant, messages, their entries, the script payload (or what preparing it raised)
Batch = tuple[str, list[Message], list[Entry], Payload | Exception]
SEND_PAUSE_S = 0.001  # how long the reader yields after launching a batch, so its script is on the wire first
# After a partial batch the consumer waits this long before reading again, so a steady trickle (a served page or a
# few events each millisecond) is read, applied and acknowledged in batches of dozens rather than one by one: each
# round costs four Redis round trips whatever its size. Freshness pays at most this much.
GATHER_S = 0.01
RETRIES = 2  # more tries of an entry found failing on its own before it is buried


@dataclass
class ConsumerStats:
    """Counters since start (exported to Prometheus by the app's metrics)."""

    read: int = 0  # entries read from streams (new and claimed)
    applied: int = 0  # entries that changed state (the rest were already applied)
    claimed: int = 0  # entries reclaimed from dead consumers
    batches: int = 0
    errors: int = 0
    dead_lettered: int = 0  # entries moved to their tenant's dead letters
    last_batch_at: float = 0.0  # wall clock of the last applied batch


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def tenant_of(key: bytes | str) -> str:
    """Return the tenant id of a stream key `t:{T}:events`."""
    text = _text(key)
    return text[text.index("{") + 1 : text.rindex("}")]


def claimed_messages(reply: Sequence) -> tuple[str, list[Message]]:
    """Return (next start id, live messages) of an XAUTOCLAIM reply of Redis 6.2 ([next, entries]) or 7
    ([next, entries, deleted ids]); entries deleted before they were claimed come back empty and are skipped."""
    next_id, entries = _text(reply[0]), reply[1]
    return next_id, [(mid, fields) for mid, fields in entries if mid is not None and fields is not None]


class StreamConsumer:
    """One member of the consumer group; `run` until `stop`."""

    def __init__(
        self, client: aioredis.Redis, processor: Processor, writer: MongoWriter, *, name: str | None = None,
        batch: int = 1000, block_ms: int = 20, claim_idle_ms: int = 30_000, claim_every_s: float = 5.0,
        flush_every_s: float = 1.0, on_recover: Callable[[], Awaitable[None]] | None = None,
        sweep: Callable[[], Awaitable[None]] | None = None, sweep_every_s: float = 30.0,
        dead_letters: DeadLetters | None = None, retries: int = RETRIES, trim_every_s: float = TRIM_EVERY_S,
    ) -> None:
        self._r = client
        self._processor = processor
        self._writer = writer
        self.name = name or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._batch, self._block_ms = batch, block_ms
        self._claim_idle_ms, self._claim_every_s, self._flush_every_s = claim_idle_ms, claim_every_s, flush_every_s
        self._on_recover = on_recover
        self._sweep, self._sweep_every_s = sweep, sweep_every_s
        self._dead = dead_letters or DeadLetters(client)
        self._retries = retries
        self._trimmer, self._trim_every_s = StreamTrimmer(client, self.name), trim_every_s
        self._streams: dict[str, str] = {}  # stream key -> tenant, with the group created
        self._held: dict[str, list[Message]] = {}  # tenant -> a batch a rebuild made wait
        self._staged: list[Batch] = []  # prepared, not yet sent: at most one round behind the reads
        self._inflight: asyncio.Task[None] | None = None  # the batches being applied
        self._stopping = asyncio.Event()
        self.stats = ConsumerStats()

    def stop(self) -> None:
        """Ask `run` to return after the current step."""
        self._stopping.set()

    async def run(self) -> None:
        """Consume until stopped, writing to MongoDB beside it; survive Redis and MongoDB outages, catching up when
        Redis returns."""
        flusher = asyncio.create_task(self._flush_loop(), name="recograph-consumer-flush")
        sweeper = asyncio.create_task(self._sweep_loop(), name="recograph-consumer-sweep")
        try:
            await self._consume_loop()
        finally:
            await asyncio.gather(flusher, sweeper, self._final_settle(), return_exceptions=True)
            await self._final_flush()

    async def _final_settle(self) -> None:
        try:
            await self.settle()
        except (RedisError, OSError, PyMongoError) as exc:
            log.warning("consumer.final_apply_failed", error=str(exc))

    async def _consume_loop(self) -> None:
        down, next_claim = True, 0.0
        while not self._stopping.is_set():
            try:
                if down:
                    await self._recover()
                    down = False
                if 0 < await self.step() < self._batch:
                    await self._pause(GATHER_S)
                if (now := time.monotonic()) >= next_claim:
                    await self.claim()
                    next_claim = now + self._claim_every_s
            except (RedisError, OSError) as exc:
                down = True
                self._failed("consumer.redis_unavailable", exc)
                await self._pause(0.5)
            except PyMongoError as exc:  # item metadata or scenario weights could not be read: retried
                self._failed("consumer.mongo_unavailable", exc)
                await self._pause(0.5)
            except Exception as exc:  # a defect must not end real time for every tenant: start over, as after Redis
                down = True
                self.stats.errors += 1
                log.exception("consumer.failed", error=str(exc))
                await self._pause(1.0)

    async def _flush_loop(self) -> None:
        """Write to MongoDB every flush_every_s in its own task, so slow writes never hold the stream back; say
        every second that a consumer runs (profile reads wait for it to apply their users' events)."""
        next_flush = next_trim = time.monotonic() + self._flush_every_s
        limit = max(1, int(SNAPSHOT_RATE * self._flush_every_s))
        while not self._stopping.is_set():
            try:
                await self._r.set(HEARTBEAT, self.name, px=HEARTBEAT_TTL_MS)
                if (now := time.monotonic()) >= next_trim:  # streams shrink once what they hold is persisted
                    next_flush, next_trim = now + self._flush_every_s, now + self._trim_every_s
                    await self.flush_and_trim(limit)
                elif now >= next_flush:
                    next_flush = now + self._flush_every_s
                    await self.flush(limit)
            except (RedisError, OSError, PyMongoError) as exc:
                self._failed("consumer.flush_failed", exc)
            await self._pause(min(1.0, self._flush_every_s))

    async def _sweep_loop(self) -> None:
        """Call `sweep` every sweep_every_s (the first time one period after start, when `on_recover` has just caught
        up), surviving store failures."""
        if self._sweep is None:
            return
        while not self._stopping.is_set():
            await self._pause(self._sweep_every_s)
            if self._stopping.is_set():
                return
            try:
                await self._sweep()
            except (RedisError, OSError, PyMongoError) as exc:
                self._failed("consumer.sweep_failed", exc)
            self.stats.dead_lettered = self._dead.buried  # the sweep buries through the same dead letters

    def _failed(self, event: str, exc: Exception, **fields: object) -> None:
        self.stats.errors += 1
        log.warning(event, error=str(exc), **fields)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            pass

    async def _recover(self) -> None:
        # Batches read before the outage stay pending under this consumer's name: `claim` takes them back.
        self._staged.clear()
        if self._inflight is not None:
            await asyncio.gather(self._inflight, return_exceptions=True)
            self._inflight = None
        self._streams.clear()  # a restarted Redis may have lost the groups
        await self.discover()
        if self._on_recover is not None:
            await self._on_recover()

    async def _final_flush(self) -> None:
        try:
            await self.flush()
        except (RedisError, OSError, PyMongoError) as exc:
            log.warning("consumer.final_flush_failed", error=str(exc))

    async def discover(self) -> None:
        """Create the group on every tenant stream not yet known."""
        await self._join(await self._r.smembers(STREAMS))

    async def _join(self, tenants: Iterable[bytes | str]) -> None:
        """Create the group on each of these tenants' streams not yet known."""
        for raw in tenants:
            tenant_id = _text(raw)
            key = stream_key(tenant_id)
            if key in self._streams:
                continue
            try:
                await self._r.xgroup_create(key, GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise
            self._streams[key] = tenant_id

    async def step(self) -> int:
        """Read one round of new entries and prepare them while last round's batches are applied; return entries
        read. With a backlog (full batches) the read-ahead keeps Redis (running the script) and this process
        (preparing the next batch) busy at once; otherwise what was read is applied before returning."""
        await self._retry_held()
        wanted = {k: ">" for k, t in self._streams.items() if t not in self._held}
        if not wanted:
            await self.discover()
            await self.settle()
            await self._pause(self._block_ms / 1000)
            return 0
        try:
            # One round trip: the tenant streams (new ones are read from the next step on), then the entries.
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.smembers(STREAMS)
                # No BLOCK: a read blocked on many streams on Redis 6.2 was seen to stay blocked for tens of seconds
                # past its 50 ms (a stream deleted or trimmed under it), holding real time back for every tenant.
                # An idle consumer polls every `block_ms` instead.
                pipe.xreadgroup(GROUP, self.name, wanted, count=self._batch)
                tenants, reply = await pipe.execute()
        except ResponseError as exc:
            if "NOGROUP" not in str(exc):
                raise
            self._streams.clear()  # the stream was deleted (or Redis restarted): recreate the groups
            return 0
        await self._join(tenants)
        if self._launch():  # read first: a read sent while a script runs would wait for it
            # Let the apply task send its script before preparing: preparing never yields to the loop, so without
            # this the script would only be sent once this round's batches were prepared, and the two would not
            # overlap. The task runs until it waits for the reply, well within the pause.
            await asyncio.sleep(SEND_PAUSE_S)
        sizes = [len(messages) for _, messages in reply or []]
        for key, messages in reply or []:
            await self._stage(tenant_of(key), messages)
        await self._wait()
        if max(sizes, default=0) < self._batch:  # no backlog: apply now rather than after the next read
            await self.settle()
        self.stats.read += sum(sizes)
        if not sizes:
            await self._pause(self._block_ms / 1000)
        return sum(sizes)

    async def _retry_held(self) -> None:
        if not self._held:
            return
        await self.settle()  # a batch in flight may be held too
        for tenant_id in list(self._held):
            await self._stage(tenant_id, self._held.pop(tenant_id))
        await self.settle()

    async def claim(self) -> int:
        """Take over entries other consumers left pending longer than claim_idle_ms; return how many."""
        claimed = 0
        for key, tenant_id in list(self._streams.items()):
            start = "0-0"
            while True:
                reply = await self._r.xautoclaim(key, GROUP, self.name, self._claim_idle_ms, start, count=self._batch)
                start, messages = claimed_messages(reply)
                if messages:
                    claimed += len(messages)
                    await self._stage(tenant_id, messages)
                    await self.settle()
                if start == "0-0" or not messages:
                    break
        self.stats.claimed += claimed
        return claimed

    async def flush(self, limit: int = SNAPSHOT_LIMIT) -> int:
        """Write buffered pages and up to `limit` dirty profiles per tenant to MongoDB; then clear this consumer's
        unflushed floors (domain.realtime.trim)."""
        self._trimmer.flushing()
        try:
            written = await self._writer.flush(limit)
        except BaseException:
            self._trimmer.failed()
            raise
        await self._trimmer.flushed()
        return written

    async def flush_and_trim(self, limit: int = SNAPSHOT_LIMIT) -> int:
        """Flush, then trim each known tenant stream below its oldest entry not yet acknowledged, delivered or
        persisted (bounds read before the flush); return how many entries went."""
        bounds = await self._trimmer.bounds(self._streams.values())
        await self.flush(limit)
        return await self._trimmer.trim(bounds)

    async def _stage(self, tenant_id: str, messages: list[Message]) -> None:
        """Prepare a batch (item metadata, weights, the script payload) to be applied by the next `_launch`."""
        entries = [e for _, fields in messages if (e := _entry(fields)) is not None]
        payload: Payload | Exception
        try:
            payload = await self._processor.prepare(entries, tenant_id=tenant_id)
        except Exception as exc:
            if not is_poison(exc):
                raise
            payload = exc  # isolated entry by entry when its turn to apply comes
        self._staged.append((tenant_id, messages, entries, payload))

    def _launch(self) -> bool:
        """Start applying the prepared batches (in order, in one task) unless some are in flight already; return
        whether a task started."""
        if self._staged and self._inflight is None:
            batches, self._staged = self._staged, []
            self._inflight = asyncio.create_task(self._apply_all(batches))
            return True
        return False

    async def _wait(self) -> None:
        if self._inflight is not None:
            task, self._inflight = self._inflight, None
            await task

    async def settle(self) -> None:
        """Apply every prepared batch and wait for them all (raising what applying raised)."""
        await self._wait()
        self._launch()
        await self._wait()

    async def _apply_all(self, batches: list[Batch]) -> None:
        for batch in batches:
            await self._apply(*batch)

    async def _apply(
        self, tenant_id: str, messages: list[Message], entries: list[Entry], payload: Payload | Exception
    ) -> None:
        if isinstance(payload, Exception):
            await self._isolate(tenant_id, messages, payload)
            return
        try:
            applied = await self._processor.run(payload, tenant_id=tenant_id)
        except Exception as exc:
            if not is_poison(exc):
                raise
            await self._isolate(tenant_id, messages, exc)
            return
        await self._applied(tenant_id, messages, entries, applied)

    async def _isolate(self, tenant_id: str, messages: list[Message], error: Exception) -> None:
        """Apply a failing batch again in halves, down to single entries, so that only the entries at fault are
        left; bury each of those that still fails after `retries` more tries."""
        self._failed("consumer.batch_failed", error, tenant_id=tenant_id, entries=len(messages))
        parts = [messages]
        while parts:
            part = parts.pop()
            failure = await self._try(tenant_id, part)
            if failure is None:
                continue
            if len(part) > 1:
                half = len(part) // 2
                parts += [part[half:], part[:half]]  # the first half is tried next: entries keep their order
            else:
                await self._retry_or_bury(tenant_id, part[0], failure)

    async def _try(self, tenant_id: str, messages: list[Message]) -> Exception | None:
        """Prepare and apply entries; return the error when it is theirs (Redis and MongoDB errors propagate)."""
        entries = [e for _, fields in messages if (e := _entry(fields)) is not None]
        try:
            payload = await self._processor.prepare(entries, tenant_id=tenant_id)
            applied = await self._processor.run(payload, tenant_id=tenant_id)
        except Exception as exc:
            if not is_poison(exc):
                raise
            return exc
        await self._applied(tenant_id, messages, entries, applied)
        return None

    async def _retry_or_bury(self, tenant_id: str, message: Message, failure: Exception) -> None:
        for _ in range(self._retries):
            again = await self._try(tenant_id, [message])
            if again is None:
                return
            failure = again
        mid, fields = message
        raw = fields.get(FIELD.encode()) or fields.get(FIELD) or b""
        await self._dead.bury([Burial(_text(raw), f"{type(failure).__name__}: {failure}", _text(mid))],
                              tenant_id=tenant_id)
        self.stats.dead_lettered = self._dead.buried
        log.error("consumer.dead_lettered", tenant_id=tenant_id, entry_id=_text(mid), error=str(failure))

    async def _applied(self, tenant_id: str, messages: list[Message], entries: list[Entry], applied: int) -> None:
        if applied < 0:
            self._held.setdefault(tenant_id, []).extend(messages)  # a rebuild holds the tenant: retry, unacknowledged
            return
        self.stats.applied += applied
        self.stats.batches += 1
        self.stats.last_batch_at = time.time()
        await self._acknowledge(tenant_id, messages, entries)

    async def _acknowledge(self, tenant_id: str, messages: list[Message], entries: list[Entry]) -> None:
        scenarios = {e.scenario_id for e in entries}
        pages = [e for e in entries if isinstance(e, StreamImpression)]
        # Buffered before the XACK, so a flush that sees the entries acknowledged also writes their pages (a page
        # buffered twice, after a failed XACK, is written once: impressions are keyed by request id).
        self._writer.add(tenant_id, pages)
        async with self._r.pipeline(transaction=False) as pipe:
            if pages:  # the stream keeps these entries until their pages are written (domain.realtime.trim)
                self._trimmer.note(pipe, tenant_id, [mid for mid, _ in messages])
            pipe.xack(stream_key(tenant_id), GROUP, *[mid for mid, _ in messages])
            for scenario_id in sorted(scenarios):
                pipe.publish(metrics_channel(tenant_id), scenario_id)
            await pipe.execute()


def _entry(fields: dict) -> Entry | None:
    raw = fields.get(FIELD.encode()) or fields.get(FIELD)
    return decode(raw) if raw is not None else None
