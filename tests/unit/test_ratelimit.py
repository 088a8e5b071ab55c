"""Rate limits (issue 10 item 3): the decisions, the buckets per key and per tenant, overrides noticed through their
mark, the subscription cap, and the fallback while the shared store is away; on in-process buckets."""

from __future__ import annotations

import asyncio

import pytest

from domain.errors import RateLimited
from domain.ratelimit import Limit, RateLimits, RatePolicy, refusal
from domain.tenancy import Principal, Scope
from models.buckets import BucketsUnavailable, LocalBuckets

POLICY = RatePolicy(keys={Scope.PUBLIC: Limit(1.0, 3), Scope.ADMIN: Limit(1.0, 100), Scope.GATEWAY: Limit(1.0, 100)},
                    tenant=Limit(1.0, 5), max_subscriptions=2)


def key(tenant: str, key_id: str, scope: Scope = Scope.PUBLIC) -> Principal:
    return Principal(tenant_id=tenant, scope=scope, key_id=key_id)


class Table:
    """Overrides as MongoDB would return them, counting reads."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[Scope, Limit]] = {}
        self.reads = 0

    async def __call__(self, *, tenant_id: str) -> dict[Scope, Limit]:
        self.reads += 1
        return dict(self.rows.get(tenant_id, {}))


def limits(shared=None, table: Table | None = None, policy: RatePolicy = POLICY) -> RateLimits:
    return RateLimits(shared if shared is not None else LocalBuckets(), policy, read=table or Table())


async def test_rate_limits_key_over_its_burst_is_refused_with_retry_after():
    rl = limits()
    decisions = [await rl.check(key("t1", "k1")) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]
    assert (decisions[0].limit, decisions[0].remaining) == (3, 2)
    assert decisions[2].reset_s == 3  # three tokens at one a second
    refused = decisions[3]
    assert refused.retry_after_s == 1 and refused.remaining == 0
    error = refusal(refused)
    assert error.extensions == {"code": "RATE_LIMITED", "retryAfter": 1}
    with pytest.raises(RateLimited):
        await rl.enforce(key("t1", "k1"))


async def test_rate_limits_tenant_bucket_binds_all_its_keys_of_a_scope_only():
    rl = limits()
    allowed = [(await rl.check(key("t1", f"k{i}"))).allowed for i in range(7)]
    assert allowed == [True] * 5 + [False] * 2  # five at once for the tenant's public keys together
    assert (await rl.check(key("t1", "a1", Scope.ADMIN))).allowed  # its admin keys have their own bucket
    assert (await rl.check(key("t2", "k1"))).allowed  # another tenant is untouched


async def test_rate_limits_override_replaces_key_and_tenant_limits():
    table = Table()
    table.rows["t1"] = {Scope.PUBLIC: Limit(1.0, 8)}
    rl = limits(table=table)
    assert sum([(await rl.check(key("t1", "k1"))).allowed for _ in range(10)]) == 8
    assert rl.limits(Scope.PUBLIC, {}) == (Limit(1.0, 3), Limit(1.0, 5))


async def test_rate_limits_override_change_is_noticed_through_its_mark():
    shared, table = LocalBuckets(), Table()
    rl = limits(shared, table)
    assert (await rl.check(key("t1", "k1"))).limit == 3
    await asyncio.sleep(0)  # the first mark seen ("" here) is read under once
    reads = table.reads
    for _ in range(3):
        await rl.check(key("t1", "k1"))
    assert table.reads == reads  # nothing changed: no more reads
    table.rows["t1"] = {Scope.PUBLIC: Limit(100.0, 50)}
    await shared.mark("t:{t1}:rl:overrides", "changed", ttl_s=60)  # what set_override does in another process
    await rl.check(key("t1", "k2"))  # (k1 stands refused in this process for a moment: it would not ask)
    await asyncio.sleep(0.01)  # the re-read runs in the background
    assert (await rl.check(key("t1", "k2"))).limit == 50


async def test_rate_limits_overrides_are_reread_after_refresh_s():
    table = Table()
    rl = limits(table=table, policy=RatePolicy(overrides_refresh_s=0.05))
    await rl.check(key("t1", "k1"))
    table.rows["t1"] = {Scope.PUBLIC: Limit(10.0, 7)}
    await asyncio.sleep(0.1)
    await rl.check(key("t1", "k1"))
    await asyncio.sleep(0.01)
    assert (await rl.check(key("t1", "k1"))).limit == 7


async def test_rate_limits_concurrent_first_requests_share_one_read():
    table = Table()
    rl = limits(table=table)
    await asyncio.gather(*(rl.check(key("t9", f"k{i}", Scope.ADMIN)) for i in range(20)))
    await asyncio.sleep(0.01)
    assert table.reads == 2  # one for all twenty, one more under the first mark seen (a change may fall between)


async def test_rate_limits_subscriptions_per_key_are_capped():
    rl = limits()
    async with rl.subscription(key("t1", "k1")), rl.subscription(key("t1", "k1")):
        with pytest.raises(RateLimited) as refused:
            async with rl.subscription(key("t1", "k1")):
                pass
        assert refused.value.extensions["code"] == "RATE_LIMITED"
        async with rl.subscription(key("t1", "k2")):  # another key has its own places
            pass
    async with rl.subscription(key("t1", "k1")), rl.subscription(key("t1", "k1")):
        pass  # closed ones gave their places back


class Down(LocalBuckets):
    """A shared store that fails every call, counting them."""

    calls = 0

    async def take(self, buckets, **kw):
        self.calls += 1
        raise BucketsUnavailable("down")


async def test_rate_limits_fall_back_per_process_without_asking_the_down_store_each_time():
    down = Down()
    rl = limits(down, policy=RatePolicy(keys=POLICY.keys, tenant=POLICY.tenant, fallback_s=60))
    decisions = [await rl.check(key("t1", "k1")) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, False, False]  # still limited, locally
    assert down.calls == 1 and rl.degraded


async def test_rate_limits_disabled_allow_everything():
    rl = limits(policy=RatePolicy(keys=POLICY.keys, tenant=POLICY.tenant, enabled=False))
    assert all([(await rl.check(key("t1", "k1"))).allowed for _ in range(10)])


class Counting(LocalBuckets):
    """A shared store counting takes."""

    takes = 0

    async def take(self, buckets, **kw):
        self.takes += 1
        return await super().take(buckets, **kw)


async def test_rate_limits_a_refused_key_is_refused_here_for_its_wait_without_asking_again():
    shared = Counting()
    rl = limits(shared, policy=RatePolicy(keys={**POLICY.keys, Scope.PUBLIC: Limit(5.0, 1)}, tenant=POLICY.tenant))
    assert (await rl.check(key("t1", "k1"))).allowed
    refusals = [await rl.check(key("t1", "k1")) for _ in range(10)]
    assert not any(d.allowed for d in refusals)
    assert shared.takes == 2  # the first refusal asked the store; the rest were known here
    await asyncio.sleep(0.25)  # one token at 5 a second
    assert (await rl.check(key("t1", "k1"))).allowed and shared.takes == 3
