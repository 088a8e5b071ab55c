"""Hot state in Redis: item metadata for validation, seen sets, per-user cache versions.

One Protocol, two implementations (`RedisCache`, `InMemoryCache`) that pass the same contract tests. Every key is
prefixed `t:{tenant}:`; the braces are a Redis Cluster hash tag, so one tenant's keys live on one slot.
Callers treat `CacheUnavailable` as "degraded": the record of truth is MongoDB.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Protocol

from redis import asyncio as aioredis
from redis.exceptions import RedisError

from models.breaker import DEFAULT_COOLDOWN_S, DEFAULT_FAILURES, CircuitBreaker
from models.redis_guard import guarded_redis


class CacheUnavailable(Exception):
    """Redis could not be reached or answered with an error."""


@dataclass(frozen=True, slots=True)
class ItemMeta:
    """What ingest needs to know about an item without asking MongoDB."""

    scenarios: tuple[str, ...]
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    status: str = "ACTIVE"
    duration_seconds: float | None = None

    def encode(self) -> str:
        """Serialise compactly for a Redis hash field."""
        return json.dumps(
            [list(self.scenarios), list(self.categories), list(self.tags), self.status, self.duration_seconds],
            separators=(",", ":"),
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> ItemMeta:
        """Parse what `encode` wrote (memoised: the consumer and ingest read the same items again and again)."""
        return _decode_meta(raw)


@lru_cache(maxsize=65536)
def _decode_meta(raw: str | bytes) -> ItemMeta:
    s, c, t, st, d = json.loads(raw)
    return ItemMeta(tuple(s), tuple(c), tuple(t), st, d)


@dataclass(frozen=True, slots=True)
class UserState:
    """What serving reads about a user in one round trip (`Cache.user_state`)."""

    version: int  # the user's cache version
    answer: str | None  # the answer blob stored for this version, if any
    seen: set[str] | None  # the scenario's seen set; None when an answer was found (then it is not read)
    # Read with the seen set: the user's recent events (members of the realtime consumer's sorted set, oldest
    # first, every scenario; domain.realtime.keys.recent_event parses them) and whether events the consumer has
    # not applied yet are waiting (then the seen set may hold items the recent events do not have yet).
    recent: tuple[str, ...] = ()
    pending: bool = False
    # No cache version at all: a user never seen, or one whose keys expired (domain.realtime.returning checks and
    # restores them, then writes a version; version 0 alone does not say it, a checked new user keeps 0).
    missing: bool = False


@dataclass(frozen=True, slots=True)
class BlobWrite:
    """One string for `Cache.put_blobs`; with a `version`, it is readable through `user_state` while the user's
    cache version is still that one."""

    parts: tuple[str, ...]
    value: str
    ttl_s: int
    version: int | None = None
    owner: str | None = None  # the user the value is about: its key joins the user's key index (`erase_user`)


def _versioned(version: int, value: str) -> str:
    return f"{version}|{value}"


def _unversioned(version: int, raw: str | None) -> str | None:
    """Return the value stored under `version`, or None for a missing one or one of another version."""
    prefix = f"{version}|"
    return raw[len(prefix):] if raw is not None and raw.startswith(prefix) else None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


# Preference labels ("c:<category>", "t:<tag>") live in the user's profile hash `t:{T}:pf:{user}` beside the
# counters the event consumer keeps there (domain.realtime.keys).
LABEL_PREFIXES = ("c:", "t:")
USER_KEYS_TTL_S = 86400  # a user's key index outlives the answers and served lists it lists (each at most 1 h)
ERASED_TTL_S = 7 * 86400  # an erasure outlives any event received before it and still waiting in a stream
# A user's own keys (seen sets, cache version, profile hot state, recent items) expire after this long without a
# write: every write renews it. A returning user's state is rebuilt from MongoDB (domain.realtime.returning).
USER_STATE_TTL_S = 90 * 86400


def tenant_key(tenant_id: str, *parts: str) -> str:
    """Return a key in the tenant's hash slot."""
    return ":".join(("t", "{" + tenant_id + "}", *parts))


class Cache(Protocol):
    async def item_meta(self, ids: Iterable[str], *, tenant_id: str) -> dict[str, ItemMeta]: ...
    async def put_item_meta(self, metas: Mapping[str, ItemMeta], *, tenant_id: str) -> None: ...
    async def drop_item_meta(self, ids: Iterable[str] | None, *, tenant_id: str) -> None: ...
    async def record_seen(self, seen: Iterable[tuple[str, str, str]], *, tenant_id: str) -> set[str]: ...
    async def seen(self, scenario_id: str, user_id: str, *, tenant_id: str) -> set[str]: ...
    async def user_version(self, user_id: str, *, tenant_id: str) -> int: ...
    async def items_changed(self, *, tenant_id: str) -> None: ...
    async def items_version(self, *, tenant_id: str) -> int: ...
    async def user_keys(self, user_id: str, *, tenant_id: str) -> list[str]: ...
    async def erase_user(
        self, user_id: str, scenario_ids: Iterable[str], *, tenant_id: str, marker: str, also: Sequence[str] = ()
    ) -> int: ...
    async def add_label_scores(self, deltas: Mapping[str, Mapping[str, float]], *, tenant_id: str) -> None: ...
    async def label_scores(self, user_ids: Sequence[str], *, tenant_id: str) -> dict[str, dict[str, float]]: ...
    async def get_blob(self, *parts: str, tenant_id: str) -> str | None: ...
    async def put_blob(self, *parts: str, value: str, ttl_s: int, tenant_id: str) -> None: ...
    async def put_blobs(self, writes: Sequence[BlobWrite], *, tenant_id: str) -> None: ...
    async def user_state(
        self, scenario_id: str, user_id: str, answer: Sequence[str] | None, *, tenant_id: str
    ) -> UserState: ...
    async def ping(self) -> bool: ...
    async def close(self) -> None: ...


# One call per user adds all of a batch's label deltas (HINCRBYFLOAT takes one field at a time).
_ADD_SCORES = """
for i = 1, #ARGV, 2 do redis.call('HINCRBYFLOAT', KEYS[1], ARGV[i], ARGV[i + 1]) end
return 1
"""

# The user's version, the answer stored for that version, else the seen set with the recent events and the applied
# and accepted counts of the profile hot state: what serving needs, in one round trip.
# KEYS: version counter, answer blob, seen set, recent events, profile hash; ARGV[1]: '1' to read the answer.
_USER_STATE = """
local raw = redis.call('GET', KEYS[1])
local v = raw or '0'
local missing = raw and 0 or 1
if ARGV[1] == '1' then
  local a = redis.call('GET', KEYS[2])
  if a and string.sub(a, 1, #v + 1) == v .. '|' then return {v, missing, a} end
end
return {v, missing, false, redis.call('SMEMBERS', KEYS[3]), redis.call('ZRANGE', KEYS[4], 0, -1),
        redis.call('HMGET', KEYS[5], 'n', 'acc')}
"""


class RedisCache:
    """Cache on a Redis server; pipelines each call into one round trip."""

    def __init__(self, client: aioredis.Redis, *, user_ttl_s: int = USER_STATE_TTL_S) -> None:
        self._r = client
        self.user_ttl_s = user_ttl_s  # the inactivity after which a user's keys expire (USER_STATE_TTL_S)
        self._add_scores = client.register_script(_ADD_SCORES)
        self._user_state = client.register_script(_USER_STATE)

    @classmethod
    def from_url(
        cls, url: str, *, timeout_s: float = 1.0, failures: int = DEFAULT_FAILURES,
        cooldown_s: float = DEFAULT_COOLDOWN_S, user_ttl_s: int = USER_STATE_TTL_S,
    ) -> RedisCache:
        """Create a client for URL without connecting yet, behind a circuit breaker (`models.redis_guard`); users'
        keys expire after user_ttl_s without a write."""
        return cls(guarded_redis(url, timeout_s=timeout_s, failures=failures, cooldown_s=cooldown_s),
                   user_ttl_s=user_ttl_s)

    @property
    def breaker(self) -> CircuitBreaker | None:
        """Return the circuit breaker every command of this client passes (None for a bare client)."""
        return getattr(self._r, "breaker", None)

    @property
    def client(self) -> aioredis.Redis:
        """Return the underlying redis-py client (for pub/sub and queues)."""
        return self._r

    async def item_meta(self, ids: Iterable[str], *, tenant_id: str) -> dict[str, ItemMeta]:
        """Return the cached metadata of those ids that are cached."""
        keys = list(dict.fromkeys(ids))
        if not keys:
            return {}
        try:
            raw = await self._r.hmget(tenant_key(tenant_id, "items"), keys)
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc
        return {k: ItemMeta.decode(v) for k, v in zip(keys, raw, strict=True) if v is not None}

    async def put_item_meta(self, metas: Mapping[str, ItemMeta], *, tenant_id: str) -> None:
        """Store item metadata."""
        if not metas:
            return
        try:
            await self._r.hset(tenant_key(tenant_id, "items"), mapping={k: m.encode() for k, m in metas.items()})
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def drop_item_meta(self, ids: Iterable[str] | None, *, tenant_id: str) -> None:
        """Forget the given items, or all of the tenant's items when ids is None."""
        key = tenant_key(tenant_id, "items")
        try:
            if ids is None:
                await self._r.delete(key)
            elif keys := list(ids):
                await self._r.hdel(key, *keys)
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def record_seen(self, seen: Iterable[tuple[str, str, str]], *, tenant_id: str) -> set[str]:
        """Add (scenario, user, item) to seen sets and bump each user's cache version (renewing both keys' TTL);
        return the users who had no cache version (new, or back after their keys expired)."""
        by_key: dict[str, set[str]] = {}
        users: list[str] = []
        for scenario_id, user_id, item_id in seen:
            by_key.setdefault(tenant_key(tenant_id, "seen", scenario_id, user_id), set()).add(item_id)
            users.append(user_id)
        users = list(dict.fromkeys(users))
        if not by_key:
            return set()
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.incr(tenant_key(tenant_id, "uv", user_id))
                    pipe.expire(tenant_key(tenant_id, "uv", user_id), self.user_ttl_s)
                for key, items in by_key.items():
                    pipe.sadd(key, *items)
                    pipe.expire(key, self.user_ttl_s)
                replies = await pipe.execute()
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc
        versions = replies[0 : 2 * len(users) : 2]  # INCR answers 1 for a key it created
        return {user_id for user_id, version in zip(users, versions, strict=True) if version == 1}

    async def seen(self, scenario_id: str, user_id: str, *, tenant_id: str) -> set[str]:
        """Return the items the user has interacted with in the scenario."""
        try:
            raw = await self._r.smembers(tenant_key(tenant_id, "seen", scenario_id, user_id))
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc
        return {v.decode() if isinstance(v, bytes) else v for v in raw}

    async def user_version(self, user_id: str, *, tenant_id: str) -> int:
        """Return the user's cache version (bumped by every recorded interaction)."""
        try:
            raw = await self._r.get(tenant_key(tenant_id, "uv", user_id))
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc
        return int(raw or 0)

    async def items_changed(self, *, tenant_id: str) -> None:
        """Bump the tenant's items version: serving processes reload their item views after it changes."""
        try:
            await self._r.incr(tenant_key(tenant_id, "itemsv"))
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def items_version(self, *, tenant_id: str) -> int:
        """Return the tenant's items version (0 before any write)."""
        try:
            raw = await self._r.get(tenant_key(tenant_id, "itemsv"))
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc
        return int(raw or 0)

    async def user_keys(self, user_id: str, *, tenant_id: str) -> list[str]:
        """Return the keys in the user's key index (answers and served lists written about them)."""
        try:
            return sorted(_text(k) for k in await self._r.smembers(tenant_key(tenant_id, "uk", user_id)))
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def erase_user(
        self, user_id: str, scenario_ids: Iterable[str], *, tenant_id: str, marker: str, also: Sequence[str] = ()
    ) -> int:
        """Delete every key about the user: seen sets, profile hot state, cache version, the keys of their key index
        and `also`; leave `erased:<marker>` (a keyed hash, never the id); return how many keys went."""
        index = tenant_key(tenant_id, "uk", user_id)
        keys = [tenant_key(tenant_id, "seen", s, user_id) for s in scenario_ids]
        # Preferences, the profile hot state the event consumer keeps (domain.realtime.keys), and the version that
        # cached answers were stored under (those answers are in the index and go too), and the claim of a restore
        # from MongoDB in progress (domain.realtime.returning).
        keys.extend(tenant_key(tenant_id, part, user_id) for part in ("pf", "rc", "uv", "restore"))
        try:
            keys += [*await self.user_keys(user_id, tenant_id=tenant_id), index, *also]
            async with self._r.pipeline(transaction=False) as pipe:
                for start in range(0, len(keys), 1000):
                    pipe.delete(*keys[start : start + 1000])
                # Events received until now and not yet applied by the consumer must not bring the profile back.
                pipe.set(tenant_key(tenant_id, "erased", marker), int(time.time() * 1000), ex=ERASED_TTL_S)
                pipe.srem(tenant_key(tenant_id, "pdirty"), user_id)  # no snapshot of it may be written again
                results = await pipe.execute()
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc
        return sum(int(n) for n in results[:-2])

    async def add_label_scores(self, deltas: Mapping[str, Mapping[str, float]], *, tenant_id: str) -> None:
        """Add per-user preference deltas (label -> amount) to each user's score hash."""
        if not deltas:
            return
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for user_id, labels in deltas.items():
                    args = [x for label, amount in labels.items() for x in (label, repr(float(amount)))]
                    await self._add_scores(keys=[tenant_key(tenant_id, "pf", user_id)], args=args, client=pipe)
                    pipe.expire(tenant_key(tenant_id, "pf", user_id), self.user_ttl_s)
                await pipe.execute()
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def label_scores(self, user_ids: Sequence[str], *, tenant_id: str) -> dict[str, dict[str, float]]:
        """Return each user's preference scores (label -> stored score); users without any are left out."""
        users = list(dict.fromkeys(user_ids))
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.hgetall(tenant_key(tenant_id, "pf", user_id))
                rows = await pipe.execute()
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc
        labels = ({_text(k): float(v) for k, v in row.items() if _text(k)[:2] in LABEL_PREFIXES} for row in rows)
        return {u: found for u, found in zip(users, labels, strict=True) if found}

    async def get_blob(self, *parts: str, tenant_id: str) -> str | None:
        """Return a cached string (served lists, cached answers) or None."""
        try:
            raw = await self._r.get(tenant_key(tenant_id, *parts))
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc
        return raw.decode() if isinstance(raw, bytes) else raw

    async def put_blob(self, *parts: str, value: str, ttl_s: int, tenant_id: str) -> None:
        """Store a string that expires after ttl_s seconds."""
        try:
            await self._r.set(tenant_key(tenant_id, *parts), value, ex=ttl_s)
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def put_blobs(self, writes: Sequence[BlobWrite], *, tenant_id: str) -> None:
        """Store strings that expire after their ttl_s, in one round trip."""
        if not writes:
            return
        try:
            async with self._r.pipeline(transaction=False) as pipe:
                for w in writes:
                    value = w.value if w.version is None else _versioned(w.version, w.value)
                    key = tenant_key(tenant_id, *w.parts)
                    pipe.set(key, value, ex=w.ttl_s)
                    if w.owner:
                        index = tenant_key(tenant_id, "uk", w.owner)
                        pipe.sadd(index, key)
                        pipe.expire(index, USER_KEYS_TTL_S)
                await pipe.execute()
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc

    async def user_state(
        self, scenario_id: str, user_id: str, answer: Sequence[str] | None, *, tenant_id: str
    ) -> UserState:
        """Return the user's cache version, the blob at `answer` (None: not wanted) when it was stored with
        `put_blobs` under that version, and, without such an answer, the user's seen set in the scenario."""
        # rc and pf: the realtime consumer's recent events and profile hot state (domain.realtime.keys)
        keys = [tenant_key(tenant_id, "uv", user_id), tenant_key(tenant_id, *(answer or ("-",))),
                tenant_key(tenant_id, "seen", scenario_id, user_id), tenant_key(tenant_id, "rc", user_id),
                tenant_key(tenant_id, "pf", user_id)]
        try:
            row = await self._user_state(keys=keys, args=["1" if answer else "0"])
        except RedisError as exc:
            raise CacheUnavailable(str(exc)) from exc
        version, missing = int(row[0]), bool(int(row[1]))
        if len(row) == 3:
            return UserState(version=version, answer=_unversioned(version, _text(row[2])), seen=None,
                             missing=missing)
        applied, accepted = (int(n or 0) for n in row[5])
        return UserState(version=version, answer=None, seen={_text(v) for v in row[3]},
                         recent=tuple(_text(m) for m in row[4]), pending=accepted > applied, missing=missing)

    async def ping(self) -> bool:
        """Return whether Redis answers (never raises)."""
        try:
            return bool(await self._r.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        """Stop the breaker's probe and close the connection pool."""
        if self.breaker is not None:
            await self.breaker.close()
        await self._r.aclose()


@dataclass
class InMemoryCache:
    """Process-local cache with the same contract, for unit tests."""

    items: dict[str, dict[str, str]] = field(default_factory=dict)
    sets: dict[str, set[str]] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    blobs: dict[str, str] = field(default_factory=dict)
    prefs: dict[str, dict[str, float]] = field(default_factory=dict)
    owned: dict[str, set[str]] = field(default_factory=dict)  # a user's key index -> the keys written about them
    erased: dict[str, float] = field(default_factory=dict)  # erasure markers (keyed hashes) -> when
    up: bool = True

    def _check(self) -> None:
        if not self.up:
            raise CacheUnavailable("in-memory cache is marked down")

    async def item_meta(self, ids: Iterable[str], *, tenant_id: str) -> dict[str, ItemMeta]:
        """Return the cached metadata of those ids that are cached."""
        self._check()
        table = self.items.get(tenant_id, {})
        return {i: ItemMeta.decode(table[i]) for i in dict.fromkeys(ids) if i in table}

    async def put_item_meta(self, metas: Mapping[str, ItemMeta], *, tenant_id: str) -> None:
        """Store item metadata."""
        self._check()
        self.items.setdefault(tenant_id, {}).update({k: m.encode() for k, m in metas.items()})

    async def drop_item_meta(self, ids: Iterable[str] | None, *, tenant_id: str) -> None:
        """Forget the given items, or all of the tenant's items when ids is None."""
        self._check()
        if ids is None:
            self.items.pop(tenant_id, None)
            return
        table = self.items.get(tenant_id, {})
        for i in ids:
            table.pop(i, None)

    async def record_seen(self, seen: Iterable[tuple[str, str, str]], *, tenant_id: str) -> set[str]:
        """Add (scenario, user, item) to seen sets and bump each user's cache version; return the users who had
        none."""
        self._check()
        users = set()
        for scenario_id, user_id, item_id in seen:
            self.sets.setdefault(tenant_key(tenant_id, "seen", scenario_id, user_id), set()).add(item_id)
            users.add(user_id)
        fresh = set()
        for user_id in users:
            key = tenant_key(tenant_id, "uv", user_id)
            self.counters[key] = self.counters.get(key, 0) + 1
            if self.counters[key] == 1:
                fresh.add(user_id)
        return fresh

    async def seen(self, scenario_id: str, user_id: str, *, tenant_id: str) -> set[str]:
        """Return the items the user has interacted with in the scenario."""
        self._check()
        return set(self.sets.get(tenant_key(tenant_id, "seen", scenario_id, user_id), set()))

    async def user_version(self, user_id: str, *, tenant_id: str) -> int:
        """Return the user's cache version."""
        self._check()
        return self.counters.get(tenant_key(tenant_id, "uv", user_id), 0)

    async def items_changed(self, *, tenant_id: str) -> None:
        """Bump the tenant's items version."""
        self._check()
        key = tenant_key(tenant_id, "itemsv")
        self.counters[key] = self.counters.get(key, 0) + 1

    async def items_version(self, *, tenant_id: str) -> int:
        """Return the tenant's items version."""
        self._check()
        return self.counters.get(tenant_key(tenant_id, "itemsv"), 0)

    async def user_keys(self, user_id: str, *, tenant_id: str) -> list[str]:
        """Return the keys in the user's key index."""
        self._check()
        return sorted(self.owned.get(tenant_key(tenant_id, "uk", user_id), ()))

    async def erase_user(
        self, user_id: str, scenario_ids: Iterable[str], *, tenant_id: str, marker: str, also: Sequence[str] = ()
    ) -> int:
        """Delete the user's seen sets, preference scores, cache version and indexed keys; return how many went."""
        self._check()
        keys = [tenant_key(tenant_id, "seen", s, user_id) for s in scenario_ids]
        deleted = sum(self.sets.pop(k, None) is not None for k in keys)
        deleted += self.prefs.pop(tenant_key(tenant_id, "pf", user_id), None) is not None
        deleted += self.counters.pop(tenant_key(tenant_id, "uv", user_id), None) is not None
        index = self.owned.pop(tenant_key(tenant_id, "uk", user_id), None)
        deleted += index is not None
        for key in [*(index or ()), *also]:
            deleted += self.blobs.pop(key, None) is not None
        self.erased[tenant_key(tenant_id, "erased", marker)] = time.time()
        return deleted

    async def add_label_scores(self, deltas: Mapping[str, Mapping[str, float]], *, tenant_id: str) -> None:
        """Add per-user preference deltas."""
        self._check()
        for user_id, labels in deltas.items():
            scores = self.prefs.setdefault(tenant_key(tenant_id, "pf", user_id), {})
            for label, amount in labels.items():
                scores[label] = scores.get(label, 0.0) + float(amount)

    async def label_scores(self, user_ids: Sequence[str], *, tenant_id: str) -> dict[str, dict[str, float]]:
        """Return each user's preference scores; users without any are left out."""
        self._check()
        found = {u: self.prefs.get(tenant_key(tenant_id, "pf", u)) for u in user_ids}
        return {u: dict(v) for u, v in found.items() if v}

    async def get_blob(self, *parts: str, tenant_id: str) -> str | None:
        """Return a cached string or None (expiry is not modelled)."""
        self._check()
        return self.blobs.get(tenant_key(tenant_id, *parts))

    async def put_blob(self, *parts: str, value: str, ttl_s: int, tenant_id: str) -> None:
        """Store a string."""
        self._check()
        self.blobs[tenant_key(tenant_id, *parts)] = value

    async def put_blobs(self, writes: Sequence[BlobWrite], *, tenant_id: str) -> None:
        """Store strings (expiry is not modelled)."""
        self._check()
        for w in writes:
            key = tenant_key(tenant_id, *w.parts)
            self.blobs[key] = w.value if w.version is None else _versioned(w.version, w.value)
            if w.owner:
                self.owned.setdefault(tenant_key(tenant_id, "uk", w.owner), set()).add(key)

    async def user_state(
        self, scenario_id: str, user_id: str, answer: Sequence[str] | None, *, tenant_id: str
    ) -> UserState:
        """Return the user's version, the answer stored under it (when wanted), else the seen set (no consumer
        writes recent events here: there are none)."""
        self._check()
        key = tenant_key(tenant_id, "uv", user_id)
        version, missing = self.counters.get(key, 0), key not in self.counters
        if answer and (found := _unversioned(version, self.blobs.get(tenant_key(tenant_id, *answer)))) is not None:
            return UserState(version=version, answer=found, seen=None, missing=missing)
        return UserState(version=version, answer=None, missing=missing,
                         seen=set(self.sets.get(tenant_key(tenant_id, "seen", scenario_id, user_id), set())))

    async def ping(self) -> bool:
        """Return whether the fake is up."""
        return self.up

    async def close(self) -> None:
        """Nothing to close."""


def meta_from_item(doc: Mapping[str, Any]) -> ItemMeta:
    """Build ItemMeta from a raw item document."""
    duration = (doc.get("attributes") or {}).get("durationSeconds")
    return ItemMeta(
        scenarios=tuple(doc.get("scenarios") or ()),
        categories=tuple(doc.get("categories") or ()),
        tags=tuple(doc.get("tags") or ()),
        status=doc.get("status") or "ACTIVE",
        duration_seconds=float(duration) if isinstance(duration, (int, float)) else None,
    )
