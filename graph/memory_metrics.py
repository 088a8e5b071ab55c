"""Prometheus series of Redis's memory: its use, its cap, and an estimate per tenant (models.redis_memory).

- `recograph_redis_used_memory_bytes` and `recograph_redis_maxmemory_bytes` (0: no cap): read on scrape, at most
  once per USED_MIN_INTERVAL_S.
- `recograph_redis_tenant_memory_bytes{tenant}`: a sample of SAMPLE_KEYS random keys weighed with MEMORY USAGE and
  scaled to the used memory, at most once per TENANT_INTERVAL_S, for the MAX_TENANTS largest tenants sampled.
  Tenant-labelled: hidden from a scrape without credentials (graph.metrics_access). Approximate: a tenant with few
  keys may be missed by one sample and show up in the next.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from graph.metrics import Metrics
from models.redis_memory import SAMPLE_KEYS, memory_use, sample_tenants

USED_MIN_INTERVAL_S = 1.0
TENANT_INTERVAL_S = 60.0
MAX_TENANTS = 200
NO_TENANT = "-"  # the label of keys that belong to no tenant (job queue, stream registry)


class RedisMemoryExporter:
    """Keep the Redis memory gauges of one app's metrics."""

    def __init__(self, metrics: Metrics, *, samples: int = SAMPLE_KEYS, tenant_interval_s: float = TENANT_INTERVAL_S,
                 max_tenants: int = MAX_TENANTS) -> None:
        gauge = metrics.read_gauge
        self._used = gauge("redis_used_memory_bytes", "Memory Redis uses (INFO memory used_memory).")
        self._max = gauge("redis_maxmemory_bytes", "Redis's memory cap (maxmemory; 0: none).")
        self._tenants = gauge("redis_tenant_memory_bytes", "Estimated Redis memory of the tenant's keys (a sample "
                              "of keys weighed with MEMORY USAGE, scaled to the used memory).", ("tenant",))
        self._samples, self._tenant_interval_s, self._max_tenants = samples, tenant_interval_s, max_tenants
        self._used_at = self._sampled_at = float("-inf")
        self._exported: set[str] = set()
        metrics.on_scrape(self._scrape)

    async def refresh(self, client: Any, *, tenants: bool) -> None:
        """Read used memory and the cap; with `tenants`, sample the per-tenant estimate too."""
        self._used_at = time.monotonic()
        use = await memory_use(client)
        self._used.set(use.used)
        self._max.set(use.max)
        if tenants:
            self._sampled_at = time.monotonic()
            self.update(await sample_tenants(client, used=use.used, samples=self._samples))

    def update(self, estimates: dict[str, float]) -> None:
        """Set the per-tenant series to `estimates` (largest first, at most max_tenants) and drop the others."""
        kept = dict(sorted(estimates.items(), key=lambda kv: -kv[1])[: self._max_tenants])
        current = {tenant or NO_TENANT: value for tenant, value in kept.items()}
        for tenant in self._exported - current.keys():
            with contextlib.suppress(KeyError):
                self._tenants.remove(tenant)
        for tenant, value in current.items():
            self._tenants.labels(tenant).set(round(value))
        self._exported = set(current)

    async def _scrape(self, state: Any) -> None:
        runtime = getattr(state, "runtime", None)  # set by the app's lifespan; absent in bare test apps
        now = time.monotonic()
        if runtime is None or now - self._used_at < USED_MIN_INTERVAL_S:
            return
        await self.refresh(runtime.cache.client, tenants=now - self._sampled_at >= self._tenant_interval_s)
