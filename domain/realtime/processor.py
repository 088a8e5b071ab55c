"""Apply entries of one tenant: look up item metadata and scenario weights once per batch, then run the script."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from redis import asyncio as aioredis

from domain import erasure
from domain.catalogue import CatalogueService
from domain.realtime.apply import ALL_ASPECTS, EMPTY, REQUEST_TTL_S, Applier, Payload, Planned, encode
from domain.realtime.stream import Entry, StreamEvent
from domain.scenarios.service import ScenarioService
from models.cache import USER_STATE_TTL_S, ItemMeta

WEIGHTS_TTL_S = 30.0  # a scenario's interaction weights change rarely; re-read them this often
# Item metadata (categories, tags, duration) is kept in process this long: asking Redis for it while the previous
# batch's script runs would wait for the script, and the next batch could not be prepared beside it.
METAS_TTL_S = 10.0
METAS_KEPT = 200_000


class Processor:
    """Turn stream entries (or replayed events) into hot state, idempotently."""

    def __init__(
        self, client: aioredis.Redis, catalogue: CatalogueService, scenarios: ScenarioService, *,
        user_ttl_s: int = USER_STATE_TTL_S, attribution_s: int = REQUEST_TTL_S,
    ) -> None:
        self._applier = Applier(client, user_ttl_s=user_ttl_s, attribution_s=attribution_s)
        self._catalogue = catalogue
        self._scenarios = scenarios
        self._weights: dict[tuple[str, str], tuple[float, Mapping[str, float]]] = {}
        self._metas: dict[tuple[str, str], tuple[float, ItemMeta]] = {}

    async def apply(
        self, entries: Sequence[Entry], *, tenant_id: str, aspects: Mapping[int, str] | None = None,
        check_markers: bool = True, live: bool = True,
    ) -> int:
        """Apply entries (each with all aspects unless `aspects` names its letters by position); return how many
        were new, or -1 when live and a rebuild holds the tenant (then nothing was applied)."""
        payload = await self.prepare(entries, tenant_id=tenant_id, aspects=aspects)
        return await self.run(payload, tenant_id=tenant_id, check_markers=check_markers, live=live)

    async def prepare(
        self, entries: Sequence[Entry], *, tenant_id: str, aspects: Mapping[int, str] | None = None
    ) -> Payload:
        """Return the script payload of entries (item metadata and scenario weights looked up once)."""
        if not entries:
            return EMPTY
        events = [e for e in entries if isinstance(e, StreamEvent)]
        metas = await self.metas({e.item_id for e in events}, tenant_id=tenant_id)
        weights = await self.weights({e.scenario_id for e in events}, tenant_id=tenant_id)
        planned = [Planned(e, (aspects or {}).get(n, ALL_ASPECTS)) for n, e in enumerate(entries)]
        key = await erasure.hash_key(tenant_id=tenant_id) if events else b""
        return encode(planned, metas, weights, tenant_id=tenant_id, hash_key=key)

    async def run(self, payload: Payload, *, tenant_id: str, check_markers: bool = True, live: bool = True) -> int:
        """Apply a prepared payload (see `apply`)."""
        return await self._applier.run(payload, tenant_id=tenant_id, check_markers=check_markers, live=live)

    async def metas(self, item_ids: set[str], *, tenant_id: str) -> dict[str, ItemMeta]:
        """Return the metadata of the items that exist (cached in process for METAS_TTL_S)."""
        now = time.monotonic()
        found: dict[str, ItemMeta] = {}
        stale = []
        for item_id in item_ids:
            cached = self._metas.get((tenant_id, item_id))
            if cached is not None and cached[0] >= now:
                found[item_id] = cached[1]
            else:
                stale.append(item_id)
        if stale:
            loaded = await self._catalogue.metas(stale, tenant_id=tenant_id)
            if len(self._metas) + len(loaded) > METAS_KEPT:
                self._metas.clear()
            expires = now + METAS_TTL_S
            self._metas.update({(tenant_id, i): (expires, m) for i, m in loaded.items()})
            found.update(loaded)
        return found

    async def weights(self, scenario_ids: set[str], *, tenant_id: str) -> dict[str, Mapping[str, float]]:
        """Return each scenario's interaction weights (cached for WEIGHTS_TTL_S)."""
        now = time.monotonic()
        stale = [s for s in scenario_ids if self._weights.get((tenant_id, s), (0.0, {}))[0] < now]
        if stale:
            for sid, scenario in zip(stale, await self._scenarios.get_many(stale, tenant_id=tenant_id), strict=True):
                found = scenario.config.get("interactionWeights", {}) if scenario is not None else {}
                self._weights[(tenant_id, sid)] = (now + WEIGHTS_TTL_S, found)
        return {s: self._weights[(tenant_id, s)][1] for s in scenario_ids}
