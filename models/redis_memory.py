"""How much memory Redis uses, against its `maxmemory`, and roughly how much of it each tenant's keys take.

The per-tenant figure is an estimate: `sample_tenants` draws up to `samples` keys with RANDOMKEY (uniform over the
keyspace), weighs each with MEMORY USAGE, groups them by their `t:{tenant}:` prefix and scales each tenant's share
of the sample to `used_memory`. Keys outside any tenant (the stream registry, the job queue) count as `""`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from redis import asyncio as aioredis

HIGH_RATIO = 0.9  # readiness reports `degraded` above this share of maxmemory
SAMPLE_KEYS = 500
MEMORY_USAGE_SAMPLES = 5  # MEMORY USAGE's own sampling of a large aggregate's elements (Redis's default)


@dataclass(frozen=True, slots=True)
class MemoryUse:
    """`used_memory` and `maxmemory` of `INFO memory` (max 0: no cap)."""

    used: int
    max: int

    @property
    def ratio(self) -> float | None:
        """Return used / max, or None without a cap."""
        return self.used / self.max if self.max > 0 else None

    @property
    def high(self) -> bool:
        """Return whether usage is above HIGH_RATIO of the cap."""
        return self.ratio is not None and self.ratio > HIGH_RATIO

    def as_dict(self) -> dict[str, object]:
        """Return what readiness shows."""
        status = "high" if self.high else "ok"
        ratio = None if self.ratio is None else round(self.ratio, 4)
        return {"status": status, "usedBytes": self.used, "maxBytes": self.max, "ratio": ratio}


async def memory_use(client: aioredis.Redis) -> MemoryUse:
    """Read `used_memory` and `maxmemory` from `INFO memory`."""
    info = await client.info("memory")
    return MemoryUse(used=int(info.get("used_memory", 0)), max=int(info.get("maxmemory", 0)))


def tenant_of_key(key: str) -> str:
    """Return the tenant of a key `t:{T}:...`, or "" for a key of no tenant."""
    if key.startswith("t:{") and (end := key.find("}:", 3)) > 0:
        return key[3:end]
    return ""


async def sample_tenants(client: aioredis.Redis, *, used: int, samples: int = SAMPLE_KEYS) -> dict[str, float]:
    """Return each sampled tenant's estimated bytes: its share of the sampled keys' MEMORY USAGE times `used`."""
    async with client.pipeline(transaction=False) as pipe:
        for _ in range(samples):
            pipe.randomkey()
        keys = [k.decode() if isinstance(k, bytes) else k for k in await pipe.execute() if k is not None]
    if not keys:
        return {}
    async with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.memory_usage(key, samples=MEMORY_USAGE_SAMPLES)
        sizes = await pipe.execute()
    return scale(_by_tenant(keys, sizes), used)


def _by_tenant(keys: list[str], sizes: list[int | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, size in zip(keys, sizes, strict=True):
        if size:  # None: the key expired between the two round trips
            tenant = tenant_of_key(key)
            out[tenant] = out.get(tenant, 0) + int(size)
    return out


def scale(sampled: Mapping[str, int], used: int) -> dict[str, float]:
    """Return each tenant's share of the sampled bytes times `used`."""
    total = sum(sampled.values())
    return {tenant: used * n / total for tenant, n in sampled.items()} if total else {}
