"""Rebuild a returning user's Redis state from MongoDB in the background, never on the request path.

A user's keys expire after the inactivity RECOGRAPH_USER_STATE_TTL_DAYS (models.cache). A request finds a user
without state cheaply: serving reads the cache version `uv` anyway (and whether it is there at all), and ingest's
INCR of it answers 1 when it was missing. Either notes the user here (`note`, a bounded in-process queue); a task
replays the user's stored events through the consumer's script, profile and seen sets only (`ps`: popularity and
metrics of old events stay as counted), then bumps `uv` so cached answers recompute with the restored seen sets.
With nothing replayed (a new user) it writes `uv` as 0: the user is checked, and the answer cached under version 0
stays valid.

Which events: those received before the markers' horizon (MARKER_TTL_S, minus an hour). Keys expire only after
at least 4 days without an event (RECOGRAPH_USER_STATE_TTL_DAYS's minimum), longer than the markers reach, so
every event received before the horizon was applied before the keys expired and is missing now, and every later
one was applied since (or is on its way through the stream) and is present. A user whose profile hash counts more applied events than MongoDB holds after
the horizon kept their state (uv went missing alone, or a restore already ran): nothing is replayed. A claim per
user held while restoring (`t:{T}:restore:{user}`, at most CLAIM_TTL_S) keeps two processes from replaying the
same user at once.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime

import structlog
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from domain import erasure
from domain.realtime.apply import MARKER_TTL_S
from domain.realtime.keys import profile_key
from domain.realtime.processor import Processor
from domain.realtime.replay import stored_events
from domain.realtime.stream import StreamEvent
from models.cache import USER_STATE_TTL_S, tenant_key
from models.documents import Interaction, UserProfile, composite_id

log = structlog.get_logger()
QUEUE_MAX = 10_000  # users waiting for a restore; past it notes are dropped (the user is noted again next request)
CLAIM_TTL_S = 300
RESTORE_ASPECTS = "ps"
REBUILD_WAIT_S = 60.0
RESTORE_PAUSE_S = 0.1  # at most about 10 users checked a second per process


# KEYS: the user's cache version, their restore claim, their erasure marker; ARGV: the user ttl, whether events
# were replayed. Replayed events change the seen sets: the version moves on and answers cached before are stale.
# Nothing replayed (a new user, or one whose state was whole): the version is only written when missing, as 0, the
# version those answers were cached under, so the user's next request still finds them and notes nobody.
_DONE = """
if redis.call('EXISTS', KEYS[3]) == 0 then
  if ARGV[2] == '1' then
    redis.call('INCR', KEYS[1])
    redis.call('EXPIRE', KEYS[1], ARGV[1])
  else
    redis.call('SET', KEYS[1], '0', 'NX', 'EX', ARGV[1])
  end
end
redis.call('DEL', KEYS[2])
return 1
"""


class ReturningUsers:
    """Queue of users to restore and the task that restores them (`start`/`stop` with the serving process)."""

    def __init__(self, client: aioredis.Redis, processor: Processor, *, user_ttl_s: int = USER_STATE_TTL_S) -> None:
        self._r = client
        self._processor = processor
        self._user_ttl_s = user_ttl_s
        self._queue: asyncio.Queue[tuple[str, str]] | None = None
        self._waiting: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self.restored = 0  # users whose events were replayed by this process
        self._done = client.register_script(_DONE)

    def note(self, user_id: str, *, tenant_id: str) -> None:
        """Queue the user for a restore unless queued already, the queue is full, or no task runs."""
        key = (tenant_id, user_id)
        if self._queue is None or not user_id or key in self._waiting or self._queue.full():
            return
        self._waiting.add(key)
        self._queue.put_nowait(key)

    def start(self) -> None:
        """Start restoring noted users in a task of the running loop."""
        if self._task is None:
            self._queue = asyncio.Queue(QUEUE_MAX)
            self._task = asyncio.create_task(self._run(), name="recograph-returning-users")

    async def stop(self) -> None:
        """Stop the task; users still queued are noted again on their next request."""
        task, self._task, self._queue = self._task, None, None
        self._waiting.clear()
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        queue = self._queue
        assert queue is not None
        while True:
            tenant_id, user_id = await queue.get()
            try:
                await self.restore(user_id, tenant_id=tenant_id)
                await asyncio.sleep(RESTORE_PAUSE_S)  # a burst of new users must not flood MongoDB with reads
            except Exception as exc:  # noqa: BLE001 - a store outage or one user's bad data must not end restores
                log.warning("realtime.restore_failed", tenant_id=tenant_id, error=repr(exc))
                await self._release(tenant_id, user_id)  # the user's next request notes them again
            finally:
                self._waiting.discard((tenant_id, user_id))

    async def _release(self, tenant_id: str, user_id: str) -> None:
        try:
            await self._r.delete(_claim_key(tenant_id, user_id))
        except (RedisError, OSError):
            pass  # the claim expires by itself

    async def restore(self, user_id: str, *, tenant_id: str) -> int:
        """Replay the user's stored events their expired keys held (see the module docstring); return how many."""
        if not await self._r.set(_claim_key(tenant_id, user_id), "1", nx=True, ex=CLAIM_TTL_S):
            return 0  # another process restores the user right now
        horizon = datetime.fromtimestamp(time.time() - MARKER_TTL_S + 3600, UTC)
        applied = 0
        if await self._known(user_id, tenant_id=tenant_id) and await self._expired(user_id, horizon,
                                                                                     tenant_id=tenant_id):
            # By user only (the user index): a range on received_at beside it lets the embedded server pick the
            # tenant-wide (tenant_id, received_at) index and walk every event of the tenant.
            before = int(horizon.timestamp() * 1000)
            async for events in stored_events({"tenant_id": tenant_id, "user_id": user_id}):
                if old := [e for e in events if e.received_ms < before]:
                    applied += await self._apply(old, tenant_id=tenant_id)
        # Answers cached before the seen sets came back are stale, and a version stops further notes; a user erased
        # meanwhile gets no key back. A restore noted before this one ended finds the profile complete (`_expired`).
        erased = tenant_key(tenant_id, "erased", await erasure.user_digest(user_id, tenant_id=tenant_id))
        await self._done(keys=[tenant_key(tenant_id, "uv", user_id), _claim_key(tenant_id, user_id), erased],
                         args=[self._user_ttl_s, "1" if applied else "0"])
        if applied:
            self.restored += 1
            log.info("realtime.user_restored", tenant_id=tenant_id, events=applied)
        return applied

    async def _apply(self, events: list[StreamEvent], *, tenant_id: str) -> int:
        """Apply events' profile and seen parts, waiting (up to REBUILD_WAIT_S) while a rebuild holds the tenant."""
        aspects = dict.fromkeys(range(len(events)), RESTORE_ASPECTS)
        deadline = time.monotonic() + REBUILD_WAIT_S
        while (n := await self._processor.apply(events, tenant_id=tenant_id, aspects=aspects,
                                                check_markers=False)) < 0:
            if time.monotonic() > deadline:
                raise TimeoutError("a rebuild of the tenant held it longer than a restore waits")
            await asyncio.sleep(0.2)
        return n

    @staticmethod
    async def _known(user_id: str, *, tenant_id: str) -> bool:
        """Return whether the user was ever snapshotted (one read by id): a user without a snapshot is new, not
        returning, and costs no scan of their events. Every user active before the horizon was snapshotted."""
        found = await UserProfile.get_pymongo_collection().find_one({"_id": composite_id(tenant_id, user_id)},
                                                                     {"_id": 1})
        return found is not None

    async def _expired(self, user_id: str, horizon: datetime, *, tenant_id: str) -> bool:
        """Return whether the user's profile hash counts no more applied events than those received since the
        horizon (it lost the older ones)."""
        applied = int(await self._r.hget(profile_key(tenant_id, user_id), "n") or 0)
        if applied == 0:
            return True
        # The user's own events through the user index, stopping as soon as they outnumber what the hash applied
        # (see `restore` on why not a received_at range).
        recent = 0
        cursor = Interaction.get_pymongo_collection().find(
            {"tenant_id": tenant_id, "user_id": user_id}, {"received_at": 1}, batch_size=1000)
        async for doc in cursor:
            received = doc["received_at"]
            received = received if received.tzinfo else received.replace(tzinfo=UTC)
            if received >= horizon:
                recent += 1
                if recent >= applied:
                    await cursor.close()
                    return True
        return applied <= recent


def _claim_key(tenant_id: str, user_id: str) -> str:
    return tenant_key(tenant_id, "restore", user_id)
