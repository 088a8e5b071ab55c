"""Recall sources, each on a small trained model: what they find, what they never return, and the two search paths."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from datetime import UTC, datetime

import numpy as np
import pytest

from domain.learning.model import ScenarioModel
from domain.learning.train import train_scenario_model
from domain.recommend.base import REGISTRY, RecRequest
from domain.recommend.recall import CatalogueIndex, RecallContext, embeddings, recency_weights
from domain.recommend.recall.collaborative import USER_CF_SEEDS
from domain.recommend.recall.context import top_candidates, top_of
from domain.recommend.recall.index import LookAlikes
from tests.unit.test_learning import T0, config, items, synthetic

HOUR = 3600.0
ALL = ("popular", "trending", "item_cf", "ease", "als", "user_cf", "content", "vector", "affinity", "fresh")
PARAMS = {"ease": {"lambda": 1.0, "maxItems": 100}, "als": {"factors": 8, "iterations": 15},
          "trending": {"windowHours": 1.0}}


class ExactStore:
    """A VectorSearch answering exactly (brute force), like a vector store without approximation."""

    def __init__(self, ids: Sequence[str], embeddings: np.ndarray) -> None:
        self.ids, self.embeddings, self.calls = list(ids), np.asarray(embeddings), 0

    async def search(self, space: str, vector: Sequence[float], *, limit: int,
                     exclude_ids: Collection[str] = ()) -> list[tuple[str, float]]:
        self.calls += 1
        scores = self.embeddings @ np.asarray(vector, dtype=np.float32)
        order = np.lexsort((np.arange(len(scores)), -scores))
        hits = [(self.ids[i], float(scores[i])) for i in order
                if self.ids[i] not in exclude_ids and np.any(self.embeddings[i])]
        return hits[:limit]


@pytest.fixture(scope="module")
def model() -> ScenarioModel:
    # Extra watchers make a0 the most popular item overall and k5 the one rising at the end.
    extra = [(f"fan{n}", "a0", "WATCH", 100.0, T0 + n) for n in range(5)]
    extra += [(f"late{n}", "k5", "WATCH", 100.0, T0 + 30 * 600 + n * 60) for n in range(4)]
    return train_scenario_model(synthetic(extra), config(*ALL, **PARAMS), scenario_id="s", version=1)


def context(model: ScenarioModel, *, history: Sequence[str] = (), exclude: Collection[str] | None = None,
            params: dict | None = None, vectors: ExactStore | None = None, now: datetime | None = None,
            **request: object) -> RecallContext:
    req = RecRequest(user_id=str(request.pop("user_id", "someone")), limit=10, history=tuple(history),
                     exclude=frozenset(history if exclude is None else exclude),
                     now=now or model.newest_event, **request)  # type: ignore[arg-type]
    return RecallContext(request=req, index=CatalogueIndex.build(model, None), model=model,
                         config=config(*ALL, **PARAMS), params=params or {}, vectors=vectors,
                         content_space="content" if vectors else None)


async def recall(name: str, ctx: RecallContext, limit: int = 10) -> list[str]:
    found = await REGISTRY.get("recall", name)().recall(ctx, limit)
    assert np.all(np.diff(found.scores) <= 1e-6), "candidates come best first"
    return [ctx.catalogue.item_ids[i] for i in found.idx]


def test_every_canonical_source_is_registered():
    assert set(ALL) <= REGISTRY.names("recall")


def test_recency_weights_favour_the_newest_items_and_keep_a_floor():
    weights = recency_weights(30)
    assert weights[-1] == pytest.approx(1.0)
    assert np.all(np.diff(weights) > 0)
    assert weights[0] > 0


async def test_popular_ranks_by_popularity_and_skips_excluded_items(model):
    assert (await recall("popular", context(model)))[0] == "a0"
    assert "a0" not in await recall("popular", context(model, exclude={"a0"}))


async def test_popular_prefers_items_that_fit_the_request_context():
    docs = items()
    docs[0]["attributes"] = {"region": "EU"}  # a0, the most popular, is for another region than asked
    data = synthetic([(f"fan{n}", "a0", "WATCH", 100.0, T0 + n) for n in range(5)])
    trained = train_scenario_model(type(data)(docs, data.user_ids, data.item_ids, data.types, data.values,
                                              data.timestamps), config("popular"), scenario_id="s", version=1)
    assert (await recall("popular", context(trained)))[0] == "a0"
    in_us = await recall("popular", context(trained, context={"region": "US"}), limit=30)
    assert in_us[0] != "a0" and "a0" in in_us


async def test_trending_returns_the_item_rising_at_the_end(model):
    found = await recall("trending", context(model))
    assert found[:1] == ["k5"]


async def test_fresh_returns_recent_items_and_nothing_scheduled_later(model):
    now = datetime(2023, 1, 5, 12, tzinfo=UTC)
    found = await recall("fresh", context(model, now=now, params={"maxAgeHours": 48.0}), limit=30)
    assert set(found) == {f"{p}{n}" for p in "adk" for n in (3, 4)}  # published Jan 4 and Jan 5


async def test_item_cf_recalls_neighbours_of_the_history(model):
    found = await recall("item_cf", context(model, history=["a0"]))
    assert set(found) == {"a1", "a2", "a3", "a4", "a5"}


@pytest.mark.parametrize("source", ["ease", "als", "user_cf", "content", "vector"])
async def test_personal_sources_stay_in_the_users_cluster_and_skip_the_history(model, source):
    history = ["d0", "d1", "d2"]
    found = await recall(source, context(model, history=history), limit=3)
    assert found and not set(found) & set(history)
    assert {f[0] for f in found} == {"d"}


@pytest.mark.parametrize("source", ["item_cf", "ease", "als", "user_cf", "content", "vector", "affinity"])
async def test_personal_sources_return_nothing_without_history(model, source):
    assert await recall(source, context(model)) == []


async def test_user_cf_does_not_count_the_user_as_their_own_neighbour(model):
    # u0's own training row holds exactly its history; only other action fans can add items.
    history = model.user_history("u0")[:3]
    found = await recall("user_cf", context(model, history=history, user_id="u0"), limit=20)
    assert found and {f[0] for f in found} == {"a"}


@pytest.mark.parametrize("source", ["content", "vector"])
async def test_vector_store_and_in_memory_search_rank_the_same(model, source):
    history = ["k0", "k3", "a2"]
    store = ExactStore(model.catalogue.item_ids, model.content.embeddings)
    in_memory = await recall(source, context(model, history=history), limit=8)
    with_store = await recall(source, context(model, history=history, vectors=store), limit=8)
    assert store.calls > 0
    assert with_store == in_memory


async def test_kept_look_alikes_rank_as_the_exhaustive_search(model):
    ctx = context(model, history=["k0", "k3", "a2"], exclude={"k0", "k3", "a2", "d1"})
    seeds = ctx.catalogue.indexes(["k0", "a2"])
    kept = await embeddings.look_alikes(ctx, seeds, 6)
    exhaustive = embeddings._exhaustive(ctx, np.asarray(ctx.index.embeddings[seeds]), 6)
    for (idx, scores), (want_idx, want_scores) in zip(kept, exhaustive, strict=True):
        assert idx.tolist() == want_idx.tolist() and np.allclose(scores, want_scores)
        assert not ctx.blocked[idx].any()


def test_top_of_candidates_matches_the_dense_top():
    rng = np.random.default_rng(3)
    idx = rng.permutation(1000)[:300]
    scores = rng.integers(-2, 6, size=300).astype(np.float32)  # ties and non-positive scores
    dense = np.zeros(1000, dtype=np.float32)
    dense[idx] = scores
    for limit in (1, 25, 300):
        want, got = top_candidates(dense, limit), top_of(idx, scores, limit)
        assert got.idx.tolist() == want.idx.tolist() and got.scores.tolist() == want.scores.tolist()


def test_a_look_alike_list_too_short_for_the_exclusions_answers_none():
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(400, 8)).astype(np.float32)
    kept = LookAlikes(vectors)
    blocked = np.zeros(400, dtype=bool)
    idx, scores = kept.nearest(0, 10, blocked)
    brute = vectors @ vectors[0]
    assert idx.tolist() == np.argsort(-brute, kind="stable")[:10].tolist() and np.allclose(scores, brute[idx])
    blocked[np.argsort(-brute)[:300]] = True  # more than the kept list (2 * 10 + 100) holds
    assert kept.nearest(0, 10, blocked) is None
    assert kept.nearest(0, 10, np.zeros(400, dtype=bool)) is not None


def test_look_alike_lists_stay_with_their_engine_within_one_bound():
    rng = np.random.default_rng(11)
    one, two = rng.normal(size=(50, 4)).astype(np.float32), rng.normal(size=(50, 4)).astype(np.float32)
    first, second = LookAlikes(one, kept=3), LookAlikes(two, kept=3)
    free = np.zeros(50, dtype=bool)
    a, _ = first.nearest(0, 5, free)
    b, _ = second.nearest(0, 5, free)
    assert a.tolist() == np.argsort(-(one @ one[0]), kind="stable")[:5].tolist()
    assert b.tolist() == np.argsort(-(two @ two[0]), kind="stable")[:5].tolist()
    for item in range(1, 5):
        first.nearest(item, 5, free)
    assert len(LookAlikes._shared) <= 3


async def test_embedding_sources_skip_excluded_items_beyond_the_recent_history(model):
    history = ["k0", "k1"]
    store = ExactStore(model.catalogue.item_ids, model.content.embeddings)
    found = await recall("vector", context(model, history=history, exclude={"k0", "k1", "k2"}, vectors=store))
    assert "k2" not in found and found


async def test_affinity_uses_stated_preferences_then_the_history(model):
    stated = await recall("affinity", context(model, category_prefs={"kids": 1.0}))
    assert stated and {f[0] for f in stated} == {"k"}
    learned = await recall("affinity", context(model, history=["d0", "d1"]))
    assert learned and learned[0][0] == "d"


async def test_user_cf_seeds_only_the_newest_items(model):
    # Older d-items would bring the d-cluster's users in; only the newest seeds count.
    history = ["d0", "d1", "d2", "a0", "a1", "a2"]
    found = await recall("user_cf", context(model, history=history, params={"seedItems": 3}), limit=20)
    assert found and {f[0] for f in found} == {"a"}


async def test_user_cf_caps_the_seeds_of_an_inflated_history(model):
    # An inflated history (a bot replaying the same items) seeds at most USER_CF_SEEDS items by default.
    history = ["d0"] * 20 + ["a0", "a1", "a2"] * (USER_CF_SEEDS // 3 + 1)
    found = await recall("user_cf", context(model, history=history, exclude=["d0", "a0", "a1", "a2"]), limit=20)
    assert found and {f[0] for f in found} == {"a"}


async def test_history_items_below_the_default_cap_read_only_the_newest(model):
    # historyItems 3 reads the three newest items: the older d-items no longer pull d-items in.
    history = ["d0", "d1", "d2", "a0", "a1", "a2"]
    both = await recall("item_cf", context(model, history=history), limit=20)
    assert {f[0] for f in both} == {"a", "d"}
    newest = await recall("item_cf", context(model, history=history, params={"historyItems": 3}), limit=20)
    assert newest and {f[0] for f in newest} == {"a"}
