"""The model registry: a scenario's model versions, promotion and rollback by an admin, and the versions experiment
variants pin. The life cycle itself (statuses, aliases, automatic promotion) is in domain.learning.versions.

A promotion or rollback is checked first (the version must be READY or RETIRED, applied by its training, with an
artifact that loads), then recorded, then announced as a training's new champion is: this process's serving copy
swaps at once and every other serving process hears the swap notice and swaps after loading the model in full, so
no request sees half a model or fails. Tenancy: another tenant's version or scenario is reported missing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from domain.errors import BadInput, NotFound
from domain.ids import check_first
from domain.learning import versions
from domain.learning.model import ScenarioModel
from domain.learning.service import LearningConfig, announce
from domain.learning.versions import CHAMPION, MODEL_KIND
from domain.scenarios.service import ScenarioService
from models.documents import ModelVersion

MAX_LISTED = 50  # Scenario.models lists at most this many versions, newest first
# How each kind's artifact is read, to check that it loads before it may serve; kinds without one are not checked.
LOADERS: dict[str, Callable[[Path], Any]] = {MODEL_KIND: ScenarioModel.load}


class ModelVersionService:
    """Read, promote and roll back a tenant's model versions."""

    def __init__(self, scenarios: ScenarioService, *, learning: LearningConfig | None) -> None:
        self._scenarios = scenarios
        self._learning = learning

    async def list(self, scenario_id: str, *, tenant_id: str, first: int | None = None) -> list[ModelVersion]:
        """Return the scenario's versions of every kind, newest first."""
        limit = check_first(first, maximum=MAX_LISTED)
        return await versions.listing(tenant_id, scenario_id, limit=limit)

    async def get_or_raise(self, version_id: str, *, tenant_id: str, field: str = "id") -> ModelVersion:
        """Return one of the tenant's versions or raise NotFound naming the argument."""
        doc = await ModelVersion.find_one({"_id": version_id, "tenant_id": tenant_id})
        if doc is None:
            raise NotFound(f"no model version {version_id}", field=field)
        return doc

    async def promote(self, version_id: str, *, tenant_id: str) -> ModelVersion:
        """Make the version its kind's champion and have every serving process swap to it (the champion: no-op)."""
        doc = await self.get_or_raise(version_id, tenant_id=tenant_id)
        if CHAMPION in doc.aliases:
            return doc
        await self._check_servable(doc, field="id")
        await versions.promote(doc)
        return await self._announced(doc)

    async def rollback(self, scenario_id: str, *, tenant_id: str, kind: str = MODEL_KIND) -> ModelVersion:
        """Make the champion the current champion replaced the champion again (one step back per call)."""
        await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
        current = await versions.champion(tenant_id, scenario_id, kind)
        if current is None:
            raise BadInput(f"the scenario has no {kind!r} champion to roll back from", field="kind")
        target = await versions.rollback_target(current)
        if target is None:
            raise BadInput(f"version {current.version} replaced no champion that can still serve (each kind keeps "
                           f"the artifacts of its newest retired versions only)", field="scenarioId")
        await self._check_servable(target, field="scenarioId")
        await versions.promote(target, remember=False)
        return await self._announced(target)

    async def _check_servable(self, doc: ModelVersion, *, field: str) -> None:
        """Raise BadInput unless the version is complete, applied, kept on disk and loads."""
        if not versions.usable(doc):
            raise BadInput(f"version {doc.version} is {_state(doc)}: only a READY or RETIRED version with its "
                           f"artifact can serve", field=field)
        loader = LOADERS.get(doc.kind)
        if loader is None or self._learning is None:
            return
        try:
            await asyncio.to_thread(loader, Path(self._learning.models_dir) / (doc.artifact or ""))
        except Exception as exc:  # noqa: BLE001 - whatever is broken in it, it must not serve
            raise BadInput(f"version {doc.version}'s artifact does not load ({type(exc).__name__}: {exc})",
                           field=field) from exc

    async def _announced(self, doc: ModelVersion) -> ModelVersion:
        fresh = await self.get_or_raise(doc.id, tenant_id=doc.tenant_id)
        if self._learning is not None:
            await announce(fresh, self._learning)
        return fresh


async def check_pins(variants: Sequence[Mapping[str, Any]], *, tenant_id: str, scenario_id: str,
                     prefix: str = "input.variants") -> None:
    """Raise BadInput, naming the pin's field, unless each variant's pinned version can serve the scenario."""
    for i, variant in enumerate(variants):
        pin = variant.get("model")
        if not pin:
            continue
        by_version = pin.get("version") is not None
        field = f"{prefix}.{i}.model.{'version' if by_version else 'alias'}"
        named = f"version {pin['version']}" if by_version else f"alias {pin.get('alias')!r}"
        doc = await versions.pinned(tenant_id, scenario_id, pin)
        if doc is None:
            raise BadInput(f"the scenario has no model {named}", field=field)
        if not versions.usable(doc):
            raise BadInput(f"model {named} is {_state(doc)}: a variant can pin only a READY or RETIRED version with "
                           f"its artifact", field=field)


def _state(doc: ModelVersion) -> str:
    """Say why a version cannot serve."""
    if doc.status not in versions.USABLE:
        return doc.status
    if doc.artifact is None:
        return f"{doc.status} without its artifact (pruned)"
    return f"{doc.status} but not yet applied by its training"
