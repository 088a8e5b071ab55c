"""Route a request to an experiment arm: which running experiment of the scenario a user is in, and which variant.

Serving asks on every request, so the running experiments of each scenario are kept in memory: re-read in the
background once they are a second old (requests never wait on MongoDB for a scenario they have used lately), and
dropped at once when a lifecycle change here or in another process (an `experiments` invalidation notice) says so,
so a stopped experiment's assignments end everywhere within the notice's delivery.

USER_HASH and INTERLEAVE cost two hashes and no I/O; THOMPSON reads the arm a user was first given (one Redis
call) and gives new users an arm by the current weights. A user in experiments of two layers of the same scenario
is served by the one started first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from domain.experiments.assignment import INTERLEAVED, bucket, span, variant_index
from domain.experiments.outcomes import ExperimentOutcomes
from domain.hotcache import HotCache, Invalidations, Revalidator
from models.cache import CacheUnavailable
from models.documents import Experiment

log = structlog.get_logger()

RUNNING_TTL_S = 1.0
RUNNING_STALE_S = 300.0
KINDS = "experiments"  # the invalidation notices' kind


@dataclass(frozen=True, slots=True)
class Arm:
    """What one request is served with: an experiment's variant (or, interleaved, both of its variants)."""

    experiment_id: str
    variant: str  # the variant's name, or "interleaved"
    overrides: Mapping[str, Any]  # merged over the scenario's config
    key: str  # names the variant's engine and cached answers
    teams: tuple[Arm, Arm] | None = None  # INTERLEAVE: the control's arm and the treatment's
    model: Mapping[str, Any] | None = None  # the model version the variant pins ({"version": n} or {"alias": a})


@dataclass(frozen=True, slots=True)
class Running:
    """A running experiment as routing needs it, prepared once per read."""

    doc: Experiment
    traffic: tuple[int, int]
    weights: tuple[float, ...]
    arms: tuple[Arm, ...]


class ExperimentRouter:
    """Answer which arm serves a user, from the scenario's running experiments kept in memory."""

    def __init__(self, outcomes: ExperimentOutcomes | None, *, invalidations: Invalidations | None = None,
                 ttl_s: float = RUNNING_TTL_S) -> None:
        self._outcomes = outcomes
        self._running: HotCache[tuple[Running, ...]] = HotCache(size=20_000, ttl_s=ttl_s, stale_s=RUNNING_STALE_S)
        self._reread = Revalidator(self._reread_running, name="experiments")
        self._changes = 0
        if invalidations is not None:
            invalidations.on(KINDS, self.forget)

    def forget(self, tenant_id: str, scenario_ids: Sequence[str]) -> None:
        """Drop the scenarios' running experiments: the next request reads them again."""
        self._changes += 1
        self._running.drop((tenant_id, s) for s in scenario_ids)

    async def route(self, *, tenant_id: str, scenario_id: str, user_id: str) -> Arm | None:
        """Return the arm that serves the user, or None outside every running experiment."""
        for running in await self._of(tenant_id, scenario_id):
            arm = await self._arm(running, user_id)
            if arm is not None:
                return arm
        return None

    async def _arm(self, running: Running, user_id: str) -> Arm | None:
        doc = running.doc
        if doc.allocation == "THOMPSON":
            return await self._bandit_arm(running, user_id)
        index = variant_index(doc.salt, doc.layer, user_id, traffic=running.traffic, weights=running.weights)
        if index is None:
            return None
        if doc.allocation == "INTERLEAVE":
            return Arm(doc.id, INTERLEAVED, {}, f"{doc.id}:i", teams=(running.arms[0], running.arms[1]))
        return running.arms[index]

    async def _bandit_arm(self, running: Running, user_id: str) -> Arm | None:
        doc = running.doc
        start, end = running.traffic
        if not start <= bucket(doc.salt, doc.layer, user_id) < end or self._outcomes is None:
            return None
        by_name = {a.variant: a for a in running.arms}
        weights = [doc.arm_weights.get(a.variant, 0.0) for a in running.arms]
        if sum(weights) <= 0:
            weights = list(running.weights)
        # The arm the current weights would give: kept only if the user has none yet (one round trip either way).
        index = variant_index(doc.salt, doc.layer, user_id, traffic=running.traffic, weights=weights)
        try:
            given = await self._outcomes.give_arm(doc, user_id, running.arms[index or 0].variant)
        except CacheUnavailable:
            return None  # without Redis a bandit cannot keep its users' arms: serve the scenario as is
        return by_name.get(given)

    async def _of(self, tenant_id: str, scenario_id: str) -> tuple[Running, ...]:
        key = (tenant_id, scenario_id)
        found, stale = self._running.lookup(key)
        if found is not None:
            if stale:
                self._reread.schedule([key])
            return found
        changes = self._changes
        found = await _read_running(tenant_id, scenario_id)
        if changes == self._changes:
            self._running.put(key, found)
        return found

    async def _reread_running(self, keys: list[tuple[str, str]]) -> None:
        for tenant_id, scenario_id in keys:
            changes = self._changes
            found = await _read_running(tenant_id, scenario_id)
            if changes == self._changes:
                self._running.put((tenant_id, scenario_id), found)


async def _read_running(tenant_id: str, scenario_id: str) -> tuple[Running, ...]:
    docs = await Experiment.find(
        {"tenant_id": tenant_id, "scenario_id": scenario_id, "status": "RUNNING"}
    ).sort([("started_at", 1)]).to_list()
    return tuple(prepared(doc) for doc in docs)


def prepared(doc: Experiment) -> Running:
    """Return what routing needs of a running experiment."""
    arms = tuple(
        Arm(doc.id, v["name"], v.get("config") or {}, f"{doc.id}:{i}", model=v.get("model"))
        for i, v in enumerate(doc.variants)
    )
    weights = tuple(float(v.get("weight", 1.0)) for v in doc.variants)
    return Running(doc=doc, traffic=span(doc.traffic_offset, doc.traffic_percent), weights=weights, arms=arms)

