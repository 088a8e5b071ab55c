"""Prometheus instruments of the jobs (attempt durations and failures by kind and outcome) and of the event
consumers running in this process.

The API process records into its app registry (served at /metrics); a separate worker records into its own and
serves it, with its consumer's counters, on RECOGRAPH_JOBS_METRICS_PORT when set.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

NAMESPACE = "recograph"
# Jobs run from well under a second (cleanup of a small scenario) to tens of minutes (training a large one).
JOB_BUCKETS = (0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 1800.0, 3600.0)
FAILED = frozenset({"failed", "retried", "interrupted"})


class JobMetrics:
    """A JobObserver (domain.jobs.JobService.watch) that records each attempt in a Prometheus registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.durations = Histogram(
            "job_duration_seconds", "Job attempt duration by kind and outcome (succeeded, failed, retried, "
            "interrupted, cancelled).", ("kind", "outcome"), namespace=NAMESPACE, registry=registry,
            buckets=JOB_BUCKETS,
        )
        self.failures = Counter(
            "job_failures_total", "Job attempts that did not succeed, by kind and outcome.", ("kind", "outcome"),
            namespace=NAMESPACE, registry=registry,
        )

    def observe(self, kind: str, outcome: str, seconds: float) -> None:
        """Record one finished attempt."""
        self.durations.labels(kind, outcome).observe(seconds)
        if outcome in FAILED:
            self.failures.labels(kind, outcome).inc()


class ConsumerCollector:
    """Collect this process's consumer counters on scrape (`recograph_consumer_<name>_total`,
    `recograph_consumer_last_batch_timestamp`, `recograph_consumers_running`); zero where none runs."""

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        # Imported here: workers.consumer imports workers.settings, which imports this module.
        from workers.consumer import CONSUMER_COUNTERS, consumer_metrics

        values = consumer_metrics()
        for name, doc in CONSUMER_COUNTERS.items():
            yield CounterMetricFamily(f"{NAMESPACE}_consumer_{name}", doc,
                                      value=values[f"{NAMESPACE}_consumer_{name}_total"])
        yield GaugeMetricFamily(f"{NAMESPACE}_consumer_last_batch_timestamp",
                                "Wall clock of the last batch this process's consumers applied (0: none).",
                                value=values[f"{NAMESPACE}_consumer_last_batch_timestamp"])
        yield GaugeMetricFamily(f"{NAMESPACE}_consumers_running", "Consumers running in this process.",
                                value=values[f"{NAMESPACE}_consumers_running"])
