"""Models of pinned versions, for experiment variants that serve a given model version (or the version an alias
names) instead of the champion.

A pin is resolved to its version record at most every `ttl_s` per (scenario, pin): an alias may move, and an
artifact rewritten after an erasure has a newer revision, which reloads the model. A swap notice for the scenario
drops its resolutions at once. Models load off the event loop on first use and are bounded in number (least
recently used go first); a version that fails to load is not retried before `ttl_s` has passed.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from domain.learning import versions
from domain.learning.model import ScenarioModel
from models.documents import ModelVersion

log = structlog.get_logger()

MAX_RESOLVED = 10_000  # pin resolutions kept; past it they are all dropped (each costs one read to redo)


@dataclass(frozen=True)
class Pinned:
    """A pinned version's model, as loaded."""

    version: int
    revision: int
    model: ScenarioModel
    spaces: Mapping[str, str]  # its vector spaces by kind (a kind without one: searched in memory)


def pin_key(pin: Mapping[str, Any]) -> str:
    """Return a pin's cache key: `v3` for a version, `@challenger` for an alias."""
    return f"v{int(pin['version'])}" if pin.get("version") is not None else f"@{pin.get('alias')}"


class PinnedModels:
    """Resolve pins to versions and hold the pinned versions' models."""

    def __init__(self, read: Callable[[ModelVersion], Awaitable[ScenarioModel | None]], *, size: int = 8,
                 ttl_s: float = 30.0) -> None:
        self._read = read  # returns None (and logs) for an artifact that does not load
        self._size = size
        self._ttl = ttl_s
        self._resolved: dict[tuple[str, str, str], tuple[float, ModelVersion | None]] = {}
        self._models: OrderedDict[tuple[str, str, int], Pinned] = OrderedDict()
        self._failed: dict[tuple[str, str, int, int], float] = {}
        self._locks: dict[tuple, asyncio.Lock] = {}

    async def resolve(self, tenant_id: str, scenario_id: str, pin: Mapping[str, Any]) -> ModelVersion | None:
        """Return the usable version the pin names now, or None (unknown, failed, or its artifact pruned)."""
        key = (tenant_id, scenario_id, pin_key(pin))
        hit = self._resolved.get(key)
        if hit is not None and time.monotonic() - hit[0] < self._ttl:
            return hit[1]
        async with self._lock(key):
            hit = self._resolved.get(key)
            if hit is not None and time.monotonic() - hit[0] < self._ttl:
                return hit[1]  # another request resolved it while this one waited
            doc = await versions.pinned(tenant_id, scenario_id, pin)
            doc = doc if doc is not None and versions.usable(doc) else None
            if doc is None:  # logged once per resolution: the variant serves the champion meanwhile
                log.warning("experiments.pin_unresolved", tenant_id=tenant_id, scenario_id=scenario_id, pin=dict(pin))
            if len(self._resolved) >= MAX_RESOLVED:
                self._resolved.clear()
            self._resolved[key] = (time.monotonic(), doc)
            return doc

    async def model(self, doc: ModelVersion) -> Pinned | None:
        """Return the version's model (loaded once per revision), or None when it does not load."""
        key = (doc.tenant_id, doc.scenario_id, doc.version)
        held = self._models.get(key)
        if held is not None and held.revision >= doc.revision:
            self._models.move_to_end(key)
            return held
        async with self._lock(key):
            held = self._models.get(key)
            if held is not None and held.revision >= doc.revision:
                return held
            failed = (*key, doc.revision)
            if time.monotonic() - self._failed.get(failed, -self._ttl) < self._ttl:
                return None
            model = await self._read(doc)
            if model is None:
                if len(self._failed) >= MAX_RESOLVED:
                    self._failed.clear()
                self._failed[failed] = time.monotonic()
                return None
            self._failed.pop(failed, None)
            pinned = Pinned(doc.version, doc.revision, model, dict(doc.spaces))
            self._models[key] = pinned
            while len(self._models) > self._size:
                self._models.popitem(last=False)
            return pinned

    def forget(self, tenant_id: str, scenario_id: str) -> None:
        """Drop the scenario's pin resolutions: the next use reads them again (and reloads a rewritten model)."""
        for key in [k for k in self._resolved if k[:2] == (tenant_id, scenario_id)]:
            del self._resolved[key]

    def clear(self) -> None:
        """Drop every resolution and model."""
        self._resolved.clear()
        self._models.clear()
        self._failed.clear()

    def _lock(self, key: tuple) -> asyncio.Lock:
        if len(self._locks) > MAX_RESOLVED:
            self._locks = {k: v for k, v in self._locks.items() if v.locked()}
        return self._locks.setdefault(key, asyncio.Lock())
