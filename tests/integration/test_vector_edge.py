"""The embedded store on real qdrant-edge shards: persistence, HNSW, the one-process lock, the factory."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import AsyncQdrantClient

from models.vectors import (
    EdgeVectorStore,
    SpaceNotFoundError,
    VectorPoint,
    VectorStoreError,
    open_vector_store,
)
from models.vectors.server import QdrantServerVectorStore

SPACE = "items"
TENANT = "acme"
LOCK_MESSAGE = "another recograph process holds the shard at"


@pytest.fixture
async def held(tmp_path: Path):
    """Yield an open EdgeVectorStore that holds the `items` shard under tmp_path/qdrant."""
    store = EdgeVectorStore(tmp_path / "qdrant")
    await store.ensure_space(SPACE, dim=3)
    await store.upsert(SPACE, [VectorPoint("p1", [1.0, 0.0, 0.0], {"tags": ["x"]})], tenant_id=TENANT)
    yield store
    await store.close()


async def test_points_survive_close_and_reopen(tmp_path: Path) -> None:
    first = EdgeVectorStore(tmp_path)
    await first.ensure_space(SPACE, dim=3)
    points = [VectorPoint("p1", [1.0, 0.0, 0.0], {"tags": ["x"]}), VectorPoint("p2", [0.0, 1.0, 0.0])]
    await first.upsert(SPACE, points, tenant_id=TENANT)
    await first.close()

    second = EdgeVectorStore(tmp_path)
    # No ensure_space: a restarted server finds the shard on disk by name.
    hits = await second.search(SPACE, [0.1, 1.0, 0.0], tenant_id=TENANT, limit=5, must={"tags": "x"})
    assert [(h.id, h.payload) for h in hits] == [("p1", {"tags": ["x"]})]
    await second.ensure_space(SPACE, dim=3)
    assert await second.count(SPACE, tenant_id=TENANT) == 2
    with pytest.raises(VectorStoreError, match="dim=3"):
        await second.ensure_space(SPACE, dim=5)
    await second.close()


async def test_reopen_with_another_dimension_is_refused(tmp_path: Path) -> None:
    first = EdgeVectorStore(tmp_path)
    await first.ensure_space(SPACE, dim=3)
    await first.close()

    second = EdgeVectorStore(tmp_path)
    with pytest.raises(VectorStoreError, match="expected vector size 8"):
        await second.ensure_space(SPACE, dim=8)
    await second.close()


async def test_search_after_optimize_matches_brute_force_on_5k_points(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    vectors = rng.normal(size=(5000, 32)).astype(np.float32)
    # A 10 KB indexing threshold makes these 5k points big enough for Qdrant to build HNSW.
    store = EdgeVectorStore(tmp_path, indexing_threshold_kb=10)
    await store.ensure_space(SPACE, dim=32)
    points = [VectorPoint(f"i{n}", vectors[n], {"tags": [f"g{n % 2}"]}) for n in range(5000)]
    assert await store.upsert(SPACE, points, tenant_id=TENANT) == 5000

    assert await store.optimize(SPACE) is True

    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    for n in (0, 1234, 4999):
        hits = await store.search(SPACE, vectors[n], tenant_id=TENANT, limit=10)
        exact = [f"i{i}" for i in np.argsort(-(unit @ unit[n]))[:10]]
        assert hits[0].id == f"i{n}"
        assert len({h.id for h in hits} & set(exact)) >= 9
    even = await store.search(SPACE, vectors[1], tenant_id=TENANT, limit=20, must={"tags": "g0"})
    assert len(even) == 20 and all(int(h.id[1:]) % 2 == 0 for h in even)
    assert await store.count(SPACE, tenant_id=TENANT) == 5000
    await store.close()


async def test_bad_point_in_a_chunked_batch_writes_nothing(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path)
    await store.ensure_space(SPACE, dim=3)
    points = [VectorPoint(f"p{n}", [1.0, float(n), 0.0]) for n in range(600)]
    points.append(VectorPoint("bad", [1.0, 0.0, 0.0], {"tenant_id": "someone-else"}))

    with pytest.raises(ValueError, match="reserved"):
        await store.upsert(SPACE, points, tenant_id=TENANT)

    assert await store.count(SPACE, tenant_id=TENANT) == 0
    assert await store.upsert(SPACE, points[:600], tenant_id=TENANT) == 600
    assert await store.count(SPACE, tenant_id=TENANT) == 600
    await store.close()


async def test_second_store_in_the_same_process_is_refused(held: EdgeVectorStore) -> None:
    second = EdgeVectorStore(held.root)

    with pytest.raises(VectorStoreError, match=LOCK_MESSAGE) as caught:
        await second.ensure_space(SPACE, dim=3)

    assert str(held.root / SPACE) in str(caught.value)
    assert await held.count(SPACE, tenant_id=TENANT) == 1


async def test_second_process_is_refused_while_the_first_holds_the_shard(held: EdgeVectorStore) -> None:
    script = textwrap.dedent(
        f"""
        import asyncio
        from pathlib import Path
        from models.vectors import EdgeVectorStore, VectorStoreError

        async def main():
            try:
                await EdgeVectorStore(Path({str(held.root)!r})).search("items", [1, 0, 0], tenant_id="acme", limit=1)
            except VectorStoreError as exc:
                print(exc)

        asyncio.run(main())
        """
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=root, timeout=60)

    assert LOCK_MESSAGE in result.stdout, result.stderr
    assert str(held.root / SPACE) in result.stdout


async def test_closed_store_releases_the_shard_and_refuses_calls(held: EdgeVectorStore) -> None:
    await held.close()

    with pytest.raises(VectorStoreError, match="closed"):
        await held.count(SPACE, tenant_id=TENANT)
    reopened = EdgeVectorStore(held.root)
    assert await reopened.count(SPACE, tenant_id=TENANT) == 1
    await reopened.close()


async def test_missing_space_on_disk_raises(tmp_path: Path) -> None:
    store = EdgeVectorStore(tmp_path)

    with pytest.raises(SpaceNotFoundError, match="nothing"):
        await store.count("nothing", tenant_id=TENANT)
    await store.close()


async def test_factory_without_data_dir_uses_a_temporary_directory_it_removes(tmp_path: Path) -> None:
    store = open_vector_store(url=None, api_key=None, data_dir=None)
    assert isinstance(store, EdgeVectorStore)
    await store.ensure_space(SPACE, dim=3)
    assert (store.root / SPACE).is_dir()

    await store.close()

    assert not store.root.exists()


async def test_factory_with_data_dir_keeps_shards_under_qdrant(tmp_path: Path) -> None:
    store = open_vector_store(url=None, api_key=None, data_dir=tmp_path)
    await store.ensure_space(SPACE, dim=3)
    await store.close()

    assert isinstance(store, EdgeVectorStore)
    assert store.root == tmp_path / "qdrant"
    assert (tmp_path / "qdrant" / SPACE).is_dir()


async def test_factory_with_url_builds_a_server_store(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict = {}

    def local_client(**kwargs):
        # Record what a real server client would get, and answer from Qdrant local instead of the network.
        seen.update(kwargs)
        return AsyncQdrantClient(location=":memory:")

    monkeypatch.setattr("qdrant_client.AsyncQdrantClient", local_client)  # the factory imports it when a URL is set
    store = open_vector_store(url="https://qdrant.example:6333", api_key="k", data_dir=Path("/unused"))

    assert isinstance(store, QdrantServerVectorStore)
    assert seen == {"url": "https://qdrant.example:6333", "api_key": "k"}
    assert await store.ping() is True
    await store.close()


async def test_ping_reports_an_unreachable_server_or_a_closed_store_without_raising(tmp_path: Path) -> None:
    # Port 9 (discard) refuses connections on loopback, so the call fails fast.
    server = QdrantServerVectorStore(AsyncQdrantClient(url="http://127.0.0.1:9", check_compatibility=False))
    edge = EdgeVectorStore(tmp_path)
    await edge.close()

    assert await server.ping() is False
    assert await edge.ping() is False
    await server.close()
