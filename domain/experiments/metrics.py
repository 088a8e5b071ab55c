"""What an experiment measures: each exposed user's outcome components, and each metric as a function of them.

The unit of randomisation and of analysis is the user. For every exposed user the stream consumer keeps a vector
of components (counts and sums since their first exposure, each from the lists served to them under the
experiment and the events that cite those lists' `requestId`), and for every variant the sums of each component
and of the products of the components a metric needs (domain.experiments.outcomes). Every statistic is a function
of those sums (domain.experiments.stats), so results cost the same for ten users or ten million.

Components (per exposed user, since exposure):
- impressions: items of every page answered, repeats included (as `MetricsSnapshot.impressions`);
- clicks: attributed CLICK events; conversions: attributed PURCHASE events; converted: 1 when conversions > 0;
- watch_seconds: the sum of attributed WATCH values; completion_sum / completions: the sum of min(watched /
  duration, 1) over attributed WATCH events of items with a duration, and their number;
- interactions: attributed events of any type;
- latency_ms / lists / empty_lists: the summed answer time of the user's served lists, their number, and how
  many held no item;
- team_a_clicks / team_b_clicks / prefers_a / prefers_b: INTERLEAVE only, clicks credited to each variant and
  whether the user's clicks favour one (1/0).
`pre_*`: the same component over the 14 days before the experiment started (the CUPED covariate), fixed at the
user's first exposure.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement

COMPONENTS: tuple[str, ...] = (
    "impressions", "clicks", "conversions", "converted", "watch_seconds", "completion_sum", "completions",
    "interactions", "latency_ms", "lists", "empty_lists", "team_a_clicks", "team_b_clicks", "prefers_a",
    "prefers_b",
)
PRE_COMPONENTS: tuple[str, ...] = (
    "pre_impressions", "pre_clicks", "pre_converted", "pre_watch_seconds", "pre_completion_sum", "pre_completions",
    "pre_interactions",
)
ALL_COMPONENTS: tuple[str, ...] = COMPONENTS + PRE_COMPONENTS
PRE_WINDOW_DAYS = 14


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """One experiment metric: a mean of `numerator` per exposed user, or, with a `denominator`, the ratio of their
    sums (analysed at the user level by the delta method). `pre_*` name the CUPED covariate's components (None:
    no covariate, CUPED does not apply)."""

    name: str
    numerator: str
    denominator: str | None = None
    pre_numerator: str | None = None
    pre_denominator: str | None = None
    binary: bool = False  # the numerator is 0/1 per user: a proportion
    higher_is_better: bool = True

    @property
    def ratio(self) -> bool:
        """Return whether the metric is a ratio of sums (delta method) rather than a mean per user."""
        return self.denominator is not None

    @property
    def components(self) -> tuple[str, ...]:
        """Return the components whose sums and products the metric needs, covariates included."""
        names = (self.numerator, self.denominator, self.pre_numerator, self.pre_denominator)
        return tuple(n for n in names if n is not None)


METRICS: dict[str, MetricSpec] = {
    "CTR": MetricSpec("CTR", "clicks", "impressions", "pre_clicks", "pre_impressions"),
    "USER_CONVERSION": MetricSpec("USER_CONVERSION", "converted", None, "pre_converted", binary=True),
    "WATCH_SECONDS": MetricSpec("WATCH_SECONDS", "watch_seconds", None, "pre_watch_seconds"),
    "COMPLETION_RATE": MetricSpec("COMPLETION_RATE", "completion_sum", "completions", "pre_completion_sum",
                                  "pre_completions"),
    "INTERACTIONS_PER_USER": MetricSpec("INTERACTIONS_PER_USER", "interactions", None, "pre_interactions"),
    "LATENCY_MS": MetricSpec("LATENCY_MS", "latency_ms", "lists", higher_is_better=False),
    "EMPTY_RATE": MetricSpec("EMPTY_RATE", "empty_lists", "lists", higher_is_better=False),
}
# INTERLEAVE's per-user preference: each user counts once, for the variant their clicks favour.
PREFERENCE = MetricSpec("PREFERENCE", "prefers_b", None)


def product_pairs() -> tuple[tuple[str, str], ...]:
    """Return every (a, b) pair (a <= b in ALL_COMPONENTS order) whose sum of products some metric needs."""
    order = {name: i for i, name in enumerate(ALL_COMPONENTS)}
    pairs: set[tuple[str, str]] = set()
    groups = [m.components for m in METRICS.values()]
    groups.append(("team_a_clicks", "team_b_clicks", "prefers_a", "prefers_b"))
    for group in groups:
        for a, b in combinations_with_replacement(sorted(group, key=order.__getitem__), 2):
            pairs.add((a, b))
    return tuple(sorted(pairs, key=lambda p: (order[p[0]], order[p[1]])))


PAIRS = product_pairs()
