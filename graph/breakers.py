"""Export each store's circuit-breaker state to Prometheus while the app runs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager

from prometheus_client import Gauge

from graph.metrics import NAMESPACE, Metrics
from models.breaker import BreakerState, CircuitBreaker


def breaker_gauge(metrics: Metrics) -> Gauge:
    """Create `recograph_store_breaker_state{store}` (0 closed, 1 half-open, 2 open); with pooled values, the worst
    state among the live processes."""
    return Gauge("store_breaker_state", "Circuit breaker of a store: 0 closed, 1 half-open, 2 open.", ("store",),
                 namespace=NAMESPACE, registry=metrics.registry, multiprocess_mode="livemax")


@asynccontextmanager
async def exported_breakers(gauge: Gauge, breakers: Mapping[str, CircuitBreaker]) -> AsyncIterator[None]:
    """Keep the gauge at each breaker's state while the block runs."""

    def changed(name: str, state: BreakerState) -> None:
        gauge.labels(name).set(int(state))

    for name, breaker in breakers.items():
        changed(name, breaker.state)
        breaker.on_change(changed)
    try:
        yield
    finally:
        for breaker in breakers.values():
            breaker.off_change(changed)
