"""Scenarios: create from a template, update (validated, versioned), delete, read and list."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from domain.errors import BadInput, NotFound, Unavailable
from domain.hotcache import HotCache, Invalidations, Revalidator
from domain.ids import check_first, decode_cursor, encode_cursor, new_id, utcnow
from domain.scenarios import history
from domain.scenarios.config import build_config, merge_config, validate_config
from domain.scenarios.templates import TEMPLATES
from models.cache import Cache, CacheUnavailable
from models.documents import Interaction, Item, Scenario, ScenarioConfigVersion


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a list, in the shape a Relay connection needs."""

    nodes: list[Any]
    cursors: list[str]
    has_next: bool
    total: Callable[[], Awaitable[int]] | None = None  # counted only when a client asks for it


SCENARIO_TTL_S = 2.0  # how long a scenario read for serving is reused; other processes' changes show after it
SCENARIOS_KEPT = 10_000
UPDATE_TRIES = 5  # re-reads of a scenario that another process changed between this update's read and write
SCENARIO_STALE_S = 600.0  # how long past the TTL a scenario is still used while it is re-read in the background


@dataclass(frozen=True, slots=True)
class ScenarioStats:
    items: int
    interactions: int


class ScenarioService:
    """Scenario configuration, always scoped by tenant."""

    def __init__(
        self, cache: Cache, *, ttl_s: float = SCENARIO_TTL_S, invalidations: Invalidations | None = None
    ) -> None:
        self._cache = cache
        self._invalidations = invalidations or Invalidations(None)
        self._invalidations.on("scenarios", self._forget_changed)
        # Read paths (recommendations, item listings) ask for a scenario on every request: keep MongoDB off them.
        # Past the TTL a scenario is still used while a background read refreshes it, so requests never wait on
        # MongoDB for a scenario they have used lately.
        self._recent: HotCache[Scenario] = HotCache(size=SCENARIOS_KEPT, ttl_s=ttl_s, stale_s=SCENARIO_STALE_S)
        self._reread = Revalidator(self._reread_scenarios, name="scenarios")
        self._changes = 0  # bumped by every local change, so a read that raced with one is not kept
        self._deleted: list[Callable[[str, str], Awaitable[None]]] = []

    def on_delete(self, handler: Callable[[str, str], Awaitable[None]]) -> None:
        """Await handler(tenant_id, scenario_id) after a scenario is deleted (what belongs to it goes with it)."""
        self._deleted.append(handler)

    async def create(
        self, *, tenant_id: str, name: str, template: str, config: Mapping | None, key_id: str | None = None
    ) -> Scenario:
        """Create a scenario from a template with `config` merged over it; its config is version 1."""
        name = _clean_name(name)
        if template not in TEMPLATES:
            raise BadInput(f"unknown template {template!r}", field="input.template")
        await self._check_name_free(name, tenant_id=tenant_id)
        if config is not None and not isinstance(config, Mapping):
            raise BadInput("config must be a JSON object", field="input.config")
        merged = build_config(template, config or {})
        now = utcnow()
        scenario = Scenario(
            id=new_id("sc"), tenant_id=tenant_id, name=name, template=template, config=merged,
            created_at=now, updated_at=now,
        )
        await scenario.insert()
        await history.record(scenario, previous=None, key_id=key_id, origin=history.CREATED)
        return scenario

    async def update(
        self, scenario_id: str, *, tenant_id: str, name: str | None = None, config: Mapping | None = None,
        key_id: str | None = None, origin: str = history.UPDATED, origin_ref: str | None = None,
        replace: bool = False,
    ) -> Scenario:
        """Rename and/or merge a config change over the current config (`replace`: set it whole). A config that
        differs from the current one becomes the next version, recorded in the history with who set it and how."""
        if config is not None and not isinstance(config, Mapping):
            raise BadInput("config must be a JSON object", field="input.config")
        for _ in range(UPDATE_TRIES):
            scenario = await self.get_or_raise(scenario_id, tenant_id=tenant_id, field="id")
            changes: dict[str, Any] = {"updated_at": utcnow()}
            if name is not None and _clean_name(name) != scenario.name:
                changes["name"] = _clean_name(name)
                await self._check_name_free(changes["name"], tenant_id=tenant_id)
            if config is not None:
                new = validate_config(config if replace else merge_config(scenario.config, config))
                if new != scenario.config:
                    changes["config"] = new
            update: dict[str, Any] = {"$set": changes}
            if "config" in changes:
                update["$inc"] = {"config_version": 1}
            # Conditional on the version read: a change made meanwhile elsewhere is merged over, not lost.
            result = await Scenario.get_pymongo_collection().update_one(
                {"_id": scenario_id, "tenant_id": tenant_id, "config_version": scenario.config_version}, update
            )
            if result.matched_count:
                break
        else:
            raise Unavailable("the scenario kept changing under this update; try again")
        self._forget(scenario_id, tenant_id=tenant_id)
        await self._invalidations.publish("scenarios", tenant_id, [scenario_id])
        updated = await self.get_or_raise(scenario_id, tenant_id=tenant_id, field="id")
        if "config" in changes:  # recorded as this update wrote it, even if another change has followed since
            ours = updated.model_copy(update={"config": changes["config"],
                                              "config_version": scenario.config_version + 1})
            await history.record(ours, previous=scenario.config, key_id=key_id, origin=origin, origin_ref=origin_ref)
        return updated

    async def roll_back(self, scenario_id: str, *, version: int, tenant_id: str, key_id: str | None) -> Scenario:
        """Make an earlier version's config the current one again, as a new version (the history only grows)."""
        scenario = await self.get_or_raise(scenario_id, tenant_id=tenant_id, field="id")
        if not isinstance(version, int) or not 1 <= version <= scenario.config_version:
            raise BadInput(f"version must be between 1 and {scenario.config_version}", field="version")
        stored = await history.get(tenant_id, scenario_id, version)
        if stored is None:
            raise NotFound(f"version {version} of scenario {scenario_id} was not recorded", field="version")
        try:
            validate_config(stored.config)
        except BadInput as exc:
            raise BadInput(f"version {version}'s config is not valid any more: {exc}", field="version") from exc
        return await self.update(scenario_id, tenant_id=tenant_id, config=stored.config, replace=True, key_id=key_id,
                                 origin=history.ROLLED_BACK, origin_ref=str(version))

    async def versions(self, scenario: Scenario, *, first: int | None) -> list[ScenarioConfigVersion]:
        """Return the scenario's newest `first` config versions, newest first."""
        limit = check_first(first, maximum=history.MAX_VERSIONS_PAGE)
        return await history.versions(scenario, first=limit) if limit else []

    async def delete(self, scenario_id: str, *, tenant_id: str) -> bool:
        """Delete a scenario, its interactions, and items that belonged to it alone."""
        result = await Scenario.get_pymongo_collection().delete_one({"_id": scenario_id, "tenant_id": tenant_id})
        self._forget(scenario_id, tenant_id=tenant_id)
        await self._invalidations.publish("scenarios", tenant_id, [scenario_id])
        if result.deleted_count == 0:
            raise NotFound(f"no scenario {scenario_id}", field="id")
        items = Item.get_pymongo_collection()
        await items.update_many({"tenant_id": tenant_id, "scenarios": scenario_id}, {"$pull": {"scenarios": scenario_id}})
        await items.delete_many({"tenant_id": tenant_id, "scenarios": {"$size": 0}})
        await Interaction.get_pymongo_collection().delete_many({"tenant_id": tenant_id, "scenario_id": scenario_id})
        await history.forget(tenant_id, scenario_id)
        for handler in self._deleted:
            await handler(tenant_id, scenario_id)
        try:
            await self._cache.drop_item_meta(None, tenant_id=tenant_id)
            await self._cache.items_changed(tenant_id=tenant_id)
        except CacheUnavailable:
            pass  # metadata is read through from MongoDB again when Redis is back; item views at their full check
        return True

    async def get(self, scenario_id: str, *, tenant_id: str) -> Scenario | None:
        """Return the tenant's scenario or None (another tenant's looks missing)."""
        return await Scenario.find_one({"_id": scenario_id, "tenant_id": tenant_id})

    async def get_or_raise(self, scenario_id: str, *, tenant_id: str, field: str = "scenarioId") -> Scenario:
        """Return the tenant's scenario or raise NotFound naming the argument."""
        scenario = await self.get(scenario_id, tenant_id=tenant_id)
        if scenario is None:
            raise NotFound(f"no scenario {scenario_id}", field=field)
        return scenario

    async def cached(self, scenario_id: str, *, tenant_id: str, field: str = "scenarioId") -> Scenario:
        """Return the tenant's scenario as read at most the TTL ago (this process's own changes show at once), or
        raise NotFound naming the argument. For read paths; the returned document must not be changed."""
        key = (tenant_id, scenario_id)
        scenario, stale = self._recent.lookup(key)
        if scenario is not None:
            if stale:
                self._reread.schedule([key])
            return scenario
        changes = self._changes
        scenario = await self.get_or_raise(scenario_id, tenant_id=tenant_id, field=field)
        if changes == self._changes:
            self._recent.put(key, scenario)
        return scenario

    async def _reread_scenarios(self, keys: list[tuple[str, str]]) -> None:
        for tenant_id, scenario_id in keys:
            changes = self._changes
            scenario = await self.get(scenario_id, tenant_id=tenant_id)
            if changes != self._changes:
                continue  # changed here meanwhile: the next read goes to MongoDB
            if scenario is None:
                self._recent.drop([(tenant_id, scenario_id)])  # deleted elsewhere: the next read says so
            else:
                self._recent.put((tenant_id, scenario_id), scenario)

    def _forget_changed(self, tenant_id: str, scenario_ids: list[str]) -> None:
        for scenario_id in scenario_ids:
            self._forget(scenario_id, tenant_id=tenant_id)

    def _forget(self, scenario_id: str, *, tenant_id: str) -> None:
        self._changes += 1
        self._recent.drop([(tenant_id, scenario_id)])

    async def get_many(self, ids: list[str], *, tenant_id: str) -> list[Scenario | None]:
        """Return scenarios in the order of ids, None for missing ones (one query)."""
        found = await Scenario.find({"_id": {"$in": list(set(ids))}, "tenant_id": tenant_id}).to_list()
        by_id = {s.id: s for s in found}
        return [by_id.get(i) for i in ids]

    async def list(self, *, tenant_id: str, first: int | None, after: str | None, max_first: int) -> Page:
        """Return a page of the tenant's scenarios, oldest first."""
        limit = check_first(first, maximum=max_first)
        query: dict[str, Any] = {"tenant_id": tenant_id}
        if (start := decode_cursor(after)) is not None:
            query["_id"] = {"$gt": start}
        docs = await Scenario.find(query).sort("_id").limit(limit + 1).to_list()
        nodes = docs[:limit]
        total = lambda: Scenario.get_pymongo_collection().count_documents({"tenant_id": tenant_id})  # noqa: E731
        return Page(nodes=nodes, cursors=[encode_cursor(s.id) for s in nodes], has_next=len(docs) > limit, total=total)

    async def stats(self, scenario_id: str, *, tenant_id: str) -> ScenarioStats:
        """Count the scenario's items and stored interactions."""
        scoped = {"tenant_id": tenant_id, "scenarios": scenario_id}
        items = await Item.get_pymongo_collection().count_documents(scoped)
        interactions = await Interaction.get_pymongo_collection().count_documents(
            {"tenant_id": tenant_id, "scenario_id": scenario_id}
        )
        return ScenarioStats(items=items, interactions=interactions)

    async def ids(self, *, tenant_id: str) -> list[str]:
        """Return every scenario id of the tenant."""
        docs = await Scenario.get_pymongo_collection().find({"tenant_id": tenant_id}, {"_id": 1}).to_list(None)
        return [d["_id"] for d in docs]

    async def _check_name_free(self, name: str, *, tenant_id: str) -> None:
        if await Scenario.find_one({"tenant_id": tenant_id, "name": name}):
            raise BadInput(f"a scenario named {name!r} already exists", field="input.name")


def _clean_name(name: str) -> str:
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise BadInput("name must be 1-200 characters", field="input.name")
    return name
