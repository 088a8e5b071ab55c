"""Assemble an experiment's results from its variants' sufficient statistics (domain.experiments.outcomes).

Reading the sums is one Redis call whatever the number of users, and every statistic is a function of them
(domain.experiments.stats), so results for 100,000 exposed users cost what results for ten do. The method is the
one locked at start (`Experiment.method`); a stopped experiment's results are computed once more and frozen.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace

import structlog

from domain.experiments import bandit, interleave, stats
from domain.experiments.assignment import INTERLEAVED
from domain.experiments.metrics import METRICS, MetricSpec
from domain.experiments.moments import Effect, Moments
from domain.experiments.outcomes import ExperimentOutcomes
from domain.experiments.report import (
    ArmPosterior,
    ExperimentResults,
    Exposure,
    GuardrailResult,
    MetricResult,
    VariantStatistics,
)
from domain.ids import utcnow
from models.documents import Experiment

log = structlog.get_logger()

DEFAULT_TUNING_N = 5000.0
MAX_SRM_EXPORTED = 500  # running experiments whose SRM p-value `running_srm` returns at most


class ResultsService:
    """Compute experiment results on demand, and for every running experiment each minute (`refresh_running`)."""

    def __init__(self, outcomes: ExperimentOutcomes, *, on_weights: Callable[[str, str], Awaitable[None]] | None = None,
                 ) -> None:
        self._outcomes = outcomes
        self._on_weights = on_weights  # told (tenant, scenario) when a bandit's weights moved

    async def compute(self, experiment: Experiment, *, frozen: bool = False) -> ExperimentResults:
        """Return the experiment's results now."""
        moments = await self._outcomes.moments(experiment)
        return results_of(experiment, moments, frozen=frozen)

    async def refresh_running(self) -> int:
        """Recompute and keep the results of every running experiment, and re-fit THOMPSON weights; return how
        many were refreshed. One failing experiment does not stop the others."""
        done = 0
        async for doc in Experiment.find({"status": "RUNNING"}):
            try:
                await self._refresh(doc)
                done += 1
            except Exception:  # noqa: BLE001 - the next minute tries again
                log.exception("experiments.refresh_failed", experiment_id=doc.id)
        return done

    async def running_srm(self, *, limit: int = MAX_SRM_EXPORTED) -> list[tuple[str, str, str, float]]:
        """Return (tenant, scenario, experiment, SRM p-value) of the running experiments, from the results the last
        refresh kept (none before the first, nor under THOMPSON or INTERLEAVE, which have no SRM check), at most
        `limit` of them: an operator's view across tenants."""
        found: list[tuple[str, str, str, float]] = []
        cursor = Experiment.get_pymongo_collection().find(
            {"status": "RUNNING"}, {"tenant_id": 1, "scenario_id": 1, "results.srm": 1})
        try:
            async for doc in cursor:
                p_value = ((doc.get("results") or {}).get("srm") or {}).get("p_value")
                if isinstance(p_value, int | float):
                    found.append((doc["tenant_id"], doc["scenario_id"], doc["_id"], float(p_value)))
                    if len(found) >= limit:
                        break
        finally:
            await cursor.close()
        return found

    async def _refresh(self, doc: Experiment) -> None:
        moments = await self._outcomes.moments(doc)
        update: dict = {"results": results_of(doc, moments).to_doc()}
        bandit_moved = doc.allocation == "THOMPSON"
        if bandit_moved:
            update["arm_weights"] = thompson_weights(doc, moments)
        # Only while still running: a stop meanwhile froze its own results.
        await Experiment.get_pymongo_collection().update_one({"_id": doc.id, "status": "RUNNING"}, {"$set": update})
        if bandit_moved and self._on_weights is not None:
            await self._on_weights(doc.tenant_id, doc.scenario_id)


def results_of(experiment: Experiment, moments: Mapping[str, Moments], *, frozen: bool = False) -> ExperimentResults:
    """Return the results of an experiment whose variants have these moments."""
    names = [v["name"] for v in experiment.variants]
    method = _method(experiment)
    if experiment.allocation == "INTERLEAVE":
        return _interleaved(experiment, moments.get(INTERLEAVED, Moments(0)), method, frozen)
    arms = [moments.get(name, Moments(0)) for name in names]
    exposures = [Exposure(name, m.n) for name, m in zip(names, arms, strict=True)]
    statistics = [_statistics(name, m) for name, m in zip(names, arms, strict=True)]
    if experiment.allocation == "THOMPSON":
        return ExperimentResults(
            computed_at=utcnow(), exposures=exposures, srm=None, metrics=_descriptive(method, names, arms),
            arms=_posteriors(experiment, method, names, arms), statistics=statistics, frozen=frozen,
        )
    weights = [float(v.get("weight", 1.0)) for v in experiment.variants]
    return ExperimentResults(
        computed_at=utcnow(), exposures=exposures, srm=stats.sample_ratio([m.n for m in arms], weights),
        metrics=_compared(method, names, arms), guardrails=_guardrails(method, names, arms),
        statistics=statistics, frozen=frozen,
    )


def _method(experiment: Experiment) -> dict:
    """Return the statistical method: as locked at start, else as designed now (a draft)."""
    designed = {
        "alpha": experiment.alpha, "sequential": experiment.sequential, "cuped": experiment.cuped,
        "tuning_n": DEFAULT_TUNING_N, "primary_metric": experiment.primary_metric,
        "secondary_metrics": list(experiment.secondary_metrics), "guardrails": list(experiment.guardrails),
    }
    return {**designed, **(experiment.method or {})}


def _compared(method: Mapping, names: Sequence[str], arms: Sequence[Moments]) -> list[MetricResult]:
    """Return each metric's control row and one row per treatment, p-values adjusted by Holm within each role."""
    primary = [_rows(method, METRICS[method["primary_metric"]], "PRIMARY", names, arms)]
    secondary = [_rows(method, METRICS[m], "SECONDARY", names, arms) for m in method["secondary_metrics"]
                 if m != method["primary_metric"] and m in METRICS]
    out: list[MetricResult] = []
    for group in (primary, secondary):
        rows = [row for rows in group for row in rows]
        out += _adjusted(rows, float(method["alpha"]))
    return out


def _rows(method: Mapping, spec: MetricSpec, role: str, names: Sequence[str],
          arms: Sequence[Moments]) -> list[MetricResult]:
    control = arms[0]
    rows = [MetricResult(metric=spec.name, variant=names[0], role=role, users=control.n,
                         value=stats.metric_value(spec, control), control_value=stats.metric_value(spec, control))]
    for name, arm in zip(names[1:], arms[1:], strict=True):
        effect = stats.analyse(spec, control, arm, alpha=float(method["alpha"]), sequential=bool(method["sequential"]),
                               cuped=bool(method["cuped"]), tuning_n=float(method.get("tuning_n", DEFAULT_TUNING_N)))
        rows.append(_row(spec.name, name, role, effect))
    return rows


def _row(metric: str, variant: str, role: str, e: Effect) -> MetricResult:
    return MetricResult(
        metric=metric, variant=variant, role=role, users=e.users, value=e.value, control_value=e.control_value,
        difference=e.difference, difference_lower=e.difference_lower, difference_upper=e.difference_upper,
        relative_difference=e.relative_difference, relative_lower=e.relative_lower, relative_upper=e.relative_upper,
        p_value=e.p_value, method=e.method, cuped=e.cuped, variance_reduction=e.variance_reduction,
    )


def _adjusted(rows: list[MetricResult], alpha: float) -> list[MetricResult]:
    """Return the rows with Holm-adjusted p-values over the treatment rows given, and whether each is significant."""
    treated = [i for i, r in enumerate(rows) if r.difference is not None or r.p_value is not None]
    adjusted = stats.holm([rows[i].p_value for i in treated])
    out = list(rows)
    for i, p in zip(treated, adjusted, strict=True):
        out[i] = replace(rows[i], adjusted_p_value=p, significant=None if p is None else p < alpha)
    return out


def _guardrails(method: Mapping, names: Sequence[str], arms: Sequence[Moments]) -> list[GuardrailResult]:
    out = []
    for guard in method["guardrails"]:
        spec = METRICS.get(guard.get("metric"))
        if spec is None:
            continue
        margin = float(guard["margin"])
        for name, arm in zip(names[1:], arms[1:], strict=True):
            p, passed, how = stats.non_inferiority(spec, arms[0], arm, margin=margin, alpha=float(method["alpha"]))
            out.append(GuardrailResult(metric=spec.name, variant=name, margin=margin, p_value=p, passed=passed,
                                       method=how))
    return out


def _descriptive(method: Mapping, names: Sequence[str], arms: Sequence[Moments]) -> list[MetricResult]:
    """Return each arm's value of each metric, with no test (a bandit's arms are not a fixed-split comparison)."""
    metrics = [method["primary_metric"], *method["secondary_metrics"]]
    out = []
    for metric in dict.fromkeys(m for m in metrics if m in METRICS):
        spec = METRICS[metric]
        role = "PRIMARY" if metric == method["primary_metric"] else "SECONDARY"
        control = stats.metric_value(spec, arms[0])
        out += [MetricResult(metric=metric, variant=name, role=role, users=arm.n, value=stats.metric_value(spec, arm),
                             control_value=control, method="thompson") for name, arm in zip(names, arms, strict=True)]
    return out


def _posteriors(experiment: Experiment, method: Mapping, names: Sequence[str],
                arms: Sequence[Moments]) -> list[ArmPosterior]:
    spec = METRICS[method["primary_metric"]]
    found = bandit.posteriors(spec, arms)
    weights = experiment.arm_weights or {}
    return [ArmPosterior(variant=name, mean=mean, lower=lower, upper=upper, probability_best=best,
                         weight=float(weights.get(name, 0.0)))
            for name, (mean, lower, upper, best) in zip(names, found, strict=True)]


def _interleaved(experiment: Experiment, merged: Moments, method: Mapping, frozen: bool) -> ExperimentResults:
    preference = interleave.preference(merged, alpha=float(method["alpha"]))
    spec = METRICS[method["primary_metric"]]
    value = stats.metric_value(spec, merged)
    row = MetricResult(metric=spec.name, variant=INTERLEAVED, role="PRIMARY", users=merged.n, value=value,
                       control_value=value, method="interleaved")
    return ExperimentResults(
        computed_at=utcnow(), exposures=[Exposure(INTERLEAVED, merged.n)], srm=None, metrics=[row],
        preference=preference, statistics=[_statistics(INTERLEAVED, merged)], frozen=frozen,
    )


def thompson_weights(experiment: Experiment, moments: Mapping[str, Moments]) -> dict[str, float]:
    """Return a THOMPSON experiment's next weights: each arm's probability of being best, floored at 5%."""
    names = [v["name"] for v in experiment.variants]
    spec = METRICS[_method(experiment)["primary_metric"]]
    found = bandit.posteriors(spec, [moments.get(n, Moments(0)) for n in names])
    weights = bandit.thompson_weights([best for *_, best in found])
    return dict(zip(names, weights, strict=True))


def _statistics(name: str, m: Moments) -> VariantStatistics:
    return VariantStatistics(
        variant=name, n=m.n, sums=dict(m.sums), products={f"{a}*{b}": v for (a, b), v in m.products.items()},
    )
