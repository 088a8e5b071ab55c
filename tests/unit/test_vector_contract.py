"""One contract for every VectorStore: the fake, embedded qdrant-edge, and qdrant-client against Qdrant local."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from qdrant_client import AsyncQdrantClient

from models.vectors import (
    EdgeVectorStore,
    InMemoryVectorStore,
    SpaceNotFoundError,
    VectorPoint,
    VectorStore,
    VectorStoreError,
)
from models.vectors.guarded import guard
from models.vectors.server import QdrantServerVectorStore

# Qdrant local mode ignores payload indexes and says so; the server semantics are what is under test.
pytestmark = pytest.mark.filterwarnings("ignore:Payload indexes have no effect:UserWarning")

SPACE = "items"
A = "tenant-a"
B = "tenant-b"
QUERY = [1.0, 0.0, 0.0, 0.0]

# Cosine to QUERY: a1 1.0, a2 ~0.994, a3 ~0.447, a4 ~-0.98, so the order is a1, a2, a3, a4.
A_POINTS = [
    VectorPoint("a1", [1.0, 0.0, 0.0, 0.0], {"categories": ["shoes", "sale"], "scenarios": "home", "user_id": "u1"}),
    VectorPoint("a2", [0.9, 0.1, 0.0, 0.0], {"categories": ["shoes"], "scenarios": "feed", "user_id": "u1"}),
    VectorPoint("a3", [0.5, 1.0, 0.0, 0.0], {"categories": ["books"], "scenarios": "feed", "user_id": "u2"}),
    VectorPoint("a4", [-1.0, 0.2, 0.0, 0.0], {"categories": ["books"], "tags": ["old"], "user_id": "u2"}),
]


async def _make_store(kind: str, tmp_path: Path) -> VectorStore:
    if kind == "fake":
        return InMemoryVectorStore()
    if kind == "edge":
        return EdgeVectorStore(tmp_path / "qdrant")
    if kind == "guarded":  # the breaker the runtime puts in front of the store changes nothing a caller sees
        return guard(EdgeVectorStore(tmp_path / "qdrant"))
    return QdrantServerVectorStore(AsyncQdrantClient(location=":memory:"))


@pytest.fixture(params=["fake", "edge", "server", "guarded"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[VectorStore]:
    """Yield an empty store of each kind with the `items` space created."""
    vector_store = await _make_store(request.param, tmp_path)
    await vector_store.ensure_space(SPACE, dim=4)
    yield vector_store
    await vector_store.close()


@pytest.fixture
async def seeded(store: VectorStore) -> VectorStore:
    """Return the store with tenant A's four points in it."""
    assert await store.upsert(SPACE, A_POINTS, tenant_id=A) == 4
    return store


def _ids(hits: list) -> list[str]:
    return [hit.id for hit in hits]


async def test_search_returns_nearest_first_with_ids_and_payload(seeded: VectorStore) -> None:
    hits = await seeded.search(SPACE, QUERY, tenant_id=A, limit=3)

    assert _ids(hits) == ["a1", "a2", "a3"]
    assert hits[0].payload == {"categories": ["shoes", "sale"], "scenarios": "home", "user_id": "u1"}
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert hits[1].score == pytest.approx(0.9 / math.hypot(0.9, 0.1), abs=1e-5)
    assert hits[0].score > hits[1].score > hits[2].score


async def test_search_limit_beyond_size_returns_all_and_zero_returns_none(seeded: VectorStore) -> None:
    assert _ids(await seeded.search(SPACE, QUERY, tenant_id=A, limit=10)) == ["a1", "a2", "a3", "a4"]
    assert await seeded.search(SPACE, QUERY, tenant_id=A, limit=0) == []


async def test_tenants_with_identical_ids_never_see_each_other(seeded: VectorStore) -> None:
    await seeded.upsert(SPACE, [VectorPoint("a1", [0.0, 0.0, 0.0, 1.0], {"owner": "b"})], tenant_id=B)

    b_hits = await seeded.search(SPACE, QUERY, tenant_id=B, limit=10)
    a_hits = await seeded.search(SPACE, [0.0, 0.0, 0.0, 1.0], tenant_id=A, limit=10)

    assert [(h.id, h.payload) for h in b_hits] == [("a1", {"owner": "b"})]
    assert {h.id for h in a_hits} == {"a1", "a2", "a3", "a4"}
    assert all(h.payload.get("owner") is None for h in a_hits)
    assert await seeded.count(SPACE, tenant_id=A) == 4
    assert await seeded.count(SPACE, tenant_id=B) == 1
    assert (await seeded.get_vectors(SPACE, ["a1"], tenant_id=B))["a1"] == pytest.approx([0.0, 0.0, 0.0, 1.0])
    assert (await seeded.get_vectors(SPACE, ["a1"], tenant_id=A))["a1"] == pytest.approx([1.0, 0.0, 0.0, 0.0])


async def test_tenant_cannot_delete_another_tenants_points(seeded: VectorStore) -> None:
    assert await seeded.delete(SPACE, ["a2", "a3"], tenant_id=B) == 0
    assert await seeded.delete_where(SPACE, tenant_id=B, key="user_id", value="u1") == 0
    assert await seeded.delete_tenant(SPACE, tenant_id=B) == 0

    assert await seeded.count(SPACE, tenant_id=A) == 4
    assert await seeded.count(SPACE, tenant_id=B) == 0


async def test_must_matches_any_of_a_list_payload(seeded: VectorStore) -> None:
    shoes = await seeded.search(SPACE, QUERY, tenant_id=A, limit=10, must={"categories": "shoes"})
    books_or_sale = await seeded.search(SPACE, QUERY, tenant_id=A, limit=10, must={"categories": ["books", "sale"]})

    assert _ids(shoes) == ["a1", "a2"]
    assert _ids(books_or_sale) == ["a1", "a3", "a4"]


async def test_must_on_scenarios_and_several_keys_all_apply(seeded: VectorStore) -> None:
    feed = await seeded.search(SPACE, QUERY, tenant_id=A, limit=10, must={"scenarios": "feed"})
    both = {"scenarios": "feed", "categories": "books"}
    feed_books = await seeded.search(SPACE, QUERY, tenant_id=A, limit=10, must=both)
    tagged = await seeded.search(SPACE, QUERY, tenant_id=A, limit=10, must={"tags": ["old", "new"]})

    assert _ids(feed) == ["a2", "a3"]
    assert _ids(feed_books) == ["a3"]
    assert _ids(tagged) == ["a4"]


async def test_must_cannot_widen_past_the_tenant(seeded: VectorStore) -> None:
    hits = await seeded.search(SPACE, QUERY, tenant_id=B, limit=10, must={"tenant_id": A})

    assert hits == []


async def test_exclude_ids_skips_those_points(seeded: VectorStore) -> None:
    hits = await seeded.search(SPACE, QUERY, tenant_id=A, limit=2, exclude_ids=["a1", "nope"])

    assert _ids(hits) == ["a2", "a3"]


async def test_get_vectors_returns_found_ids_normalised_for_cosine(seeded: VectorStore) -> None:
    vectors = await seeded.get_vectors(SPACE, ["a3", "a1", "missing"], tenant_id=A)

    assert set(vectors) == {"a1", "a3"}
    norm = math.hypot(0.5, 1.0)
    assert vectors["a3"] == pytest.approx([0.5 / norm, 1.0 / norm, 0.0, 0.0], abs=1e-6)
    assert vectors["a1"] == pytest.approx([1.0, 0.0, 0.0, 0.0], abs=1e-6)


async def test_delete_counts_only_existing_ids(seeded: VectorStore) -> None:
    assert await seeded.delete(SPACE, ["a1", "missing"], tenant_id=A) == 1

    assert await seeded.count(SPACE, tenant_id=A) == 3
    assert _ids(await seeded.search(SPACE, QUERY, tenant_id=A, limit=1)) == ["a2"]
    assert await seeded.get_vectors(SPACE, ["a1"], tenant_id=A) == {}


async def test_delete_where_erases_one_users_vectors(seeded: VectorStore) -> None:
    assert await seeded.delete_where(SPACE, tenant_id=A, key="user_id", value="u1") == 2

    assert _ids(await seeded.search(SPACE, QUERY, tenant_id=A, limit=10)) == ["a3", "a4"]
    assert await seeded.delete_where(SPACE, tenant_id=A, key="user_id", value="u1") == 0


async def test_delete_tenant_removes_only_that_tenant(seeded: VectorStore) -> None:
    await seeded.upsert(SPACE, [VectorPoint("b1", QUERY)], tenant_id=B)

    assert await seeded.delete_tenant(SPACE, tenant_id=A) == 4

    assert await seeded.count(SPACE, tenant_id=A) == 0
    assert _ids(await seeded.search(SPACE, QUERY, tenant_id=B, limit=10)) == ["b1"]


async def test_upsert_of_existing_id_replaces_vector_and_payload(seeded: VectorStore) -> None:
    # Cosine to QUERY ~0.9988: between a1 and a2 now, where it used to be last.
    await seeded.upsert(SPACE, [VectorPoint("a4", [1.0, -0.05, 0.0, 0.0], {"categories": ["toys"]})], tenant_id=A)

    hits = await seeded.search(SPACE, QUERY, tenant_id=A, limit=10)
    assert await seeded.count(SPACE, tenant_id=A) == 4
    assert _ids(hits) == ["a1", "a4", "a2", "a3"]
    assert hits[1].payload == {"categories": ["toys"]}
    assert _ids(await seeded.search(SPACE, QUERY, tenant_id=A, limit=10, must={"categories": "books"})) == ["a3"]


async def test_upsert_of_nothing_writes_nothing(store: VectorStore) -> None:
    assert await store.upsert(SPACE, [], tenant_id=A) == 0
    assert await store.count(SPACE, tenant_id=A) == 0


async def test_missing_space_raises_naming_it(store: VectorStore) -> None:
    with pytest.raises(SpaceNotFoundError, match="ghosts"):
        await store.search("ghosts", QUERY, tenant_id=A, limit=3)
    with pytest.raises(VectorStoreError, match="ghosts"):
        await store.upsert("ghosts", A_POINTS, tenant_id=A)
    with pytest.raises(VectorStoreError, match="ghosts"):
        await store.count("ghosts", tenant_id=A)


async def test_wrong_dimension_is_a_vector_store_error(store: VectorStore) -> None:
    with pytest.raises(VectorStoreError):
        await store.upsert(SPACE, [VectorPoint("x", [1.0, 0.0])], tenant_id=A)
    with pytest.raises(VectorStoreError):
        await store.search(SPACE, [1.0, 0.0], tenant_id=A, limit=3)


async def test_ensure_space_is_idempotent_and_rejects_another_shape(seeded: VectorStore) -> None:
    await seeded.ensure_space(SPACE, dim=4)

    assert await seeded.count(SPACE, tenant_id=A) == 4
    with pytest.raises(VectorStoreError, match="dim=4"):
        await seeded.ensure_space(SPACE, dim=8)


async def test_reserved_payload_keys_cannot_point_elsewhere(store: VectorStore) -> None:
    with pytest.raises(ValueError, match="tenant_id"):
        await store.upsert(SPACE, [VectorPoint("x", QUERY, {"tenant_id": B})], tenant_id=A)
    with pytest.raises(ValueError, match="tenant_id"):
        await store.count(SPACE, tenant_id="")


async def test_drop_space_deletes_it_with_every_tenants_points_and_leaves_the_others(seeded: VectorStore) -> None:
    await seeded.ensure_space("doomed", dim=2)
    await seeded.upsert("doomed", [VectorPoint("x", [1.0, 0.0])], tenant_id=A)
    await seeded.upsert("doomed", [VectorPoint("y", [0.0, 1.0])], tenant_id=B)

    assert await seeded.drop_space("doomed") is True
    assert await seeded.drop_space("doomed") is False  # gone: nothing to drop
    with pytest.raises(SpaceNotFoundError, match="doomed"):
        await seeded.search("doomed", [1.0, 0.0], tenant_id=B, limit=1)
    assert await seeded.count(SPACE, tenant_id=A) == 4  # another space keeps its points
    await seeded.ensure_space("doomed", dim=3)  # the name is free again, for any shape
    assert await seeded.count("doomed", tenant_id=A) == 0


async def test_ping_is_true(store: VectorStore) -> None:
    assert await store.ping() is True


async def test_dot_space_scores_by_raw_dot_product(store: VectorStore) -> None:
    await store.ensure_space("raw", dim=2, distance="dot")
    await store.upsert("raw", [VectorPoint("small", [1.0, 0.0]), VectorPoint("big", [3.0, 1.0])], tenant_id=A)

    hits = await store.search("raw", [1.0, 0.0], tenant_id=A, limit=2)

    assert [(h.id, round(h.score, 4)) for h in hits] == [("big", 3.0), ("small", 1.0)]


def test_every_store_satisfies_the_protocol(tmp_path: Path) -> None:
    stores = [InMemoryVectorStore(), EdgeVectorStore(tmp_path), QdrantServerVectorStore(AsyncQdrantClient(":memory:"))]

    assert all(isinstance(s, VectorStore) for s in stores)


async def test_search_without_payload_returns_ids_and_scores_only(store):
    await store.ensure_space("nopay", dim=2)
    await store.upsert("nopay", [VectorPoint("a", [1.0, 0.0], {"categories": ["x"]})], tenant_id="t1")
    hits = await store.search("nopay", [1.0, 0.0], tenant_id="t1", limit=1, with_payload=False)
    assert [(h.id, h.payload) for h in hits] == [("a", {})]
