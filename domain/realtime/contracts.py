"""What the real-time writers and readers agree on: the impression sink, and where live metrics live in Redis.

Writers: ingest appends events to the tenant's stream, serving hands each page it answers to an `ImpressionSink`
(which appends it to the same stream), and the event consumer alone turns both into counters. Readers: the
`metrics` subscription, Prometheus and the live popularity sources.

Live metrics are counted by when recograph received the event or served the page (wall clock), not by event time:
they describe what is happening now. Each minute and each hour has a hash of counters per scenario:

    t:{tenant}:m:{scenario}:{minute}   minute = epoch seconds // 60     (kept METRICS_MINUTE_TTL_S)
    t:{tenant}:h:{scenario}:{hour}     hour = epoch seconds // 3600     (kept METRICS_HOUR_TTL_S)

Fields are the names in `FIELDS`, plus the same names broken down by recall source and by experiment variant:
`clicks|src:als`, `impressions|var:B`. After each batch the consumer publishes the scenario id on the tenant's
metrics channel, so subscribers know a fresh snapshot can be read.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from domain.recommend.base import Recommendation
from models.cache import tenant_key

METRICS_MINUTE_TTL_S = 26 * 3600  # a DAY window reads the edge hour's minutes
METRICS_HOUR_TTL_S = 8 * 86400

IMPRESSIONS = "impressions"  # items shown: the length of each page answered
CLICKS = "clicks"  # CLICK events
INTERACTIONS = "interactions"  # every accepted event
WATCH_SECONDS = "watch_seconds"  # sum of WATCH values
WATCHES = "watches"  # WATCH events
COMPLETION_SUM = "completion_sum"  # sum of min(value / attributes.durationSeconds, 1) over WATCH with a duration
COMPLETIONS = "completions"  # WATCH events whose item has a duration (the denominator of completion rate)
CONVERSIONS = "conversions"  # PURCHASE events
ATTRIBUTED = "attributed"  # events that cite a requestId recorded as an impression of the same scenario
FIELDS = (IMPRESSIONS, CLICKS, INTERACTIONS, WATCH_SECONDS, WATCHES, COMPLETION_SUM, COMPLETIONS, CONVERSIONS, ATTRIBUTED)


def by_source(field: str, source: str) -> str:
    """Return the field counting `field` for items a recall source proposed."""
    return f"{field}|src:{source}"


def by_variant(field: str, variant: str) -> str:
    """Return the field counting `field` under an experiment variant."""
    return f"{field}|var:{variant}"


def minute_key(tenant_id: str, scenario_id: str, minute: int) -> str:
    """Return the hash of one scenario's counters for one minute (epoch seconds // 60)."""
    return tenant_key(tenant_id, "m", scenario_id, str(minute))


def hour_key(tenant_id: str, scenario_id: str, hour: int) -> str:
    """Return the hash of one scenario's counters for one hour (epoch seconds // 3600)."""
    return tenant_key(tenant_id, "h", scenario_id, str(hour))


def metrics_channel(tenant_id: str) -> str:
    """Return the pub/sub channel on which the consumer announces (by scenario id) that counters moved."""
    return tenant_key(tenant_id, "metrics")


class ImpressionSink(Protocol):
    async def record(
        self, *, tenant_id: str, scenario_id: str, user_id: str, request_id: str, variant: str | None,
        items: Sequence[Recommendation], experiment: str | None = None, latency_ms: float = 0.0,
        teams: Sequence[str] = (),
    ) -> None:
        """Note that `items` were shown to the user under request_id. Never raises: serving must not fail on it."""
        ...


class ReturningNotes(Protocol):
    def note(self, user_id: str, *, tenant_id: str) -> None:
        """Note, without waiting, a user found without Redis state (new, or back after their keys expired), so
        their state is rebuilt from MongoDB in the background (domain.realtime.returning). Never raises."""
        ...
