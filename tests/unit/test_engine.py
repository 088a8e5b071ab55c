"""The engine end to end on a small model: unknown users, exclusions, a live catalogue, failing and slow stores,
fallback and relaxed rules, debug output, item-to-item, and the fusion ranker."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from domain.learning.model import ScenarioModel
from domain.learning.train import train_scenario_model
from domain.recommend.base import Candidates, CatalogueView, RecRequest, StageContext
from domain.recommend.engine import Engine
from domain.recommend.rank import Fusion
from domain.scenarios.config import build_config
from tests.unit.test_learning import T0, items, synthetic
from tests.unit.test_recall import ExactStore

PERSONAL = [
    {"source": "item_cf", "weight": 2.0, "limit": 50, "params": {}},
    {"source": "vector", "weight": 1.0, "limit": 50, "params": {}},
    {"source": "popular", "weight": 0.5, "limit": 50, "params": {}},
]


def scenario(recall: list[dict] = PERSONAL, **sections: object) -> dict:
    return build_config("CUSTOM", {"recall": recall, "fallback": {"sources": ["popular"], "minItems": 5},
                                   **sections})


# A generous time budget for tests about a store's failure, not the clock: on a loaded machine the in-memory sources
# can outlast the default 50 ms before the store's error is even read.
PATIENT = scenario(limits={"recallTimeoutMs": 5000, "maxCandidates": 1000})


@pytest.fixture(scope="module")
def model() -> ScenarioModel:
    extra = [(f"fan{n}", "a0", "WATCH", 100.0, T0 + n) for n in range(5)]
    return train_scenario_model(synthetic(extra), scenario(), scenario_id="s", version=1)


def ask(model: ScenarioModel, user: str = "stranger", *, history: Sequence[str] = (), limit: int = 5,
        exclude: Collection[str] | None = None, **extra: object) -> RecRequest:
    return RecRequest(user_id=user, limit=limit, history=tuple(history),
                      exclude=frozenset(history if exclude is None else exclude), now=model.newest_event, **extra)  # type: ignore[arg-type]


def ids(result) -> list[str]:  # noqa: ANN001
    return [r.item_id for r in result.items]


class FailingStore:
    async def search(self, space: str, vector: Sequence[float], *, limit: int,
                     exclude_ids: Collection[str] = ()) -> list[tuple[str, float]]:
        raise ConnectionError("vector store is down")


class SlowStore(ExactStore):
    async def search(self, space: str, vector: Sequence[float], *, limit: int,
                     exclude_ids: Collection[str] = ()) -> list[tuple[str, float]]:
        await asyncio.sleep(0.5)
        return await super().search(space, vector, limit=limit, exclude_ids=exclude_ids)


async def test_an_unknown_user_gets_popular_items(model):
    result = await Engine(scenario(), model).recommend(ask(model))
    assert len(result.items) == 5 and result.items[0].item_id == "a0"
    assert "popular" in result.items[0].sources
    assert result.debug is None


async def test_a_known_history_gets_personal_items_that_exclude_it(model):
    history = ["d0", "d1"]
    result = await Engine(scenario(), model).recommend(ask(model, history=history))
    assert not set(ids(result)) & set(history)
    assert result.items[0].item_id[0] == "d" and "item_cf" in result.items[0].sources
    assert [r.score for r in result.items] == sorted((r.score for r in result.items), reverse=True)


async def test_excluded_items_are_never_returned_even_when_little_is_left(model):
    everything_but_two = {i["item_id"] for i in items()} - {"k8", "k9"}
    result = await Engine(scenario(), model).recommend(ask(model, history=["a0"], exclude=everything_but_two))
    assert set(ids(result)) == {"k8", "k9"}


async def test_the_live_catalogue_drops_inactive_items_and_serves_new_ones(model):
    live = items()
    live[0]["status"] = "INACTIVE"  # a0, the most popular
    live.append({"item_id": "new", "title": "drama story premiere", "categories": ["drama"], "tags": ["drama-tag"],
                 "attributes": {}, "published_at": model.newest_event - timedelta(hours=1), "status": "ACTIVE"})
    recall = [*PERSONAL, {"source": "fresh", "weight": 1.0, "limit": 20, "params": {"maxAgeHours": 24.0}}]
    engine = Engine(scenario(recall), model, catalogue=CatalogueView.from_items(live))
    result = await engine.recommend(ask(model, limit=10))
    assert "a0" not in ids(result) and "new" in ids(result)
    assert "fresh" in dict((r.item_id, r.sources) for r in result.items)["new"]
    look_alikes = await engine.similar("new", limit=3)
    assert look_alikes.items and {i.item_id[0] for i in look_alikes.items} == {"d"}


async def test_an_untrained_scenario_answers_from_the_catalogue():
    docs = items()
    docs[7]["published_at"] = datetime.now(UTC) - timedelta(hours=2)
    config = scenario([{"source": "fresh", "weight": 1.0, "limit": 20, "params": {"maxAgeHours": 24.0}}])
    engine = Engine(config, None, catalogue=CatalogueView.from_items(docs))
    result = await engine.recommend(RecRequest(user_id="anyone", limit=4))
    assert ids(result)[0] == docs[7]["item_id"] and len(result.items) == 4
    assert (await engine.similar(docs[0]["item_id"], limit=3)).items  # same-category items, most popular first
    empty = await Engine(config, None).recommend(RecRequest(user_id="anyone", limit=4))
    assert empty.items == []


async def test_a_failing_store_drops_its_sources_and_the_answer_still_comes(model):
    engine = Engine(PATIENT, model, vectors=FailingStore(), content_space="content")
    result = await engine.recommend(ask(model, history=["k0"], debug=True))
    assert len(result.items) == 5
    assert result.debug["dropped"]["vector"] == "store unavailable"
    assert "item_cf" in result.debug["recall"]


class LeakyStore:
    async def search(self, space: str, vector: Sequence[float], *, limit: int,
                     exclude_ids: Collection[str] = ()) -> list[tuple[str, float]]:
        raise ValueError("mongodb://admin:hunter2@10.0.0.7 tenant tn_other item secret-9")


async def test_debug_never_carries_exception_text(model):
    for store, reason in ((LeakyStore(), "error"), (FailingStore(), "store unavailable")):
        engine = Engine(PATIENT, model, vectors=store, content_space="content")
        result = await engine.recommend(ask(model, history=["k0"], debug=True))
        assert result.debug["dropped"] == {"vector": reason}
        assert "hunter2" not in str(result.debug) and "down" not in str(result.debug)


async def test_a_slow_store_is_dropped_after_the_time_budget(model):
    store = SlowStore(model.catalogue.item_ids, model.content.embeddings)
    config = scenario(limits={"recallTimeoutMs": 30, "maxCandidates": 1000})
    engine = Engine(config, model, vectors=store, content_space="content")
    started = asyncio.get_running_loop().time()
    result = await engine.recommend(ask(model, history=["k0"], debug=True))
    assert asyncio.get_running_loop().time() - started < 0.4
    assert result.debug["dropped"]["vector"].startswith("timeout")
    assert len(result.items) == 5


async def test_debug_has_per_item_source_scores_and_stage_timings(model):
    result = await Engine(scenario(), model).recommend(ask(model, history=["a1"], debug=True))
    debug = result.debug
    assert {"recall", "filterRank", "fallback", "rerank", "total"} <= set(debug["timings"])
    assert debug["recall"]["item_cf"]["candidates"] > 0 and debug["dropped"] == {}
    first = debug["items"][0]
    assert first["itemId"] == result.items[0].item_id
    assert set(first["sources"]) == set(result.items[0].sources) and all(v > 0 for v in first["sources"].values())


async def test_a_rule_that_removes_everything_is_relaxed_but_the_blocklist_is_not(model):
    config = scenario(filters=[
        {"name": "seen", "params": {}}, {"name": "availability", "params": {}},
        {"name": "rules", "params": {"expressions": ["publishedAt within 1h"]}},
        {"name": "blocklist", "params": {"itemIds": ["a0"], "categories": ["kids"]}},
    ])
    result = await Engine(config, model).recommend(ask(model, history=["a1"], limit=8, debug=True))
    assert len(result.items) == 8
    assert result.debug["fallback"]["relaxed"] == ["rules"]
    assert "a0" not in ids(result) and not any(i.startswith("k") for i in ids(result))


async def test_a_new_user_with_stated_preferences_gets_those_categories(model):
    result = await Engine(scenario(), model).recommend(ask(model, category_prefs={"kids": 1.0}, limit=3))
    assert [i[0] for i in ids(result)] == ["k", "k", "k"]
    assert "affinity" in result.items[0].sources


async def test_rerankers_from_the_config_apply(model):
    plain = await Engine(scenario(), model).recommend(ask(model, limit=3))
    capped = await Engine(scenario(rerank=[{"name": "category_cap", "params": {"maxPerCategory": 1}}]),
                          model).recommend(ask(model, limit=3))
    assert len({i[0] for i in ids(plain)}) < 3  # popularity alone repeats a category in the first three
    assert len({i[0] for i in ids(capped)}) == 3


async def test_similar_items_come_from_neighbours_and_exclude_the_item(model):
    engine = Engine(scenario(), model)
    assert (await engine.similar("unknown", limit=5)).items == []
    result = await engine.similar("a0", limit=4, exclude=frozenset({"a1"}), debug=True)
    found = ids(result)
    assert len(found) == 4 and {i[0] for i in found} == {"a"} and not {"a0", "a1"} & set(found)
    assert "item_cf" in result.debug["recall"]


def _stage(config: dict, params: dict) -> StageContext:
    catalogue = CatalogueView.from_items(items())
    return StageContext(request=RecRequest(user_id="u", limit=5), catalogue=catalogue, params=params,
                        config=config)


def test_fusion_weighs_sources_by_the_config():
    per_source = {"item_cf": Candidates(np.array([1, 2]), np.array([0.9, 0.1], np.float32)),
                  "popular": Candidates(np.array([3, 1]), np.array([50.0, 10.0], np.float32))}
    heavy_cf = scenario([{"source": "item_cf", "weight": 5.0}, {"source": "popular", "weight": 1.0}])
    heavy_pop = scenario([{"source": "item_cf", "weight": 1.0}, {"source": "popular", "weight": 5.0}])
    assert list(Fusion().rank(per_source, _stage(heavy_cf, {})).idx[:2]) == [1, 3]
    ranked = Fusion().rank(per_source, _stage(heavy_pop, {}))
    assert list(ranked.idx) == [3, 1, 2]
    assert ranked.sources[1] == ("popular", "item_cf")  # heaviest source first
    assert np.isnan(ranked.source_scores["popular"][2]) and ranked.source_scores["item_cf"][2] == pytest.approx(0.1)


def test_reciprocal_rank_fusion_ignores_score_scales():
    per_source = {"item_cf": Candidates(np.array([1, 2]), np.array([1000.0, 999.0], np.float32)),
                  "popular": Candidates(np.array([2, 3]), np.array([0.002, 0.001], np.float32))}
    config = scenario([{"source": "item_cf", "weight": 1.0}, {"source": "popular", "weight": 1.0}])
    ranked = Fusion().rank(per_source, _stage(config, {"method": "rrf"}))
    assert list(ranked.idx) == [2, 1, 3]  # 2 is second and first: the best summed reciprocal rank


async def test_a_vector_store_gives_the_same_answer_as_the_in_memory_search(model):
    store = ExactStore(model.catalogue.item_ids, model.content.embeddings)
    request = ask(model, history=["k0", "a3"], limit=8)
    in_memory = await Engine(scenario(), model).recommend(request)
    with_store = await Engine(scenario(), model, vectors=store, content_space="content").recommend(request)
    assert store.calls == 1
    assert ids(with_store) == ids(in_memory)
    assert [r.score for r in with_store.items] == pytest.approx([r.score for r in in_memory.items])


async def test_a_scenario_trained_without_interactions_serves_the_newest_items():
    empty = synthetic().__class__(items=items(), user_ids=[], item_ids=[], types=[], values=[],
                                  timestamps=np.array([]))
    model = train_scenario_model(empty, scenario(), scenario_id="s", version=1)
    result = await Engine(scenario(), model).recommend(RecRequest(user_id="x", limit=3, now=model.newest_event))
    assert ids(result) == ["a9", "d9", "k9"]  # published last (Jan 10), in catalogue order
