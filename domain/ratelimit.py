"""Rate limits: a token bucket per key and one per (tenant, scope), shared by every process through Redis.

One request takes one token from both of its buckets, or from neither. A key's bucket holds its scope's default
(`RatePolicy.keys`); the tenant's bucket for the scope, shared by all its keys of that scope, holds
`RatePolicy.tenant`. An override set for a tenant and scope (`recograph tenants limits`) replaces both: the scope's
keys then get that limit, each alone and all together. Overrides live in MongoDB (the tenant's `rate_limits`) and
are cached in each process; setting one also marks a key in Redis that every check reads in the same round trip,
so every process re-reads the tenant's overrides on its next request there (and in any case every
`overrides_refresh_s`).

While Redis cannot be reached, checks use this process's own buckets for `fallback_s`, then one check tries Redis
again: a down Redis costs one timeout, not one per request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TypeVar

import redis.asyncio as aioredis
import structlog
from pymongo.errors import PyMongoError

from domain.errors import BadInput, NotFound, RateLimited
from domain.tenancy import Principal, Scope
from models.buckets import Bucket, BucketStore, BucketsUnavailable, LocalBuckets, RedisBuckets, Take
from models.cache import tenant_key
from models.documents import Tenant

T = TypeVar("T")
OverridesReader = Callable[..., Awaitable[dict[Scope, "Limit"]]]  # (*, tenant_id) -> the tenant's overrides
log = structlog.get_logger()
MARK_TTL_S = 30 * 86400.0  # a lapsed mark only costs each process one re-read
OVERRIDES_READ_TIMEOUT_S = 1.0
MAX_CACHED_TENANTS = 100_000
REFUSAL_HOLD_MAX_S = 1.0  # a refusal held here delays a raised limit by at most this


@dataclass(frozen=True, slots=True)
class Limit:
    """A token bucket's shape: `rate` requests a second sustained, `burst` at once."""

    rate: float
    burst: int

    def validated(self) -> Limit:
        """Return self, or raise BAD_USER_INPUT for a bucket that could never pass a request."""
        if not (self.rate > 0 and math.isfinite(self.rate)):
            raise BadInput("rate must be a positive number of requests per second", field="rate")
        if self.burst < 1:
            raise BadInput("burst must be at least 1", field="burst")
        return self


def _default_keys() -> dict[Scope, Limit]:
    return {Scope.PUBLIC: Limit(1000.0, 2000), Scope.ADMIN: Limit(1000.0, 2000), Scope.GATEWAY: Limit(5000.0, 10000)}


@dataclass(frozen=True)
class RatePolicy:
    """The limits every tenant gets unless overridden, and how checks behave around Redis."""

    keys: Mapping[Scope, Limit] = field(default_factory=_default_keys)
    tenant: Limit = Limit(5000.0, 10000)
    max_subscriptions: int = 20
    overrides_refresh_s: float = 5.0
    fallback_s: float = 5.0
    redis_timeout_s: float = 0.25
    subscription_lease_s: float = 60.0
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class RateDecision:
    """A check's outcome, for `RateLimit-*` headers: the tightest bucket's size, whole tokens left in it, seconds
    until it is full again, and (refused) whole seconds until a retry can pass."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int = 0
    rate: float = 0.0  # the tightest bucket's refill, requests a second


UNLIMITED = RateDecision(allowed=True, limit=0, remaining=0, reset_s=0)


def seconds_up(value: float) -> int:
    """Return whole seconds, rounded up, at least 1 (HTTP's Retry-After counts whole seconds)."""
    return max(1, math.ceil(value - 1e-9))


def _decide(take: Take, buckets: list[Bucket]) -> RateDecision:
    if take.allowed:  # the bucket with the fewest tokens left binds
        tokens, bucket = min(zip(take.tokens, buckets, strict=True), key=lambda tb: tb[0])
        return RateDecision(True, bucket.burst, max(0, math.floor(tokens)),
                            math.ceil(max(0.0, bucket.burst - tokens) / bucket.rate), rate=bucket.rate)
    # the bucket that makes the caller wait longest binds
    tokens, bucket = max(zip(take.tokens, buckets, strict=True), key=lambda tb: (1 - tb[0]) / tb[1].rate)
    return RateDecision(False, bucket.burst, 0, math.ceil((bucket.burst - tokens) / bucket.rate),
                        seconds_up(take.wait_s), rate=bucket.rate)


class _Fallback:
    """Send calls to the shared store unless it failed within the last `hold_s`; then one call at a time probes it."""

    def __init__(self, shared: BucketStore | None, local: BucketStore, *, hold_s: float) -> None:
        self._shared, self._local, self._hold_s = shared, local, hold_s
        self._down_until = 0.0
        self._probing = False

    @property
    def local(self) -> BucketStore:
        """Return the per-process store."""
        return self._local

    @property
    def degraded(self) -> bool:
        """True while calls go to the per-process store."""
        return self._shared is None or time.monotonic() < self._down_until

    async def call(self, op: Callable[[BucketStore], Awaitable[T]]) -> tuple[BucketStore, T]:
        """Run op on the store to use now; return that store and op's result."""
        if self._shared is None or self._probing or time.monotonic() < self._down_until:
            return self._local, await op(self._local)
        probing = self._down_until > 0.0
        self._probing = probing
        try:
            result = await op(self._shared)
        except BucketsUnavailable as exc:
            if not probing:
                log.warning("ratelimit.redis_unavailable", error=str(exc), fallback_s=self._hold_s)
            self._down_until = time.monotonic() + self._hold_s
            return self._local, await op(self._local)
        finally:
            self._probing = False
        if probing:
            log.info("ratelimit.redis_back")
        self._down_until = 0.0
        return self._shared, result


@dataclass(slots=True)
class _Entry:
    limits: dict[Scope, Limit]
    read_at: float
    mark: str | None = None  # the Redis mark this read answers to (None: read before any was seen)


class _Overrides:
    """Each tenant's overrides, read from MongoDB on first use and re-read in the background when its Redis mark
    changes or the entry is older than refresh_s."""

    def __init__(self, read: OverridesReader, *, refresh_s: float) -> None:
        self._read_overrides = read
        self._refresh_s = refresh_s
        self._entries: OrderedDict[str, _Entry] = OrderedDict()
        self._reading: dict[str, asyncio.Task] = {}

    async def get(self, tenant_id: str) -> dict[Scope, Limit]:
        """Return the tenant's overrides (possibly a few seconds old)."""
        entry = self._entries.get(tenant_id)
        if entry is None:  # concurrent first requests share one read
            entry = await asyncio.shield(self._reread(tenant_id, None))
        elif time.monotonic() - entry.read_at > self._refresh_s:
            self._reread(tenant_id, entry.mark)
        if tenant_id in self._entries:  # (a flood of first reads may have pushed it out meanwhile)
            self._entries.move_to_end(tenant_id)
        return entry.limits

    def observe(self, tenant_id: str, mark: str) -> None:
        """Re-read the tenant's overrides in the background when its mark differs from the one last read under."""
        entry = self._entries.get(tenant_id)
        if entry is not None and entry.mark != mark:
            self._reread(tenant_id, mark)

    def forget(self, tenant_id: str) -> None:
        """Drop the tenant's entry (after a change made here)."""
        self._entries.pop(tenant_id, None)

    def _reread(self, tenant_id: str, mark: str | None) -> asyncio.Task[_Entry]:
        task = self._reading.get(tenant_id)
        if task is None or task.done():  # a finished read leaves only when its done-callback runs
            task = asyncio.create_task(self._read(tenant_id, mark), name="recograph.ratelimit.overrides")
            self._reading[tenant_id] = task
            task.add_done_callback(lambda done: self._forget_read(tenant_id, done))
        return task

    def _forget_read(self, tenant_id: str, done: asyncio.Task) -> None:
        if self._reading.get(tenant_id) is done:
            del self._reading[tenant_id]

    async def _read(self, tenant_id: str, mark: str | None) -> _Entry:
        try:
            async with asyncio.timeout(OVERRIDES_READ_TIMEOUT_S):
                limits = await self._read_overrides(tenant_id=tenant_id)
        except (PyMongoError, TimeoutError, NotFound) as exc:
            # MongoDB away: keep what we had (or the defaults) and try again after refresh_s
            log.warning("ratelimit.overrides_unreadable", tenant_id=tenant_id, error=repr(exc))
            old = self._entries.get(tenant_id)
            limits, mark = (old.limits, old.mark) if old is not None else ({}, None)
        entry = _Entry(limits, time.monotonic(), mark)
        self._entries[tenant_id] = entry
        while len(self._entries) > MAX_CACHED_TENANTS:
            self._entries.popitem(last=False)
        return entry


class _Refusals:
    """Refusals this process already knows of: a key refused with a wait stays refused for that wait (no bucket it
    takes from can gain a token sooner), so a flood's later requests are refused without asking Redis again."""

    def __init__(self, *, size: int = 10_000) -> None:
        self._until: dict[Principal, tuple[float, float, RateDecision]] = {}  # (held until, retry at, decision)
        self._size = size

    def get(self, principal: Principal) -> RateDecision | None:
        """Return the refusal standing for principal's key now, with its remaining wait, or None."""
        found = self._until.get(principal)
        if found is None:
            return None
        held_until, retry_at, decision = found
        now = time.monotonic()
        if held_until <= now:
            del self._until[principal]
            return None
        return dataclasses.replace(decision, retry_after_s=seconds_up(retry_at - now))

    def put(self, principal: Principal, decision: RateDecision, wait_s: float) -> None:
        """Remember a refusal for wait_s (at most REFUSAL_HOLD_MAX_S)."""
        now = time.monotonic()
        if len(self._until) >= self._size:  # bounded: drop the lapsed ones, or all when none lapsed
            self._until = {p: v for p, v in self._until.items() if v[0] > now}
            if len(self._until) >= self._size:
                self._until.clear()
        self._until[principal] = (now + min(wait_s, REFUSAL_HOLD_MAX_S), now + wait_s, decision)


async def read_overrides(*, tenant_id: str) -> dict[Scope, Limit]:
    """Return the tenant's overrides as stored; NOT_FOUND for an unknown tenant."""
    doc = await Tenant.get_pymongo_collection().find_one({"_id": tenant_id}, {"rate_limits": 1})
    if doc is None:
        raise NotFound(f"no tenant {tenant_id}", field="tenantId")
    stored = doc.get("rate_limits") or {}
    return {Scope(s): Limit(float(v["rate"]), int(v["burst"])) for s, v in stored.items() if s in _SCOPES}


_SCOPES = frozenset(s.value for s in Scope)


def _mark_key(tenant_id: str) -> str:
    return tenant_key(tenant_id, "rl", "overrides")


class RateLimits:
    """Check requests against their key's and tenant's buckets; cap open subscriptions per key; set overrides."""

    def __init__(self, shared: BucketStore | None, policy: RatePolicy | None = None, *,
                 local: BucketStore | None = None, read: OverridesReader | None = None) -> None:
        self.policy = policy or RatePolicy()
        self._stores = _Fallback(shared, local or LocalBuckets(), hold_s=self.policy.fallback_s)
        self._overrides = _Overrides(read or read_overrides, refresh_s=self.policy.overrides_refresh_s)
        self._refused = _Refusals()

    @classmethod
    def over(cls, redis: aioredis.Redis | None, policy: RatePolicy) -> RateLimits:
        """Return limits shared through this Redis client (per process without one)."""
        return cls(RedisBuckets(redis, timeout_s=policy.redis_timeout_s) if redis is not None else None, policy)

    @property
    def degraded(self) -> bool:
        """True while limits are per process (Redis away)."""
        return self._stores.degraded

    def limits(self, scope: Scope, overrides: Mapping[Scope, Limit]) -> tuple[Limit, Limit]:
        """Return the (key, tenant) limits of a scope given the tenant's overrides."""
        own = overrides.get(scope)
        return (own, own) if own is not None else (self.policy.keys[scope], self.policy.tenant)

    async def check(self, principal: Principal) -> RateDecision:
        """Take one token for a request by principal; say whether it may go on and how much room is left."""
        if not self.policy.enabled:
            return UNLIMITED
        if (refused := self._refused.get(principal)) is not None:
            return refused
        tenant_id = principal.tenant_id
        key_limit, tenant_limit = self.limits(principal.scope, await self._overrides.get(tenant_id))
        buckets = [
            Bucket(tenant_key(tenant_id, "rl", "key", principal.key_id), key_limit.rate, key_limit.burst),
            Bucket(tenant_key(tenant_id, "rl", "scope", principal.scope.value), tenant_limit.rate, tenant_limit.burst),
        ]
        _, take = await self._stores.call(lambda store: store.take(buckets, watch=_mark_key(tenant_id)))
        if take.watched is not None:
            self._overrides.observe(tenant_id, take.watched)
        decision = _decide(take, buckets)
        if not decision.allowed:
            self._refused.put(principal, decision, take.wait_s)
        return decision

    async def enforce(self, principal: Principal) -> RateDecision:
        """Check a request; raise RATE_LIMITED when it must wait."""
        decision = await self.check(principal)
        if not decision.allowed:
            raise refusal(decision)
        return decision

    @asynccontextmanager
    async def subscription(self, principal: Principal) -> AsyncIterator[None]:
        """Hold one of the key's subscription places while the block runs; RATE_LIMITED when all are taken."""
        if not self.policy.enabled:
            yield
            return
        key = tenant_key(principal.tenant_id, "rl", "subs", principal.key_id)
        holder, lease_s, cap = uuid.uuid4().hex, self.policy.subscription_lease_s, self.policy.max_subscriptions
        store, held = await self._stores.call(lambda s: s.hold(key, holder, cap=cap, lease_s=lease_s))
        if not held:
            # a place held by a client that went away frees within the lease
            raise RateLimited(f"this key already has {cap} subscriptions open; close one first",
                              retry_after=seconds_up(lease_s))
        renewing = asyncio.create_task(_renew(store, key, holder, lease_s), name="recograph.ratelimit.lease")
        try:
            yield
        finally:
            renewing.cancel()
            try:
                await store.release(key, holder)
            except BucketsUnavailable:
                pass  # the lease lapses on its own within lease_s

    async def set_override(self, tenant_id: str, scope: Scope, limit: Limit) -> bool:
        """Set the tenant's limit for a scope; return whether serving processes were told at once (else they see
        it within `overrides_refresh_s`)."""
        limit.validated()
        value = {"rate": float(limit.rate), "burst": int(limit.burst)}
        result = await Tenant.get_pymongo_collection().update_one(
            {"_id": tenant_id}, {"$set": {f"rate_limits.{scope.value}": value}}
        )
        if result.matched_count == 0:
            raise NotFound(f"no tenant {tenant_id}", field="tenantId")
        return await self._changed(tenant_id)

    async def clear_override(self, tenant_id: str, scope: Scope) -> bool:
        """Return the tenant's scope to the defaults; return whether serving processes were told at once."""
        result = await Tenant.get_pymongo_collection().update_one(
            {"_id": tenant_id}, {"$unset": {f"rate_limits.{scope.value}": ""}}
        )
        if result.matched_count == 0:
            raise NotFound(f"no tenant {tenant_id}", field="tenantId")
        return await self._changed(tenant_id)

    async def _changed(self, tenant_id: str) -> bool:
        self._overrides.forget(tenant_id)
        mark = uuid.uuid4().hex
        store, _ = await self._stores.call(lambda s: s.mark(_mark_key(tenant_id), mark, ttl_s=MARK_TTL_S))
        return store is not self._stores.local


async def _renew(store: BucketStore, key: str, holder: str, lease_s: float) -> None:
    """Renew a lease every third of it until cancelled; a failed renewal is tried again at the next."""
    while True:
        await asyncio.sleep(lease_s / 3)
        try:
            await store.renew(key, holder, lease_s=lease_s)
        except BucketsUnavailable as exc:
            log.debug("ratelimit.renew_failed", error=str(exc))


def refusal(decision: RateDecision) -> RateLimited:
    """Return the RATE_LIMITED error for a refused decision."""
    return RateLimited(
        f"rate limit exceeded: {decision.rate:g} requests a second (bursts of {decision.limit}) for this key or its "
        f"tenant; retry in {decision.retry_after_s} s",
        retry_after=decision.retry_after_s,
    )
