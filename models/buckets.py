"""Token buckets and leased slots for rate limits: one contract, kept in Redis (shared by every process) or in this
process (the fallback while Redis cannot be reached, and the fake for unit tests).

A bucket holds up to `burst` tokens and gains `rate` tokens a second; taking `cost` tokens from several buckets
succeeds only when every one of them has enough, and then takes from all of them (atomically, in one Lua script on
Redis). Redis keeps time with its own clock (`TIME`), so every process sees the same buckets whatever its clock says.
A slot is a lease on one of `cap` places (open subscriptions), renewed while held and dropped when its holder dies.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError


class BucketsUnavailable(Exception):
    """The shared store did not answer in time or answered with an error."""


@dataclass(frozen=True, slots=True)
class Bucket:
    """A bucket to take from: its key, its refill rate (tokens a second) and its size."""

    key: str
    rate: float
    burst: int


@dataclass(frozen=True, slots=True)
class Take:
    """The outcome of one take: whether it was allowed, each bucket's tokens left (in the order given), how long
    until the take would be allowed (0 when it was), and the value of the watched key (None: not read)."""

    allowed: bool
    tokens: tuple[float, ...]
    wait_s: float
    watched: str | None = None


class BucketStore(Protocol):
    async def take(self, buckets: Sequence[Bucket], *, cost: int = 1, watch: str | None = None) -> Take:
        """Take `cost` tokens from every bucket, or from none; read `watch` in the same round trip."""
        ...

    async def hold(self, key: str, holder: str, *, cap: int, lease_s: float) -> bool:
        """Lease one of `cap` places under key for holder; False when all are held."""
        ...

    async def renew(self, key: str, holder: str, *, lease_s: float) -> None:
        """Extend holder's lease (re-taking the place if it lapsed)."""
        ...

    async def release(self, key: str, holder: str) -> None:
        """Give holder's place back."""
        ...

    async def mark(self, key: str, value: str, *, ttl_s: float) -> None:
        """Set a watched key (readers notice the change on their next take)."""
        ...


_TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cost = tonumber(ARGV[1])
local n = #KEYS
if ARGV[2] ~= '' then n = n - 1 end
local tokens, wait = {}, 0
for i = 1, n do
  local rate, burst = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
  local v = redis.call('HMGET', KEYS[i], 'tk', 'ts')
  local tk, ts = tonumber(v[1]), tonumber(v[2])
  if tk == nil or ts == nil then tk = burst else tk = math.min(burst, tk + math.max(0, now - ts) * rate) end
  tokens[i] = tk
  if tk < cost then wait = math.max(wait, (cost - tk) / rate) end
end
local allowed = 0
if wait == 0 then
  allowed = 1
  for i = 1, n do
    local rate, burst = tonumber(ARGV[2 * i + 1]), tonumber(ARGV[2 * i + 2])
    tokens[i] = tokens[i] - cost
    redis.call('HSET', KEYS[i], 'tk', tokens[i], 'ts', now)
    -- a bucket left alone this long is full again, the same as no bucket
    redis.call('PEXPIRE', KEYS[i], math.ceil(burst / rate * 1000) + 1000)
  end
end
local watched = false
if ARGV[2] ~= '' then watched = redis.call('GET', KEYS[n + 1]) or '' end
local out = {allowed, tostring(wait), watched}
for i = 1, n do out[#out + 1] = tostring(tokens[i]) end
return out
"""

_HOLD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local lease = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if ARGV[1] ~= '' and redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + lease, ARGV[3])
redis.call('PEXPIRE', KEYS[1], math.ceil(lease * 1000))
return 1
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisBuckets:
    """Buckets and slots in Redis; each call is one round trip, bounded by timeout_s (then BucketsUnavailable)."""

    def __init__(self, client: aioredis.Redis, *, timeout_s: float = 0.25) -> None:
        self._r = client
        self._timeout_s = timeout_s
        self._take = client.register_script(_TAKE)
        self._hold = client.register_script(_HOLD)

    async def _call(self, script, keys: list[str], args: list) -> object:
        try:
            async with asyncio.timeout(self._timeout_s):
                return await script(keys=keys, args=args)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BucketsUnavailable(repr(exc)) from exc

    async def take(self, buckets: Sequence[Bucket], *, cost: int = 1, watch: str | None = None) -> Take:
        """Take `cost` tokens from every bucket, or from none; read `watch` in the same round trip."""
        keys = [b.key for b in buckets] + ([watch] if watch else [])
        args: list = [cost, "1" if watch else ""]
        for b in buckets:
            args += [repr(float(b.rate)), b.burst]
        raw = await self._call(self._take, keys, args)
        allowed, wait, watched, *tokens = raw  # type: ignore[misc]
        return Take(allowed=bool(allowed), tokens=tuple(float(_text(t)) for t in tokens), wait_s=float(_text(wait)),
                    watched=_text(watched) if watched is not None else None)

    async def hold(self, key: str, holder: str, *, cap: int, lease_s: float) -> bool:
        """Lease one of `cap` places under key for holder; False when all are held."""
        return bool(await self._call(self._hold, [key], [cap, repr(float(lease_s)), holder]))

    async def renew(self, key: str, holder: str, *, lease_s: float) -> None:
        """Extend holder's lease (re-taking the place if it lapsed)."""
        await self._call(self._hold, [key], ["", repr(float(lease_s)), holder])

    async def release(self, key: str, holder: str) -> None:
        """Give holder's place back."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._r.zrem(key, holder)
        except (RedisError, OSError, TimeoutError) as exc:
            raise BucketsUnavailable(repr(exc)) from exc

    async def mark(self, key: str, value: str, *, ttl_s: float) -> None:
        """Set a watched key (readers notice the change on their next take)."""
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._r.set(key, value, px=int(ttl_s * 1000))
        except (RedisError, OSError, TimeoutError) as exc:
            raise BucketsUnavailable(repr(exc)) from exc


class LocalBuckets:
    """Buckets and slots in this process only (the fallback while Redis is away, and the unit-test fake)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic, max_buckets: int = 100_000) -> None:
        self._clock = clock
        self._max = max_buckets
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)
        self._slots: dict[str, dict[str, float]] = {}  # key -> holder -> lease end
        self._marks: dict[str, str] = {}

    def _tokens(self, bucket: Bucket, now: float) -> float:
        state = self._buckets.get(bucket.key)
        if state is None:
            return float(bucket.burst)
        tokens, at = state
        return min(float(bucket.burst), tokens + max(0.0, now - at) * bucket.rate)

    async def take(self, buckets: Sequence[Bucket], *, cost: int = 1, watch: str | None = None) -> Take:
        """Take `cost` tokens from every bucket, or from none; read `watch` too."""
        now = self._clock()
        tokens = [self._tokens(b, now) for b in buckets]
        wait = max((max(0.0, (cost - t) / b.rate) for b, t in zip(buckets, tokens, strict=True)), default=0.0)
        if wait == 0.0:
            tokens = [t - cost for t in tokens]
            for b, t in zip(buckets, tokens, strict=True):
                self._buckets[b.key] = (t, now)
                self._buckets.move_to_end(b.key)
            while len(self._buckets) > self._max:  # bounded: a flood of keys must not grow memory
                self._buckets.popitem(last=False)
        return Take(allowed=wait == 0.0, tokens=tuple(tokens), wait_s=wait,
                    watched=self._marks.get(watch, "") if watch else None)

    def _live(self, key: str) -> dict[str, float]:
        now = self._clock()
        holders = {h: end for h, end in self._slots.get(key, {}).items() if end > now}
        self._slots[key] = holders
        return holders

    async def hold(self, key: str, holder: str, *, cap: int, lease_s: float) -> bool:
        """Lease one of `cap` places under key for holder; False when all are held."""
        holders = self._live(key)
        if len(holders) >= cap:
            return False
        holders[holder] = self._clock() + lease_s
        return True

    async def renew(self, key: str, holder: str, *, lease_s: float) -> None:
        """Extend holder's lease (re-taking the place if it lapsed)."""
        self._live(key)[holder] = self._clock() + lease_s

    async def release(self, key: str, holder: str) -> None:
        """Give holder's place back."""
        holders = self._live(key)
        holders.pop(holder, None)
        if not holders:
            self._slots.pop(key, None)

    async def mark(self, key: str, value: str, *, ttl_s: float) -> None:
        """Set a watched key."""
        self._marks[key] = value
