"""The impression sink serving hands every page to: one XADD on the tenant's stream, never an error."""

from __future__ import annotations

import time
from collections.abc import Sequence

import structlog
from redis import asyncio as aioredis

from domain.realtime.stream import EventStream, StreamImpression
from domain.recommend.base import Recommendation
from models.cache import CacheUnavailable

log = structlog.get_logger()


class StreamImpressionSink:
    """Append each served page to the tenant's stream; the consumer counts it and keeps it for attribution.

    Implements `domain.realtime.contracts.ImpressionSink`.
    """

    def __init__(self, stream: EventStream) -> None:
        self._stream = stream

    async def record(
        self, *, tenant_id: str, scenario_id: str, user_id: str, request_id: str, variant: str | None,
        items: Sequence[Recommendation], experiment: str | None = None, latency_ms: float = 0.0,
        teams: Sequence[str] = (),
    ) -> None:
        """Note that `items` were shown to the user under request_id (a lost impression only loses a count); an
        experiment's empty pages count too (its EMPTY_RATE)."""
        if not items and not experiment:
            return
        page = StreamImpression(
            request_id=request_id, scenario_id=scenario_id, user_id=user_id, variant=variant,
            served_ms=int(time.time() * 1000), items=tuple((r.item_id, tuple(r.sources)) for r in items),
            experiment=experiment, latency_ms=latency_ms, teams=tuple(teams),
        )
        try:
            await self._stream.append([page], tenant_id=tenant_id)
        except CacheUnavailable as exc:
            log.warning("cache.unavailable", op="impressions.record", error=str(exc))
        except Exception as exc:  # serving must never fail on bookkeeping
            log.error("impressions.failed", error=str(exc))


def impression_sink(client: aioredis.Redis) -> StreamImpressionSink:
    """Return the sink serving records pages with (wired by domain.services)."""
    return StreamImpressionSink(EventStream(client))
