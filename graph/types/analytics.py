"""Admin analytics types: time series, catalogue and audience statistics read from the rollups (README "Analytics")."""

from __future__ import annotations

import enum
from datetime import datetime

import strawberry

from domain.analytics import refresh as progress
from domain.analytics import figures as domain
from domain.analytics import stats

_ROLLED = ("Events received before this time are counted (the last rollup pass that left nothing pending began "
           "then); null before the first complete pass.")


@strawberry.enum(description="The length of a series' buckets (UTC hours or days).")
class AnalyticsGranularity(enum.Enum):
    HOUR = "HOUR"
    DAY = "DAY"

    def to_domain(self) -> domain.Granularity:
        """Return the domain granularity."""
        return domain.Granularity(self.value)


@strawberry.type(description="One bucket of a series, by event time: the live metrics' counters, and users.")
class AnalyticsPoint:
    start: datetime = strawberry.field(description="The bucket's start (UTC).")
    impressions: int = strawberry.field(description="Items shown (the length of each page served).")
    clicks: int = strawberry.field(description="CLICK events.")
    ctr: float | None = strawberry.field(description="clicks / impressions; null without impressions.")
    conversions: int = strawberry.field(description="PURCHASE events.")
    watch_seconds: float = strawberry.field(description="Seconds watched in WATCH events.")
    watches: int = strawberry.field(description="WATCH events.")
    interactions: int = strawberry.field(description="Events of every type.")
    attributed: int = strawberry.field(description="Events citing a requestId of a page of this scenario that "
                                       "showed their item.")
    active_users: int = strawberry.field(description="Distinct users with at least one event in the bucket.")
    new_users: int = strawberry.field(description="Users whose first event in this scenario falls in the bucket.")

    @classmethod
    def from_domain(cls, point: domain.Point) -> AnalyticsPoint:
        """Convert a domain point."""
        return cls(start=point.start, impressions=point.impressions, clicks=point.clicks, ctr=point.ctr,
                   conversions=point.conversions, watch_seconds=point.watch_seconds, watches=point.watches,
                   interactions=point.interactions, attributed=point.attributed, active_users=point.active_users,
                   new_users=point.new_users)


@strawberry.type(description="A scenario's counters per hour or day; every bucket of the range, empty ones too.")
class AnalyticsSeries:
    scenario_id: strawberry.ID
    from_: datetime = strawberry.field(name="from")
    to: datetime
    granularity: AnalyticsGranularity
    points: list[AnalyticsPoint]
    rolled_up_to: datetime | None = strawberry.field(description=_ROLLED)

    @classmethod
    def from_domain(cls, series: domain.Series) -> AnalyticsSeries:
        """Convert a domain series."""
        return cls(scenario_id=strawberry.ID(series.scenario_id), from_=series.start, to=series.end,
                   granularity=AnalyticsGranularity(series.granularity.value),
                   points=[AnalyticsPoint.from_domain(p) for p in series.points], rolled_up_to=series.rolled_up_to)


@strawberry.type(description="An item's impressions and clicks over the range.")
class ItemStat:
    item_id: strawberry.ID
    impressions: int
    clicks: int = strawberry.field(description="CLICK events on the item (recommended or not).")
    ctr: float | None = strawberry.field(description="clicks / impressions; null without impressions.")

    @classmethod
    def from_domain(cls, stat: domain.Stat) -> ItemStat:
        """Convert a domain stat."""
        return cls(item_id=strawberry.ID(stat.name), impressions=stat.impressions, clicks=stat.clicks, ctr=stat.ctr)


@strawberry.type(description="A category's impressions and clicks: the sums over its items (by their categories now).")
class CategoryStat:
    category: str
    impressions: int
    clicks: int
    ctr: float | None

    @classmethod
    def from_domain(cls, stat: domain.Stat) -> CategoryStat:
        """Convert a domain stat."""
        return cls(category=stat.name, impressions=stat.impressions, clicks=stat.clicks, ctr=stat.ctr)


@strawberry.type(description="How much of the catalogue recommendations reach, over whole UTC days of the range.")
class CatalogueStats:
    scenario_id: strawberry.ID
    from_: datetime = strawberry.field(name="from")
    to: datetime
    active_items: int = strawberry.field(description="The scenario's ACTIVE items now.")
    recommended_items: int = strawberry.field(description="Active items shown at least once.")
    coverage: float = strawberry.field(description="recommendedItems / activeItems (0 without active items).")
    gini: float | None = strawberry.field(description="Gini index of impressions over the active items: 0 when all "
                                          "are shown equally, 1 when one takes them all; null when none was shown.")
    long_tail_items: int = strawberry.field(description="Active items never shown.")
    long_tail_share: float = strawberry.field(description="longTailItems / activeItems.")
    top_items_by_impressions: list[ItemStat]
    top_items_by_ctr: list[ItemStat] = strawberry.field(description="Among items with at least minImpressions.")
    top_categories_by_impressions: list[CategoryStat]
    top_categories_by_ctr: list[CategoryStat] = strawberry.field(description="Among categories with at least "
                                                                 "minImpressions.")
    rolled_up_to: datetime | None = strawberry.field(description=_ROLLED)

    @classmethod
    def from_domain(cls, found: domain.CatalogueStats) -> CatalogueStats:
        """Convert domain catalogue statistics."""
        return cls(
            scenario_id=strawberry.ID(found.scenario_id), from_=found.start, to=found.end,
            active_items=found.active_items, recommended_items=found.recommended_items, coverage=found.coverage,
            gini=found.gini, long_tail_items=found.long_tail_items, long_tail_share=found.long_tail_share,
            top_items_by_impressions=[ItemStat.from_domain(s) for s in found.top_items_by_impressions],
            top_items_by_ctr=[ItemStat.from_domain(s) for s in found.top_items_by_ctr],
            top_categories_by_impressions=[CategoryStat.from_domain(s) for s in found.top_categories_by_impressions],
            top_categories_by_ctr=[CategoryStat.from_domain(s) for s in found.top_categories_by_ctr],
            rolled_up_to=found.rolled_up_to,
        )


@strawberry.type(description="Users with lower <= events <= upper over the range (upper null: no bound).")
class CountBucket:
    lower: int
    upper: int | None
    users: int

    @classmethod
    def from_domain(cls, bucket: stats.CountBucket) -> CountBucket:
        """Convert a domain bucket."""
        return cls(lower=bucket.lower, upper=bucket.upper, users=bucket.users)


@strawberry.type(description="The users whose first event in the scenario fell in a week (Monday 00:00 UTC).")
class RetentionCohort:
    week: datetime
    users: int
    retained: list[float] = strawberry.field(description="retained[k]: the share of the cohort with an event k weeks "
                                             "later (k = 0: the cohort's own week, 1.0), up to the range's last week.")

    @classmethod
    def from_domain(cls, cohort: stats.Cohort) -> RetentionCohort:
        """Convert a domain cohort."""
        return cls(week=cohort.week, users=cohort.users, retained=list(cohort.retained))


@strawberry.type(description="Impressions and attributed clicks at a list position (1-based).")
class PositionStat:
    position: int
    impressions: int
    clicks: int = strawberry.field(description="CLICK events citing a page's requestId, for the item at this position.")
    ctr: float | None

    @classmethod
    def from_domain(cls, stat: domain.Stat) -> PositionStat:
        """Convert a domain stat."""
        return cls(position=int(stat.name), impressions=stat.impressions, clicks=stat.clicks, ctr=stat.ctr)


@strawberry.type(description="Impressions and attributed clicks of the items a recall source proposed.")
class SourceStat:
    source: str
    impressions: int
    clicks: int
    ctr: float | None

    @classmethod
    def from_domain(cls, stat: domain.Stat) -> SourceStat:
        """Convert a domain stat."""
        return cls(source=stat.name, impressions=stat.impressions, clicks=stat.clicks, ctr=stat.ctr)


@strawberry.type(description="Who uses the scenario and how they respond, over whole UTC days of the range.")
class AudienceStats:
    scenario_id: strawberry.ID
    from_: datetime = strawberry.field(name="from")
    to: datetime
    users: int = strawberry.field(description="Distinct users with at least one event.")
    mean_events_per_user: float | None
    median_events_per_user: float | None
    events_per_user: list[CountBucket]
    retention: list[RetentionCohort] = strawberry.field(description="Weekly cohorts from the week holding `from`, "
                                                        "oldest first; weeks that gained no user are left out.")
    ctr_by_position: list[PositionStat]
    ctr_by_source: list[SourceStat] = strawberry.field(description="Most impressions first.")
    rolled_up_to: datetime | None = strawberry.field(description=_ROLLED)

    @classmethod
    def from_domain(cls, found: domain.AudienceStats) -> AudienceStats:
        """Convert domain audience statistics."""
        return cls(
            scenario_id=strawberry.ID(found.scenario_id), from_=found.start, to=found.end, users=found.users,
            mean_events_per_user=found.mean_events_per_user, median_events_per_user=found.median_events_per_user,
            events_per_user=[CountBucket.from_domain(b) for b in found.events_per_user],
            retention=[RetentionCohort.from_domain(c) for c in found.retention],
            ctr_by_position=[PositionStat.from_domain(s) for s in found.ctr_by_position],
            ctr_by_source=[SourceStat.from_domain(s) for s in found.ctr_by_source],
            rolled_up_to=found.rolled_up_to,
        )


@strawberry.type(description="Where the tenant's rollups stand after an on-demand pass.")
class AnalyticsRefresh:
    hours_rolled_up: int = strawberry.field(description="Hours this call recomputed.")
    pending_hours: int = strawberry.field(description="Hours still to recompute (the periodic pass goes on with them).")
    rolled_up_to: datetime | None = strawberry.field(description=_ROLLED)
    busy: bool = strawberry.field(description="Another pass held the tenant throughout: this call recomputed nothing.")

    @classmethod
    def from_domain(cls, done: progress.Progress) -> AnalyticsRefresh:
        """Convert the domain progress."""
        return cls(hours_rolled_up=done.hours_done, pending_hours=done.pending, rolled_up_to=done.rolled_up_to,
                   busy=done.busy)
