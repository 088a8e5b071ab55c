"""Two-tower spaces on the embedded MongoDB and the in-memory vector store: a training writes its version's space,
item writes queue the item-vector job, the job gives new items the item tower's vectors (trained items their
trained ones, removed items none) in every space that can serve, and spaces no serving version names are dropped."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest

from domain.catalogue import CatalogueService, ItemData
from domain.ids import new_id, utcnow
from domain.learning import versions
from domain.learning.item_tower import ItemTower
from domain.learning.model import ScenarioModel
from domain.learning.tower_spaces import SYNC_FUNCTION, TowerSpaces, tower_space, uses_towers
from domain.learning.towers import TowerModel
from domain.recommend.base import CatalogueView
from models.documents import ModelVersion
from models.vectors import InMemoryVectorStore, SpaceNotFoundError

DIM = 8
DOCS = [{"item_id": f"{c}{n}", "title": f"item {c}{n}", "categories": [c], "tags": [f"t{c}"],
         "attributes": {"size": n}, "status": "ACTIVE"} for c in "ab" for n in range(6)]


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


def towers(seed: int = 0) -> TowerModel:
    """Return towers with random weights: what is checked is where vectors go, not what they learnt."""
    rng = np.random.default_rng(seed)

    def f32(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape).astype(np.float32)

    items = ItemTower(categories=("a", "b"), tags=("ta", "tb"), numeric_keys=("size",), numeric_mean=np.array([2.5]),
                      numeric_scale=np.array([1.7]), category_embedding=f32(3, DIM), tag_embedding=f32(3, DIM),
                      numeric_w=f32(1, DIM), numeric_b=f32(DIM), content_w=np.zeros((0, DIM), np.float32),
                      item_in_w=f32(DIM, DIM), item_in_b=f32(DIM), item_out_w=f32(DIM, DIM), item_out_b=f32(DIM))
    return TowerModel(item_vectors=unit(f32(len(DOCS), DIM)), item_preferences=f32(len(DOCS), DIM),
                      positions=f32(5), user_in_w=f32(2 * DIM, DIM), user_in_b=f32(DIM), user_out_w=f32(DIM, DIM),
                      user_out_b=f32(DIM), temperature=0.05, items=items)


def saved(models_dir: Path, artifact: str, tower: TowerModel) -> None:
    now = datetime.now(UTC)
    ScenarioModel(scenario_id="s", version=1, trained_at=now, newest_event=now,
                  catalogue=CatalogueView.from_items(DOCS), user_ids=[], history_indptr=np.zeros(1, np.int64),
                  history_items=np.zeros(0, np.int32), counts=np.zeros(len(DOCS), np.float32),
                  popularity=np.zeros(len(DOCS), np.float32), two_tower=tower).save(models_dir / artifact)


class Queue:
    def __init__(self) -> None:
        self.queued: list[tuple[str, list]] = []

    async def enqueue(self, function: str, job_id: str, args: list) -> None:
        self.queued.append((function, args))


@pytest.fixture
async def scenario(served):  # `served` initialises Beanie on the embedded MongoDB
    config = {"recall": [{"source": "two_tower", "weight": 1.0}], "models": {"tune": False}}
    return await served.runtime.services.scenarios.create(tenant_id=new_id("tn"), name=new_id("towers"),
                                                          template="CUSTOM", config=config)


async def version(scenario, number: int, *, status: str = versions.READY, aliases: tuple[str, ...] = (),
                  space: str | None = None, **fields) -> ModelVersion:
    doc = ModelVersion(id=new_id("mv"), tenant_id=scenario.tenant_id, scenario_id=scenario.id, kind="scenario",
                       version=number, status=status, aliases=list(aliases),
                       artifact=f"{scenario.tenant_id}/{scenario.id}/v{number}", created_at=utcnow(),
                       applied_at=utcnow() if status != versions.TRAINING else None,
                       spaces={"two_tower": space} if space else {}, **fields)
    await doc.insert()
    return doc


async def test_training_writes_every_items_vector_into_the_versions_own_space(scenario, tmp_path):
    store = InMemoryVectorStore()
    spaces = TowerSpaces(store, None, models_dir=tmp_path)  # type: ignore[arg-type]
    doc = await version(scenario, 3, status=versions.TRAINING)
    model = towers()
    written = await spaces.write(doc, ([d["item_id"] for d in DOCS], model.item_vectors), DOCS)
    space = tower_space(scenario.id, 3)
    assert written == {"two_tower": space} and space == f"two_tower_{scenario.id}_v3"
    assert await store.count(space, tenant_id=scenario.tenant_id) == len(DOCS)
    stored = await store.get_vectors(space, ["b2"], tenant_id=scenario.tenant_id)
    assert np.allclose(stored["b2"], model.item_vectors[8], atol=1e-6)
    assert (await ModelVersion.get(doc.id)).spaces == written  # recorded before the points: a failure leaves a trace
    assert await spaces.write(doc, None, DOCS) == {}  # a training without two towers writes nothing


async def test_the_item_job_gives_written_items_their_vectors_in_every_space_that_can_serve(served, scenario,
                                                                                              tmp_path):
    store, tenant = InMemoryVectorStore(), scenario.tenant_id
    champion, challenger = towers(1), towers(2)
    catalogue = CatalogueService(served.runtime.cache, served.runtime.services.scenarios)
    await catalogue.upsert([ItemData(id=d["item_id"], title=d["title"], categories=d["categories"], tags=d["tags"],
                                     attributes=d["attributes"]) for d in DOCS], tenant_id=tenant, scenario_id=scenario.id)
    spaces = TowerSpaces(store, served.runtime.services.scenarios, models_dir=tmp_path)
    docs = [await version(scenario, 1, aliases=("champion",)), await version(scenario, 2, aliases=("challenger",)),
            await version(scenario, 0, status=versions.RETIRED)]
    for doc, model in zip(docs, (champion, challenger, towers(3)), strict=True):
        saved(tmp_path, doc.artifact, model)
        written = await spaces.write(doc, ([d["item_id"] for d in DOCS], model.item_vectors), DOCS)
        doc.spaces = written
    await store.delete(docs[0].spaces["two_tower"], ["a1"], tenant_id=tenant)  # lost: the job puts it back
    fresh = ItemData(id="fresh", title="new", categories=["a", "unseen"], tags=["ta"], attributes={"size": 4})
    await catalogue.upsert([fresh], tenant_id=tenant, scenario_id=scenario.id)
    await catalogue.delete(["b1"], tenant_id=tenant, scenario_id=scenario.id)

    result = await spaces.sync(["fresh", "a1", "b1"], tenant_id=tenant, scenario_id=scenario.id)

    assert result == {"spaces": 2, "items": 3}
    document = {"categories": ["a", "unseen"], "tags": ["ta"], "attributes": {"size": 4}, "title": "new"}
    for doc, model in zip(docs[:2], (champion, challenger), strict=True):
        found = await store.get_vectors(doc.spaces["two_tower"], ["fresh", "a1", "b1"], tenant_id=tenant)
        assert set(found) == {"fresh", "a1"}  # b1 left the scenario, and its space
        assert np.allclose(found["fresh"], model.items.vectors([document])[0], atol=1e-6)  # the version's own tower
        assert np.allclose(found["a1"], model.item_vectors[1], atol=1e-6)  # trained: its trained vector
    retired = await store.get_vectors(docs[2].spaces["two_tower"], ["fresh", "b1"], tenant_id=tenant)
    assert set(retired) == {"b1"}  # a version that cannot serve is left as it was (its space goes at the prune)


async def test_a_prune_drops_the_spaces_no_version_able_to_serve_names(scenario):
    store, tenant = InMemoryVectorStore(), scenario.tenant_id
    spaces = TowerSpaces(store, None, models_dir=None)  # type: ignore[arg-type]
    rollback = await version(scenario, 2, status=versions.RETIRED, space="t2")
    made = [await version(scenario, 1, status=versions.RETIRED, space="t1"), rollback,
            await version(scenario, 3, aliases=("champion",), space="t3", previous=rollback.id),
            await version(scenario, 4, aliases=("challenger",), space="t4"),
            await version(scenario, 5, status=versions.FAILED, space="t5"),  # an attempt that died writing
            await version(scenario, 6, status=versions.TRAINING, space="t6"),  # being written now
            await version(scenario, 7, status=versions.RETIRED, space="t3")]  # a refit's base: shares its space
    for doc in made:
        await store.ensure_space(doc.spaces["two_tower"], dim=DIM)

    assert await spaces.prune(tenant, scenario.id) == 2

    for name in ("t1", "t5"):
        with pytest.raises(SpaceNotFoundError):
            await store.count(name, tenant_id=tenant)
    for name in ("t2", "t3", "t4", "t6"):  # rollback target, champion (and the refit base sharing it), challenger,
        assert await store.count(name, tenant_id=tenant) == 0  # the version being built
    for doc in made:
        assert ("two_tower" in (await ModelVersion.get(doc.id)).spaces) is (doc.spaces["two_tower"] not in ("t1", "t5"))
    assert await spaces.prune(tenant, scenario.id) == 0
    await spaces.drop_scenario(tenant, scenario.id)  # the scenario is deleted: every space goes
    for name in ("t2", "t3", "t4", "t6"):
        assert await store.drop_space(name) is False


async def test_item_writes_queue_the_job_for_scenarios_that_serve_two_towers_only(served, scenario):
    queue, tenant = Queue(), scenario.tenant_id
    scenarios = served.runtime.services.scenarios
    spaces = TowerSpaces(InMemoryVectorStore(), scenarios, models_dir=None, queue=queue)
    other = await scenarios.create(tenant_id=tenant, name=new_id("plain"), template="VLOG", config=None)
    catalogue = CatalogueService(served.runtime.cache, scenarios)
    catalogue.on_written(spaces.request_sync)
    await catalogue.upsert([ItemData(id="x1"), ItemData(id="x2")], tenant_id=tenant, scenario_id=scenario.id)
    await catalogue.upsert([ItemData(id="x3")], tenant_id=tenant, scenario_id=other.id)
    await catalogue.delete(["x2"], tenant_id=tenant, scenario_id=scenario.id)
    assert queue.queued == [(SYNC_FUNCTION, [tenant, scenario.id, ["x1", "x2"]]),
                            (SYNC_FUNCTION, [tenant, scenario.id, ["x2"]])]
    assert uses_towers({"recall": [], "fallback": {"sources": ["two_tower"]}}) and not uses_towers(other.config)
