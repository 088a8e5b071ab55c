"""Experiments: design (create, update while DRAFT), lifecycle (start, pause, stop and ship, delete), reads (one, a
page, results, a user's assignment) and sample-size plans; always scoped by tenant.

Lifecycle: DRAFT -> RUNNING <-> PAUSED -> STOPPED. Each move is a compare-and-set on the status read, so two
admins racing on one experiment cannot both win. Experiments of one layer never share a user: RUNNING and PAUSED
ones hold their bucket range, checked when a design is saved and again (after the move) when one starts.
Every move and delete tells every serving process to drop its cached running experiments of the scenario.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

import structlog

from domain import erasure
from domain.errors import BadInput, NotFound, Unavailable
from domain.experiments import assignment
from domain.experiments.design import (
    check_design, check_variant_configs, default_layer, design_input, locked_method, normalised_weights,
)
from domain.experiments.metrics import METRICS
from domain.experiments.plan import plan as sample_size
from domain.experiments.report import ExperimentResults
from domain.hotcache import HotCache, Invalidations
from domain.ids import check_first, decode_cursor, encode_cursor, new_id, utcnow
from domain.learning.registry import check_pins
from domain.scenarios.config import merge_config, validate_config
from domain.scenarios.history import SHIPPED
from domain.scenarios.service import Page, ScenarioService
from models.cache import CacheUnavailable
from models.documents import Experiment, Interaction

log = structlog.get_logger()

DRAFT, RUNNING, PAUSED, STOPPED = "DRAFT", "RUNNING", "PAUSED", "STOPPED"
LIVE = (RUNNING, PAUSED)  # hold their layer's buckets and keep their assignments
KIND = "experiments"  # the invalidation notices' kind: keys are scenario ids
TRAFFIC_DAYS = 7  # expectedDays: the scenario's distinct users over this many days, per day
RESULTS_TTL_S = 1.0  # live results computed this recently are reused (many followers, one computation)


class OutcomeStore(Protocol):
    async def prepare(self, experiment: Experiment) -> None: ...  # at start: computes the CUPED covariates
    async def drop(self, experiment: Experiment) -> None: ...  # at delete: removes its outcomes
    async def stored_arm(self, experiment: Experiment, user_id: str) -> str | None: ...  # THOMPSON: the arm given


class ResultsSource(Protocol):
    async def compute(self, experiment: Experiment, *, frozen: bool = False) -> ExperimentResults: ...


@dataclass(frozen=True, slots=True)
class ExperimentPlan:
    users_per_variant: int
    total_users: int
    expected_days: float | None  # None: no scenario named, or no traffic in it lately


class ExperimentService:
    """Experiments of scenarios, always scoped by tenant."""

    def __init__(self, scenarios: ScenarioService, *, invalidations: Invalidations | None,
                 outcomes: OutcomeStore | None = None, results: ResultsSource | None = None) -> None:
        self._scenarios = scenarios
        self._invalidations = invalidations or Invalidations(None)
        self._outcomes = outcomes
        self._results = results
        self._listeners: list[Callable[[str, list[str]], None]] = []
        self._fresh: HotCache[ExperimentResults] = HotCache(size=1000, ttl_s=RESULTS_TTL_S, stale_s=0.0)
        scenarios.on_delete(self._scenario_deleted)

    def on_change(self, listener: Callable[[str, list[str]], None]) -> None:
        """Call listener(tenant_id, scenario_ids) after each lifecycle change made in this process (the other
        processes hear of it as an `experiments` invalidation notice)."""
        self._listeners.append(listener)

    async def create(self, *, tenant_id: str, input: Mapping[str, Any]) -> Experiment:
        """Create a DRAFT experiment of a scenario from a validated design."""
        scenario = await self._scenarios.get_or_raise(str(input.get("scenarioId") or ""), tenant_id=tenant_id,
                                                      field="input.scenarioId")
        fields = check_design(input, scenario_config=scenario.config)
        await check_pins(fields["variants"], tenant_id=tenant_id, scenario_id=scenario.id)
        fields["layer"] = fields["layer"] or default_layer(scenario.id)
        await self._check_layer_free(tenant_id, fields, exclude=None, field="input.trafficPercent")
        now = utcnow()
        exp = Experiment(id=new_id("exp"), tenant_id=tenant_id, scenario_id=scenario.id, created_at=now,
                         updated_at=now, salt=await _salt(tenant_id, fields["layer"]), **fields)
        await exp.insert()
        return exp

    async def update(self, experiment_id: str, *, tenant_id: str, input: Mapping[str, Any]) -> Experiment:
        """Change a DRAFT's design: the given fields over the stored ones, validated whole."""
        exp = await self.get_or_raise(experiment_id, tenant_id=tenant_id)
        _require(exp, (DRAFT,), "change")
        scenario = await self._scenarios.get_or_raise(exp.scenario_id, tenant_id=tenant_id, field="id")
        given = {k: v for k, v in input.items() if k != "scenarioId"}
        fields = check_design({**design_input(exp), **given}, scenario_config=scenario.config)
        await check_pins(fields["variants"], tenant_id=tenant_id, scenario_id=exp.scenario_id)
        fields["layer"] = fields["layer"] or default_layer(exp.scenario_id)
        await self._check_layer_free(tenant_id, fields, exclude=exp.id, field="input.trafficPercent")
        if fields["layer"] != exp.layer:
            fields["salt"] = await _salt(tenant_id, fields["layer"])
        await self._move(exp, {**fields, "updated_at": utcnow()})
        return await self.get_or_raise(experiment_id, tenant_id=tenant_id)

    async def start(self, experiment_id: str, *, tenant_id: str) -> Experiment:
        """Start a DRAFT (locking its method) or resume a PAUSED experiment."""
        exp = await self.get_or_raise(experiment_id, tenant_id=tenant_id)
        _require(exp, (DRAFT, PAUSED), "start")
        held = {"layer": exp.layer, "traffic_offset": exp.traffic_offset, "traffic_percent": exp.traffic_percent}
        await self._check_layer_free(tenant_id, held, exclude=exp.id, field="id")
        now = utcnow()
        changes: dict[str, Any] = {"status": RUNNING, "paused_at": None, "updated_at": now}
        if exp.status == DRAFT:
            scenario = await self._scenarios.get_or_raise(exp.scenario_id, tenant_id=tenant_id, field="id")
            check_variant_configs(exp.variants, scenario.config, prefix="variants")
            changes |= {"started_at": now, "method": locked_method(exp), "arm_weights": {}}
            if exp.allocation == "THOMPSON":
                changes["arm_weights"] = normalised_weights(exp.variants)
            # Covariates first: a user exposed the moment it runs already finds theirs.
            await self._prepare(exp.model_copy(update=changes))
        before = exp.status
        await self._move(exp, changes)
        if await self._overlapping(tenant_id, exp):
            await self._refuse_raced_start(exp, before)
        await self._changed(exp)
        return await self.get_or_raise(experiment_id, tenant_id=tenant_id)

    async def pause(self, experiment_id: str, *, tenant_id: str) -> Experiment:
        """Pause a RUNNING experiment: no new exposures, users get the scenario as is, assignments kept."""
        exp = await self.get_or_raise(experiment_id, tenant_id=tenant_id)
        _require(exp, (RUNNING,), "pause")
        now = utcnow()
        await self._move(exp, {"status": PAUSED, "paused_at": now, "updated_at": now})
        await self._changed(exp)
        return await self.get_or_raise(experiment_id, tenant_id=tenant_id)

    async def stop(
        self, experiment_id: str, *, tenant_id: str, ship: str | None = None, key_id: str | None = None
    ) -> Experiment:
        """Stop for good and freeze the results; `ship` names the variant whose config becomes the scenario's."""
        exp = await self.get_or_raise(experiment_id, tenant_id=tenant_id)
        _require(exp, LIVE, "stop")
        overrides = await self._shipped_config(exp, ship) if ship is not None else None
        now = utcnow()
        await self._move(exp, {"status": STOPPED, "ended_at": now, "updated_at": now, "shipped": ship})
        await self._changed(exp)
        stopped = await self.get_or_raise(experiment_id, tenant_id=tenant_id)
        await self._freeze(stopped)
        if overrides:  # the control's empty overrides change nothing: no new config version
            await self._scenarios.update(exp.scenario_id, tenant_id=tenant_id, config=overrides, key_id=key_id,
                                         origin=SHIPPED, origin_ref=exp.id)
        return stopped

    async def delete(self, experiment_id: str, *, tenant_id: str) -> Experiment:
        """Delete an experiment (in any state) and its outcomes; return it as it was."""
        exp = await self.get_or_raise(experiment_id, tenant_id=tenant_id)
        result = await Experiment.get_pymongo_collection().delete_one({"_id": exp.id, "tenant_id": tenant_id})
        if result.deleted_count == 0:
            raise NotFound(f"no experiment {experiment_id}", field="id")
        await self._changed(exp)
        await self._drop(exp)
        return exp

    async def get(self, experiment_id: str, *, tenant_id: str) -> Experiment | None:
        """Return the tenant's experiment or None (another tenant's looks missing)."""
        return await Experiment.find_one({"_id": experiment_id, "tenant_id": tenant_id})

    async def get_or_raise(self, experiment_id: str, *, tenant_id: str, field: str = "id") -> Experiment:
        """Return the tenant's experiment or raise NotFound naming the argument."""
        exp = await self.get(experiment_id, tenant_id=tenant_id)
        if exp is None:
            raise NotFound(f"no experiment {experiment_id}", field=field)
        return exp

    async def list(self, *, tenant_id: str, scenario_id: str | None = None, status: str | None = None,
                   first: int | None, after: str | None, max_first: int) -> Page:
        """Return a page of the tenant's experiments, newest first, optionally of one scenario and status."""
        limit = check_first(first, maximum=max_first)
        query: dict[str, Any] = {"tenant_id": tenant_id}
        if scenario_id is not None:
            await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
            query["scenario_id"] = scenario_id
        if status is not None:
            query["status"] = status
        counted = dict(query)
        if (start := decode_cursor(after)) is not None:
            query["_id"] = {"$lt": start}
        docs = await Experiment.find(query).sort([("_id", -1)]).limit(limit + 1).to_list()
        nodes = docs[:limit]
        total = lambda: Experiment.get_pymongo_collection().count_documents(counted)  # noqa: E731
        return Page(nodes=nodes, cursors=[encode_cursor(x.id) for x in nodes], has_next=len(docs) > limit, total=total)

    async def running(self, *, tenant_id: str, scenario_id: str) -> list[Experiment]:
        """Return the scenario's RUNNING experiments, first started first."""
        query = {"tenant_id": tenant_id, "scenario_id": scenario_id, "status": RUNNING}
        return await Experiment.find(query).sort([("started_at", 1)]).to_list()

    async def results(self, experiment_id: str, *, tenant_id: str) -> ExperimentResults | None:
        """Return an experiment's results: None for a DRAFT, frozen once STOPPED, else fresh."""
        return await self.results_of(await self.get_or_raise(experiment_id, tenant_id=tenant_id))

    async def results_of(self, exp: Experiment) -> ExperimentResults | None:
        """Return the results of an experiment already read (see `results`)."""
        if exp.status == STOPPED:
            if exp.results is None:
                await self._freeze(exp)  # the stop could not reach the outcomes: freeze on first read
            return ExperimentResults.from_doc(exp.results) if exp.results else None
        if exp.status == DRAFT or self._results is None:
            return None
        key = (exp.tenant_id, exp.id, exp.status)
        found = self._fresh.get(key)
        if found is None:
            found = await self._compute(exp, frozen=False)
            self._fresh.put(key, found)
        return found

    async def assignment(self, experiment_id: str, user_id: str, *, tenant_id: str) -> str | None:
        """Return the variant a user has or would get (None outside the traffic, or unless RUNNING or PAUSED);
        reads only: it neither assigns nor exposes."""
        exp = await self.get_or_raise(experiment_id, tenant_id=tenant_id, field="experimentId")
        if exp.status not in LIVE:
            return None
        if exp.allocation == "THOMPSON":
            if self._outcomes is None or user_variant(exp, user_id) is None:
                return None
            try:
                return await self._outcomes.stored_arm(exp, user_id)
            except CacheUnavailable as exc:
                raise Unavailable(f"experiment arms are unreachable; try again ({exc})") from exc
        index = user_variant(exp, user_id)
        if index is None:
            return None
        return assignment.INTERLEAVED if exp.allocation == "INTERLEAVE" else exp.variants[index]["name"]

    async def plan(self, *, tenant_id: str, metric: str, baseline: float, baseline_sd: float | None, mde: float,
                   alpha: float = 0.05, power: float = 0.8, variants: int = 2,
                   scenario_id: str | None = None) -> ExperimentPlan:
        """Return the users an experiment needs, and the days the scenario's recent traffic takes to bring them."""
        if metric not in METRICS:
            raise BadInput(f"unknown metric {metric!r}", field="metric")
        per_variant, total = sample_size(METRICS[metric], baseline=baseline, baseline_sd=baseline_sd, mde=mde,
                                         alpha=alpha, power=power, variants=variants)
        days = None
        if scenario_id is not None:
            await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
            daily = await daily_users(tenant_id=tenant_id, scenario_id=scenario_id)
            days = round(total / daily, 2) if daily else None
        return ExperimentPlan(users_per_variant=per_variant, total_users=total, expected_days=days)

    async def _check_layer_free(self, tenant_id: str, fields: Mapping[str, Any], *, exclude: str | None,
                                field: str) -> None:
        """Raise BadInput when a RUNNING or PAUSED experiment of the layer holds any of these buckets."""
        traffic = assignment.span(fields["traffic_offset"], fields["traffic_percent"])
        for other in await _live_in_layer(tenant_id, fields["layer"]):
            if other.id != exclude and assignment.overlaps(traffic, _span(other)):
                raise BadInput(
                    f"experiment {other.id} ({other.name!r}, {other.status}) holds trafficOffset "
                    f"{other.traffic_offset}% + trafficPercent {other.traffic_percent}% of layer {fields['layer']!r}: "
                    "choose traffic outside it, or another layer", field=field)

    async def _overlapping(self, tenant_id: str, exp: Experiment) -> bool:
        """Return whether another live experiment of the layer overlaps (a start that raced with ours)."""
        mine = _span(exp)
        return any(o.id != exp.id and assignment.overlaps(mine, _span(o))
                   for o in await _live_in_layer(tenant_id, exp.layer))

    async def _refuse_raced_start(self, exp: Experiment, before: str) -> None:
        """Put the experiment back as it was and refuse the start (both racers may lose; neither shares users)."""
        undo: dict[str, Any] = {"status": before}
        if before == DRAFT:
            undo |= {"started_at": None, "method": {}, "arm_weights": {}}
        await Experiment.get_pymongo_collection().update_one({"_id": exp.id, "tenant_id": exp.tenant_id},
                                                             {"$set": undo})
        if before == DRAFT:
            await self._drop(exp)  # a DRAFT holds no outcomes
        await self._changed(exp)
        raise BadInput("another experiment of the layer started on overlapping traffic meanwhile", field="id")

    async def _move(self, exp: Experiment, changes: Mapping[str, Any]) -> None:
        """Apply changes if the experiment is still in the status it was read in."""
        result = await Experiment.get_pymongo_collection().update_one(
            {"_id": exp.id, "tenant_id": exp.tenant_id, "status": exp.status}, {"$set": dict(changes)})
        if result.matched_count == 0:
            raise BadInput(f"experiment {exp.id} changed meanwhile (it is no longer {exp.status}); read it again",
                           field="id")

    async def _shipped_config(self, exp: Experiment, ship: str) -> dict[str, Any]:
        """Return the overrides of the variant named `ship`, checked against the scenario's current config."""
        variant = next((v for v in exp.variants if v["name"] == ship), None)
        if variant is None:
            names = ", ".join(v["name"] for v in exp.variants)
            raise BadInput(f"ship names a variant of the experiment ({names}), got {ship!r}", field="ship")
        overrides = dict(variant.get("config") or {})
        scenario = await self._scenarios.get_or_raise(exp.scenario_id, tenant_id=exp.tenant_id, field="id")
        try:
            validate_config(merge_config(scenario.config, overrides), field_prefix="config")
        except BadInput as exc:
            raise BadInput(f"variant {ship!r} no longer fits the scenario's config: {exc.message}", field="ship") from exc
        return overrides

    async def _freeze(self, exp: Experiment) -> None:
        """Compute the final results and keep them in the document (left for the first read if that fails)."""
        if self._results is None:
            return
        try:
            results = await self._results.compute(exp, frozen=True)
        except (CacheUnavailable, Unavailable) as exc:
            log.warning("experiments.freeze_failed", experiment_id=exp.id, error=str(exc))
            return
        exp.results = results.to_doc()
        await Experiment.get_pymongo_collection().update_one({"_id": exp.id, "tenant_id": exp.tenant_id},
                                                             {"$set": {"results": exp.results}})

    async def _compute(self, exp: Experiment, *, frozen: bool) -> ExperimentResults:
        assert self._results is not None
        try:
            return await self._results.compute(exp, frozen=frozen)
        except CacheUnavailable as exc:
            raise Unavailable(f"experiment outcomes are unreachable; try again ({exc})") from exc

    async def _prepare(self, exp: Experiment) -> None:
        if self._outcomes is None:
            return
        try:
            await self._outcomes.prepare(exp)
        except CacheUnavailable as exc:
            raise Unavailable(f"experiment outcomes are unreachable, nothing was started; try again ({exc})") from exc

    async def _drop(self, exp: Experiment) -> None:
        if self._outcomes is None:
            return
        try:
            await self._outcomes.drop(exp)
        except CacheUnavailable as exc:
            log.warning("experiments.drop_failed", experiment_id=exp.id, error=str(exc))

    async def _changed(self, exp: Experiment) -> None:
        """Make every process drop its cached running experiments of the scenario."""
        self._fresh.drop([(exp.tenant_id, exp.id, s) for s in LIVE])
        for listener in self._listeners:
            listener(exp.tenant_id, [exp.scenario_id])
        await self._invalidations.publish(KIND, exp.tenant_id, [exp.scenario_id])

    async def _scenario_deleted(self, tenant_id: str, scenario_id: str) -> None:
        """Delete a deleted scenario's experiments and their outcomes."""
        docs = await Experiment.find({"tenant_id": tenant_id, "scenario_id": scenario_id}).to_list()
        if not docs:
            return
        await Experiment.get_pymongo_collection().delete_many({"tenant_id": tenant_id, "scenario_id": scenario_id})
        for exp in docs:
            await self._drop(exp)
        await self._changed(docs[0])


def user_variant(exp: Experiment, user_id: str) -> int | None:
    """Return the index of the variant the user's hash picks, or None outside the experiment's traffic."""
    return assignment.variant_index(exp.salt, exp.layer, user_id, traffic=_span(exp),
                                    weights=[v["weight"] for v in exp.variants])


async def daily_users(*, tenant_id: str, scenario_id: str, days: int = TRAFFIC_DAYS) -> float:
    """Return the scenario's distinct users over the last `days` days, per day (the rate an experiment gathers
    new users at; daily actives would count returning users again)."""
    since = utcnow() - timedelta(days=days)
    match = {"tenant_id": tenant_id, "scenario_id": scenario_id, "ts": {"$gte": since}}  # one dict: the index applies
    rows = await Interaction.get_pymongo_collection().aggregate([
        {"$match": match}, {"$group": {"_id": "$user_id"}}, {"$group": {"_id": None, "users": {"$sum": 1}}},
    ])
    found = await rows.to_list(None)
    return found[0]["users"] / days if found else 0.0


def _require(exp: Experiment, allowed: tuple[str, ...], verb: str) -> None:
    if exp.status not in allowed:
        raise BadInput(f"cannot {verb} experiment {exp.id}: it is {exp.status}, and only "
                       f"{' or '.join(allowed)} experiments can be", field="id")


def _span(exp: Experiment) -> tuple[int, int]:
    return assignment.span(exp.traffic_offset, exp.traffic_percent)


async def _live_in_layer(tenant_id: str, layer: str) -> list[Experiment]:
    return await Experiment.find({"tenant_id": tenant_id, "layer": layer, "status": {"$in": list(LIVE)}}).to_list()


async def _salt(tenant_id: str, layer: str) -> str:
    """Return the layer's salt, keyed by the tenant's secret hash key (created on first use)."""
    return assignment.layer_salt(await erasure.hash_key(tenant_id=tenant_id), layer)

