"""The serving copy of every scenario's model: one Engine per (tenant, scenario), swapped atomically.

An Engine is built from the scenario's champion model version (loaded from its artifact, off the event loop), the
scenario config, and a live view of the scenario's items. Readers take the Engine reference from a dict, so a swap
(load the new model fully, then replace the reference) never shows them half a model.

What keeps each part current:
- model: a swap notice on Redis pub/sub (`recograph:models`) from whichever process trained or promoted it, and a
  re-check of the champions in MongoDB every `refresh_s` in case a notice was missed (another pod converges either
  way). A version whose artifact does not load leaves the model that serves in place. A serving process
  (`preload`) that does not hold the scenario yet loads it in the background when it hears of its new champion, as
  it loads the champions at start-up: otherwise its first request for it would wait for the model and the item view
  (seconds on the embedded server, while every request for the scenario queues behind it);
- config: the scenario's `config_version`, re-read at most every `config_ttl_s` on use; a change rebuilds the
  Engine over the same model (cheap);
- items: every item write bumps the tenant's items version in the cache (`Cache.items_changed`). Every
  `catalogue_refresh_s`, for scenarios used since their last check, one read of that version tells whether the
  tenant's items changed; only then does a fingerprint of the scenario's items (count and newest `updated_at`, one
  aggregate over them: 0.7 s of server time for 9.7k items on the embedded server) decide, and a change reloads
  the item view. The fingerprint is also taken every CATALOGUE_VERIFY_S whatever the version says (a bump lost
  while the cache was down), and every time when there is no cache.
  A swap keeps the item view it has: the model is aligned to it by item id.
- experiment variants: an Engine per arm, over the scenario's model and items, or over a pinned version's model
  (domain.recommend.pinned);
- live popularity: each Engine holds a reader of its scenario's live window (domain.realtime.popularity), shared
  by the registry's engines, which keeps a snapshot per scenario refreshed in the background.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog
from redis import asyncio as aioredis

from domain.errors import BadInput, NotFound
from domain.learning.model import ScenarioModel
from domain.learning.versions import CHAMPION, MODEL_KIND, champion
from domain.realtime.popularity import LivePopularity
from domain.recommend.base import CatalogueView
from domain.recommend.engine import Engine
from domain.recommend.pinned import Pinned, PinnedModels
from domain.scenarios.config import merge_config
from models.cache import Cache, CacheUnavailable
from models.channel import Channel
from models.documents import Item, ModelVersion, Scenario
from models.vectors import VectorStore

log = structlog.get_logger()

CHANNEL = "recograph:models"
CATALOGUE_VERIFY_S = 600.0  # the item fingerprint is taken at least this often, whatever the items version says
CATALOGUE_FIELDS = {"_id": 0, "item_id": 1, "title": 1, "categories": 1, "tags": 1, "attributes": 1,
                    "published_at": 1, "status": 1}
Key = tuple[str, str]


class SwapChannel:
    """Model swap notices on Redis pub/sub: the trainer publishes, every API process listens."""

    def __init__(self, redis: aioredis.Redis) -> None:
        self._channel = Channel(redis, CHANNEL)

    @property
    def client(self) -> aioredis.Redis:
        """Return the Redis client the notices travel over."""
        return self._channel.client

    async def publish(self, tenant_id: str, scenario_id: str, version: int, revision: int = 0, *,
                      kind: str = MODEL_KIND) -> None:
        """Announce that a version became its kind's champion (or that its artifact was rewritten: a newer
        revision)."""
        await self._channel.publish(
            {"tenant_id": tenant_id, "scenario_id": scenario_id, "version": version, "revision": revision,
             "kind": kind}
        )

    async def listen(self, handle: Callable[[str, str, int, int], Awaitable[Any]], *, retry_s: float = 2.0) -> None:
        """Call handle(tenant_id, scenario_id, version, revision) for each notice until cancelled; resubscribe after
        errors."""

        async def heard(data: dict[str, Any]) -> None:
            # Only the scenario bundle serves through ModelRegistry; other kinds' notices are for their own readers.
            if (notice := _notice(data)) is not None and data.get("kind", MODEL_KIND) == MODEL_KIND:
                await handle(*notice)

        await self._channel.listen(heard, retry_s=retry_s)


def _notice(data: dict[str, Any]) -> tuple[str, str, int, int] | None:
    try:
        return str(data["tenant_id"]), str(data["scenario_id"]), int(data["version"]), int(data.get("revision", 0))
    except (TypeError, ValueError, KeyError):
        log.warning("models.bad_notice", raw=str(data)[:200])
        return None


class TenantVectors:
    """The Engine's VectorSearch over one tenant's points in the vector store."""

    def __init__(self, store: VectorStore, tenant_id: str) -> None:
        self._store = store
        self._tenant_id = tenant_id

    async def search(
        self, space: str, vector: Sequence[float], *, limit: int, exclude_ids: Collection[str] = ()
    ) -> list[tuple[str, float]]:
        """Return the tenant's nearest item ids with their scores, best first."""
        hits = await self._store.search(
            space, vector, tenant_id=self._tenant_id, limit=limit, exclude_ids=exclude_ids, with_payload=False
        )
        return [(hit.id, hit.score) for hit in hits]


@dataclass(frozen=True)
class Served:
    """What serves one scenario now; replaced whole, never changed in place."""

    engine: Engine
    model: ScenarioModel | None
    version: int | None
    spaces: Mapping[str, str]  # the version's vector spaces by kind (`content`, `two_tower`); empty: in memory
    config_version: int
    catalogue: CatalogueView
    fingerprint: tuple  # (items version, count, newest update) when the item view was read
    config_checked: float
    catalogue_checked: float
    version_checked: float
    catalogue_verified: float = 0.0  # when the fingerprint was last taken
    revision: int = 0  # the artifact revision loaded (rewritten in place after an erasure)

    def serves(self, version: int, revision: int) -> bool:
        """Return whether this is (at least) that revision of that version."""
        return self.version == version and self.revision >= revision


class ModelRegistry:
    """One Engine per (tenant, scenario), loaded lazily, bounded in number (least recently used go first)."""

    def __init__(
        self, *, vectors: VectorStore | None, models_dir: Path | None, channel: SwapChannel | None = None,
        config_ttl_s: float = 1.0, refresh_s: float = 30.0, catalogue_refresh_s: float = 30.0, max_loaded: int = 200,
        ann_min_items: int = 50_000, live: LivePopularity | None = None, on_change: Callable[[], None] | None = None,
        versions: Cache | None = None, preload: bool = False,
    ) -> None:
        self._vectors = vectors
        self._versions = versions  # the tenants' items versions (without: every check takes the fingerprint)
        self._on_change = on_change  # told after a model or item view is installed (the process settles its heap)
        # Live popularity comes from the Redis the swap notices use unless a reader is given.
        self._live = live if live is not None or channel is None else LivePopularity(channel.client)
        self._ann_min_items = ann_min_items
        self._models_dir = models_dir
        self._channel = channel
        self._config_ttl = config_ttl_s
        self._refresh_s = refresh_s
        self._catalogue_refresh_s = catalogue_refresh_s
        self._max_loaded = max_loaded
        self._served: OrderedDict[Key, Served] = OrderedDict()
        self._locks: dict[Key, asyncio.Lock] = {}
        self._used: set[Key] = set()  # served since their items were last checked
        self._pending: dict[Key, int] = {}  # swap notices being applied: requests wait for the new version
        # Experiment variants' engines: (tenant, scenario, arm key) -> (the base engine and pinned model it was built
        # over, engine).
        self._variants: OrderedDict[tuple[str, str, str], tuple[Engine, Pinned | None, Engine]] = OrderedDict()
        self._pinned = PinnedModels(lambda doc: self._read_model(doc), ttl_s=refresh_s)
        self._tasks: list[asyncio.Task] = []
        self._preload = preload  # load a new champion of a scenario not held here when told of it (serving processes)
        self._preloading: dict[Key, asyncio.Task] = {}

    async def get(self, tenant_id: str, scenario_id: str, *, config_version: int | None = None) -> Engine:
        """Return the scenario's Engine (untrained until a version is champion); NotFound for a missing scenario.

        A caller that has just read the scenario passes its `config_version`: the Engine is then rebuilt only when
        that is newer than the one served, with no read of its own. Without it the config is re-read at most every
        `config_ttl_s`.
        """
        key = (tenant_id, scenario_id)
        if key in self._pending:
            # A swap notice arrived: the job that trained it may already say SUCCEEDED, so answer from the new
            # model, waiting for its load (the swap holds the scenario's lock until the new engine serves).
            async with self._lock(key):
                pass
        served = self._served.get(key)
        if served is None:
            served = await self._current(key)
        elif config_version is not None:
            if config_version > served.config_version:
                served = await self._current(key, force=True)
        elif time.monotonic() - served.config_checked > self._config_ttl:
            served = await self._current(key)
        self._served.move_to_end(key)
        self._used.add(key)
        return served.engine

    async def variant(
        self, tenant_id: str, scenario_id: str, arm_key: str, overrides: Mapping[str, Any], *,
        config_version: int | None = None, model: Mapping[str, Any] | None = None,
    ) -> Engine:
        """Return the Engine of an experiment variant: the scenario's, with `overrides` merged over its config,
        over the same items (rebuilt whenever the scenario's own Engine is) and the same model, or the model of the
        version `model` pins (`{"version": n}` or `{"alias": name}`; the champion's when it cannot be loaded).
        A variant with neither is served by the scenario's Engine itself."""
        base = await self.get(tenant_id, scenario_id, config_version=config_version)
        pinned = await self._pinned_model(tenant_id, scenario_id, model) if model else None
        if not overrides and pinned is None:
            return base
        key = (tenant_id, scenario_id, arm_key)
        held = self._variants.get(key)
        if held is not None and held[0] is base and held[1] is pinned:
            self._variants.move_to_end(key)
            return held[2]
        served = self._served.get((tenant_id, scenario_id))
        if served is None:
            return base
        trained, spaces = (pinned.model, pinned.spaces) if pinned is not None else (served.model, served.spaces)
        try:
            engine = self._engine((tenant_id, scenario_id), merge_config(base.config, overrides), trained,
                                  served.catalogue, spaces)
        except BadInput as exc:  # the scenario changed since the experiment was validated: serve it as is
            log.warning("experiments.variant_invalid", scenario_id=scenario_id, arm=arm_key, error=str(exc))
            engine = base
        self._variants[key] = (base, pinned, engine)
        while len(self._variants) > 4 * self._max_loaded:
            self._variants.popitem(last=False)
        return engine

    async def _pinned_model(self, tenant_id: str, scenario_id: str, pin: Mapping[str, Any]) -> Pinned | None:
        """Return the pinned version's model, or None to serve the scenario's own (the pin names the version that
        serves it already, or names none that loads)."""
        doc = await self._pinned.resolve(tenant_id, scenario_id, pin)
        served = self._served.get((tenant_id, scenario_id))
        if doc is None or (served is not None and served.serves(doc.version, doc.revision)):
            return None
        return await self._pinned.model(doc)

    def version(self, tenant_id: str, scenario_id: str) -> int | None:
        """Return the model version served for the scenario now (None: untrained or not loaded)."""
        served = self._served.get((tenant_id, scenario_id))
        return served.version if served else None

    def loaded(self) -> list[Key]:
        """Return the (tenant, scenario) pairs held in memory."""
        return list(self._served)

    def catalogue(self, tenant_id: str, scenario_id: str) -> CatalogueView | None:
        """Return the item view the scenario serves from here (None: not held in this process)."""
        served = self._served.get((tenant_id, scenario_id))
        return served.catalogue if served else None

    def trained(self) -> list[tuple[str, str, int, datetime]]:
        """Return (tenant, scenario, version, trained at) of each trained model serving here."""
        return [(tenant, scenario, served.model.version, served.model.trained_at)
                for (tenant, scenario), served in list(self._served.items()) if served.model is not None]

    async def swap(self, tenant_id: str, scenario_id: str, version: int, revision: int = 0) -> bool:
        """Serve `version` (at `revision`) if the scenario is loaded here and the version is its champion; return
        whether it swapped. A version that does not load leaves the one serving in place. A scenario not loaded here
        starts loading in the background when this registry preloads."""
        key = (tenant_id, scenario_id)
        self._pinned.forget(tenant_id, scenario_id)  # an alias may have moved, an artifact been rewritten
        if key not in self._served:
            self._start_preload(key)
            return False
        if self._served[key].serves(version, revision):
            return False
        async with self._lock(key):
            doc = await ModelVersion.find_one(
                {"tenant_id": tenant_id, "scenario_id": scenario_id, "kind": MODEL_KIND, "version": version}
            )
            if doc is None or CHAMPION not in doc.aliases or key not in self._served:
                return False
            return await self._reload(key, doc)

    async def load_active(self) -> int:
        """Load the most recently promoted champions, up to the bound; return how many are served."""
        # Process-wide warm-up at startup: it reads every tenant's champions, newest first.
        cursor = ModelVersion.get_pymongo_collection().find(
            {"aliases": CHAMPION, "kind": MODEL_KIND}, {"tenant_id": 1, "scenario_id": 1}
        ).sort([("activated_at", -1)]).limit(self._max_loaded)
        for doc in await cursor.to_list(None):
            try:
                await self.get(doc["tenant_id"], doc["scenario_id"])
            except NotFound:
                continue  # the scenario was deleted; its versions are left for cleanup
        log.info("models.loaded", scenarios=len(self._served))
        return len(self._served)

    def _start_preload(self, key: Key) -> None:
        """Load a scenario in the background, once at a time, while fewer than `max_loaded` are held (a new
        champion must not push out a scenario this process serves)."""
        if not self._preload or key in self._preloading or len(self._served) >= self._max_loaded:
            return
        task = asyncio.create_task(self._preload_one(key), name="recograph.models.preload")
        self._preloading[key] = task
        task.add_done_callback(lambda _: self._preloading.pop(key, None))

    async def _preload_one(self, key: Key) -> None:
        try:
            await self.get(*key)  # under the scenario's lock: a request arriving meanwhile waits for this load
        except NotFound:
            return  # deleted since its training: nothing to serve
        except Exception:  # noqa: BLE001 - the first request loads it instead
            log.exception("models.preload_failed", tenant_id=key[0], scenario_id=key[1])
        else:
            log.info("models.preloaded", tenant_id=key[0], scenario_id=key[1], version=self.version(*key))

    def start(self) -> None:
        """Start loading champions, listening for swap notices and re-checking what is served."""
        if self._tasks:
            return
        self._tasks.append(asyncio.create_task(self._guard(self.load_active(), "load_active")))
        self._tasks.append(asyncio.create_task(self._maintain()))
        if self._channel is not None:
            self._tasks.append(asyncio.create_task(self._channel.listen(self._on_notice)))

    async def stop(self) -> None:
        """Stop the background tasks and forget the models."""
        tasks = [*self._tasks, *self._preloading.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._preloading.clear()
        self._served.clear()
        self._pinned.clear()
        if self._live is not None:
            await self._live.close()

    async def refresh(self) -> None:
        """Re-check each loaded scenario whose checks are due: champion and items."""
        now = time.monotonic()
        for key, served in list(self._served.items()):
            try:
                if now - served.version_checked >= self._refresh_s:
                    await self._check_version(key)
                if key in self._used and now - served.catalogue_checked >= self._catalogue_refresh_s:
                    self._used.discard(key)
                    await self._check_catalogue(key)
            except Exception:  # noqa: BLE001 - one scenario's failure must not stop the others' refresh
                log.exception("models.refresh_failed", tenant_id=key[0], scenario_id=key[1])

    async def _maintain(self) -> None:
        period = max(min(self._refresh_s, self._catalogue_refresh_s), 0.05)
        while True:
            await asyncio.sleep(period)
            await self.refresh()

    async def _guard(self, work: Awaitable[Any], name: str) -> None:
        try:
            await work
        except Exception:  # noqa: BLE001 - a warm-up failure leaves lazy loading to do the work
            log.exception("models.task_failed", task=name)

    async def _on_notice(self, tenant_id: str, scenario_id: str, version: int, revision: int = 0) -> None:
        key = (tenant_id, scenario_id)
        served = self._served.get(key)
        if served is not None and not served.serves(version, revision):
            self._pending[key] = version  # set before the swap takes the lock: no await in between
        try:
            await self.swap(tenant_id, scenario_id, version, revision)
        except Exception:  # noqa: BLE001 - keep listening; the periodic re-check retries
            log.exception("models.swap_failed", tenant_id=tenant_id, scenario_id=scenario_id, version=version)
        finally:
            if self._pending.get(key) == version:
                del self._pending[key]

    def _lock(self, key: Key) -> asyncio.Lock:
        return self._locks.setdefault(key, asyncio.Lock())

    async def _current(self, key: Key, *, force: bool = False) -> Served:
        """Load the scenario, or rebuild its Engine when the config changed; drop it when it is gone. Unless forced,
        a check made within the config TTL (by a request this one waited for) stands."""
        async with self._lock(key):
            served = self._served.get(key)
            if served is not None and not force and time.monotonic() - served.config_checked <= self._config_ttl:
                return served  # another request checked it while this one waited
            scenario = await Scenario.find_one({"_id": key[1], "tenant_id": key[0]})
            if scenario is None:
                self._forget(key)
                raise NotFound(f"no scenario {key[1]}", field="scenarioId")
            served = self._served.get(key)
            if served is None:
                return await self._load(key, scenario)
            if served.config_version != scenario.config_version:
                engine = self._engine(key, scenario.config, served.model, served.catalogue, served.spaces)
                served = replace(served, engine=engine, config_version=scenario.config_version)
            served = replace(served, config_checked=time.monotonic())
            self._served[key] = served
            return served

    async def _load(self, key: Key, scenario: Scenario) -> Served:
        doc = await champion(*key)
        model = await self._read_model(doc)
        catalogue, fingerprint = await self._catalogue(key)
        spaces = dict(doc.spaces) if doc is not None and model is not None else {}
        now = time.monotonic()
        served = Served(
            engine=self._engine(key, scenario.config, model, catalogue, spaces), model=model,
            version=doc.version if doc is not None and model is not None else None, spaces=spaces,
            config_version=scenario.config_version, catalogue=catalogue, fingerprint=fingerprint,
            config_checked=now, catalogue_checked=now, version_checked=now, catalogue_verified=now,
            revision=doc.revision if doc is not None and model is not None else 0,
        )
        self._keep(key, served)
        return served

    async def _reload(self, key: Key, doc: ModelVersion) -> bool:
        """Load doc's model fully, then replace what serves the scenario (the item view stays)."""
        scenario = await Scenario.find_one({"_id": key[1], "tenant_id": key[0]})
        model = await self._read_model(doc)
        served = self._served.get(key)
        if scenario is None or model is None or served is None:
            return False
        spaces = dict(doc.spaces)
        now = time.monotonic()
        self._keep(key, replace(
            served, engine=self._engine(key, scenario.config, model, served.catalogue, spaces), model=model,
            version=doc.version, spaces=spaces, config_version=scenario.config_version, config_checked=now,
            version_checked=now, revision=doc.revision,
        ))
        log.info("models.swapped", tenant_id=key[0], scenario_id=key[1], version=doc.version)
        return True

    async def _read_model(self, doc: ModelVersion | None) -> ScenarioModel | None:
        if doc is None or doc.artifact is None or self._models_dir is None:
            return None
        path = self._models_dir / doc.artifact
        try:
            return await asyncio.to_thread(ScenarioModel.load, path)
        except Exception as exc:  # noqa: BLE001 - a broken artifact, whatever breaks in it, must not fail requests
            # Keep what serves (untrained at first load) rather than fail; the periodic re-check tries again.
            log.error("models.load_failed", path=str(path), error=str(exc), scenario_id=doc.scenario_id)
            return None

    def _engine(
        self, key: Key, config: Mapping[str, Any], model: ScenarioModel | None, catalogue: CatalogueView,
        spaces: Mapping[str, str],
    ) -> Engine:
        # Below ann_min_items an exact in-memory scan of the model's embeddings (a 10k x 32 product, ~0.1 ms) beats
        # an ANN round trip that converts hundreds of hits per query; the vector store serves larger catalogues.
        use_store = self._vectors is not None and bool(spaces) and len(catalogue) >= self._ann_min_items
        vectors = TenantVectors(self._vectors, key[0]) if use_store else None
        live = self._live.scenario(*key) if self._live is not None else None
        return Engine(config, model, catalogue=catalogue, vectors=vectors, content_space=spaces.get("content"),
                      two_tower_space=spaces.get("two_tower"), live=live)

    async def _check_version(self, key: Key) -> None:
        doc = await champion(*key)
        served = self._served.get(key)
        if served is None:
            return
        if doc is not None and not served.serves(doc.version, doc.revision):
            async with self._lock(key):
                await self._reload(key, doc)
        elif key in self._served:
            self._served[key] = replace(self._served[key], version_checked=time.monotonic())

    async def _items_version(self, tenant_id: str) -> int | None:
        if self._versions is None:
            return None
        try:
            return await self._versions.items_version(tenant_id=tenant_id)
        except CacheUnavailable:
            return None

    async def _catalogue(self, key: Key) -> tuple[CatalogueView, tuple]:
        """Load the scenario's items as a view, with the fingerprint they were read at (the version first, so a
        write during the read shows as a change at the next check)."""
        version = await self._items_version(key[0])
        catalogue, (count, newest) = await _catalogue(*key)
        return catalogue, (version, count, newest)

    async def _check_catalogue(self, key: Key) -> None:
        served = self._served.get(key)
        if served is None:
            return
        version = await self._items_version(key[0])
        now = time.monotonic()
        if version is not None and version == served.fingerprint[0] and \
                now - served.catalogue_verified < CATALOGUE_VERIFY_S:
            self._served[key] = replace(served, catalogue_checked=now)
            return
        count, newest = await _fingerprint(*key)
        served = self._served.get(key)
        if served is None:
            return
        if (count, newest) == served.fingerprint[1:]:
            self._served[key] = replace(served, fingerprint=(version, count, newest), catalogue_checked=now,
                                        catalogue_verified=now)
            return
        async with self._lock(key):
            await self._refresh_catalogue(key)

    async def _refresh_catalogue(self, key: Key) -> None:
        scenario = await Scenario.find_one({"_id": key[1], "tenant_id": key[0]})
        served = self._served.get(key)
        if scenario is None or served is None:
            self._forget(key)
            return
        catalogue, fingerprint = await self._catalogue(key)
        engine = self._engine(key, scenario.config, served.model, catalogue, served.spaces)
        now = time.monotonic()
        self._served[key] = replace(served, engine=engine, catalogue=catalogue, fingerprint=fingerprint,
                                    config_version=scenario.config_version, catalogue_checked=now,
                                    catalogue_verified=now)
        self._changed()
        log.info("models.catalogue_refreshed", tenant_id=key[0], scenario_id=key[1], items=len(catalogue))

    def _keep(self, key: Key, served: Served) -> None:
        self._served[key] = served
        self._served.move_to_end(key)
        while len(self._served) > self._max_loaded:
            old, _ = self._served.popitem(last=False)
            self._locks.pop(old, None)
            self._used.discard(old)
        self._changed()

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    def _forget(self, key: Key) -> None:
        self._served.pop(key, None)
        self._used.discard(key)


async def _catalogue(tenant_id: str, scenario_id: str) -> tuple[CatalogueView, tuple]:
    """Load the scenario's items as a view, with their fingerprint (as `_fingerprint` computes it, from the same
    read rather than a second pass over the items)."""
    docs = await Item.get_pymongo_collection().find(
        {"tenant_id": tenant_id, "scenarios": scenario_id}, {**CATALOGUE_FIELDS, "updated_at": 1}, batch_size=20_000
    ).sort([("item_id", 1)]).to_list(None)
    newest = max((d["updated_at"] for d in docs if d.get("updated_at") is not None), default=None)
    return CatalogueView.from_items(docs), ((len(docs), newest) if docs else (0, None))


async def _fingerprint(tenant_id: str, scenario_id: str) -> tuple:
    """Return (count, newest update) of the scenario's items: any upsert or removal changes it."""
    cursor = await Item.get_pymongo_collection().aggregate([
        {"$match": {"tenant_id": tenant_id, "scenarios": scenario_id}},
        {"$group": {"_id": None, "n": {"$sum": 1}, "last": {"$max": "$updated_at"}}},
    ])
    rows = await cursor.to_list(None)
    return (rows[0]["n"], rows[0]["last"]) if rows else (0, None)
