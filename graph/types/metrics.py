"""Live metrics types: a scenario's counters over a sliding window, with breakdowns by source and variant."""

from __future__ import annotations

import enum
from datetime import datetime

import strawberry

from domain.realtime import snapshots as domain


@strawberry.enum(description="How far back live metrics reach; each window is sliding and ends now.")
class MetricsWindow(enum.Enum):
    MINUTE = "MINUTE"
    FIVE_MINUTES = "FIVE_MINUTES"
    HOUR = "HOUR"
    DAY = "DAY"

    def to_domain(self) -> domain.MetricsWindow:
        """Return the domain window."""
        return domain.MetricsWindow(self.value)


def domain_window(window: MetricsWindow | None) -> domain.MetricsWindow | None:
    """Return the domain window of an optional argument (None: the resolver's default)."""
    return window.to_domain() if window is not None else None


_COMPLETION = "Mean of min(watched / durationSeconds, 1) over WATCH events whose item has a duration."


def _counters(counters: domain.Counters) -> dict[str, int | float]:
    """Return the GraphQL counter and rate fields of domain counters, by Python name."""
    return {
        "impressions": counters.impressions, "clicks": counters.clicks, "ctr": counters.ctr,
        "interactions": counters.interactions, "attributed": counters.attributed,
        "interaction_rate": counters.interaction_rate, "watches": counters.watches,
        "watch_seconds": counters.watch_seconds, "avg_watch_seconds": counters.avg_watch_seconds,
        "completion_rate": counters.completion_rate, "conversions": counters.conversions,
        "conversion_rate": counters.conversion_rate,
    }


@strawberry.type(description="Live counters with their rates.")
class MetricsCounters:
    impressions: int = strawberry.field(description="Items shown (the length of each page answered).")
    clicks: int = strawberry.field(description="CLICK events.")
    ctr: float = strawberry.field(description="clicks / impressions (0 without impressions).")
    interactions: int = strawberry.field(description="Accepted events of every type.")
    attributed: int = strawberry.field(description="Events citing a requestId this scenario served.")
    interaction_rate: float = strawberry.field(description="attributed / impressions.")
    watches: int = strawberry.field(description="WATCH events.")
    watch_seconds: float = strawberry.field(description="Seconds watched in WATCH events.")
    avg_watch_seconds: float = strawberry.field(description="watchSeconds / watches.")
    completion_rate: float = strawberry.field(description=_COMPLETION)
    conversions: int = strawberry.field(description="PURCHASE events.")
    conversion_rate: float = strawberry.field(description="conversions / impressions.")


@strawberry.type(description="Counters of one recall source or experiment variant, with their rates.")
class MetricsBreakdown(MetricsCounters):
    name: str = strawberry.field(description="The recall source (e.g. `item_cf`) or the variant's name.")

    @classmethod
    def from_domain(cls, breakdown: domain.Breakdown) -> MetricsBreakdown:
        """Convert a domain breakdown."""
        return cls(name=breakdown.name, **_counters(breakdown.counters))


@strawberry.type(description="A scenario's live metrics: totals from windowStart to windowEnd (now), with rates.")
class MetricsSnapshot(MetricsCounters):
    scenario_id: strawberry.ID
    window: MetricsWindow
    window_start: datetime = strawberry.field(description="Start of the first minute counted: totals are since then.")
    window_end: datetime = strawberry.field(description="When the snapshot was read.")
    by_source: list[MetricsBreakdown] = strawberry.field(description="Per recall source, most impressions first.")
    by_variant: list[MetricsBreakdown] = strawberry.field(description="Per experiment variant, most impressions first.")

    @classmethod
    def from_domain(cls, snapshot: domain.MetricsSnapshot) -> MetricsSnapshot:
        """Convert a domain snapshot."""
        return cls(
            scenario_id=strawberry.ID(snapshot.scenario_id), window=MetricsWindow(snapshot.window.value),
            window_start=snapshot.window_start, window_end=snapshot.window_end, **_counters(snapshot.totals),
            by_source=[MetricsBreakdown.from_domain(b) for b in snapshot.by_source],
            by_variant=[MetricsBreakdown.from_domain(b) for b in snapshot.by_variant],
        )
