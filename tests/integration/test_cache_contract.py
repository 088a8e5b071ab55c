"""One contract for the cache: the in-memory fake and RedisCache on a real redis-server behave the same."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from models.cache import BlobWrite, CacheUnavailable, InMemoryCache, ItemMeta, RedisCache, tenant_key


@pytest.fixture(params=["fake", "redis"])
async def cache(request, redis_url) -> AsyncIterator[InMemoryCache | RedisCache]:
    if request.param == "fake":
        yield InMemoryCache()
        return
    real = RedisCache.from_url(redis_url)
    await real.client.flushdb()
    yield real
    await real.close()


META = ItemMeta(scenarios=("s1",), categories=("a", "b"), tags=("x",), status="ACTIVE", duration_seconds=90.0)


async def test_item_meta_round_trip_and_tenant_isolation(cache):
    await cache.put_item_meta({"i1": META}, tenant_id="t1")
    assert await cache.item_meta(["i1", "i2"], tenant_id="t1") == {"i1": META}
    assert await cache.item_meta(["i1"], tenant_id="t2") == {}


async def test_drop_item_meta_one_or_all(cache):
    await cache.put_item_meta({"i1": META, "i2": META}, tenant_id="t1")
    await cache.drop_item_meta(["i1"], tenant_id="t1")
    assert set(await cache.item_meta(["i1", "i2"], tenant_id="t1")) == {"i2"}
    await cache.drop_item_meta(None, tenant_id="t1")
    assert await cache.item_meta(["i2"], tenant_id="t1") == {}


async def test_seen_sets_and_user_versions(cache):
    assert await cache.user_version("u1", tenant_id="t1") == 0
    await cache.record_seen([("s1", "u1", "i1"), ("s1", "u1", "i2"), ("s2", "u1", "i3")], tenant_id="t1")
    assert await cache.seen("s1", "u1", tenant_id="t1") == {"i1", "i2"}
    assert await cache.seen("s1", "u1", tenant_id="t2") == set()
    assert await cache.user_version("u1", tenant_id="t1") == 1


async def test_erase_user_removes_seen_sets_and_version(cache):
    await cache.record_seen([("s1", "u1", "i1"), ("s2", "u1", "i2"), ("s1", "u2", "i1")], tenant_id="t1")
    removed = await cache.erase_user("u1", ["s1", "s2"], tenant_id="t1", marker="h1")
    assert removed == 3  # the two seen sets and the version counter (no key may keep the user id)
    assert await cache.seen("s1", "u1", tenant_id="t1") == set()
    assert await cache.seen("s1", "u2", tenant_id="t1") == {"i1"}
    assert await cache.user_version("u1", tenant_id="t1") == 0
    assert await cache.erase_user("u1", ["s1", "s2"], tenant_id="t1", marker="h1") == 0


async def test_erase_user_removes_the_answers_and_lists_written_about_them(cache):
    writes = [BlobWrite(("answer", "s1", "u1", "k"), "a", 60, version=0, owner="u1"),
              BlobWrite(("served", "r1"), "list", 60, owner="u1"), BlobWrite(("served", "r2"), "other", 60, owner="u2")]
    await cache.put_blobs(writes, tenant_id="t1")
    assert await cache.user_keys("u1", tenant_id="t1") == ["t:{t1}:answer:s1:u1:k", "t:{t1}:served:r1"]
    await cache.put_blobs([BlobWrite(("extra",), "x", 60)], tenant_id="t1")
    # the answer, the served list, the index itself and the extra key
    assert await cache.erase_user("u1", [], tenant_id="t1", marker="h1", also=["t:{t1}:extra"]) == 4
    assert await cache.get_blob("served", "r1", tenant_id="t1") is None
    assert await cache.get_blob("extra", tenant_id="t1") is None
    assert await cache.get_blob("served", "r2", tenant_id="t1") == "other"
    assert await cache.user_keys("u1", tenant_id="t1") == []


async def test_ping(cache):
    assert await cache.ping() is True


def test_keys_share_the_tenant_hash_slot():
    assert tenant_key("acme", "seen", "s", "u") == "t:{acme}:seen:s:u"


async def test_unreachable_redis_raises_cache_unavailable():
    from tests.conftest import free_port

    dead = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    assert await dead.ping() is False
    with pytest.raises(CacheUnavailable):
        await dead.item_meta(["x"], tenant_id="t")
    await dead.close()


async def test_blobs_are_per_tenant(cache):
    await cache.put_blob("served", "r1", value='["a"]', ttl_s=60, tenant_id="t1")
    assert await cache.get_blob("served", "r1", tenant_id="t1") == '["a"]'
    assert await cache.get_blob("served", "r1", tenant_id="t2") is None


async def test_put_blobs_stores_several_in_one_call(cache):
    await cache.put_blobs([BlobWrite(("served", "r1"), "one", 60), BlobWrite(("served", "r2"), "two", 60)], tenant_id="t1")
    assert await cache.get_blob("served", "r1", tenant_id="t1") == "one"
    assert await cache.get_blob("served", "r2", tenant_id="t1") == "two"
    assert await cache.get_blob("served", "r1", tenant_id="t2") is None


async def test_user_state_gives_the_answer_of_the_current_version_else_the_seen_set(cache):
    answer = ("answer", "s1", "u1", "k")
    await cache.record_seen([("s1", "u1", "i1")], tenant_id="t1")
    state = await cache.user_state("s1", "u1", answer, tenant_id="t1")
    assert (state.version, state.answer, state.seen) == (1, None, {"i1"})

    await cache.put_blobs([BlobWrite(answer, '{"a":1}', 60, version=1)], tenant_id="t1")
    state = await cache.user_state("s1", "u1", answer, tenant_id="t1")
    assert (state.version, state.answer, state.seen) == (1, '{"a":1}', None)  # a hit does not read the seen set
    # Not asked for (debug answers), of another tenant, or of another scenario's options: the seen set instead.
    assert (await cache.user_state("s1", "u1", None, tenant_id="t1")).seen == {"i1"}
    assert (await cache.user_state("s1", "u1", answer, tenant_id="t2")).answer is None
    assert (await cache.user_state("s1", "u1", ("answer", "s1", "u1", "other"), tenant_id="t1")).answer is None

    await cache.record_seen([("s1", "u1", "i2")], tenant_id="t1")  # the version moves: the answer is stale
    state = await cache.user_state("s1", "u1", answer, tenant_id="t1")
    assert (state.version, state.answer, state.seen) == (2, None, {"i1", "i2"})
    # Version 12 must not read an answer stored for version 1 (a prefix of it), nor the other way round.
    for _ in range(10):
        await cache.record_seen([("s1", "u1", "i3")], tenant_id="t1")
    assert (await cache.user_state("s1", "u1", answer, tenant_id="t1")).answer is None


async def test_user_state_of_an_unknown_user(cache):
    state = await cache.user_state("s1", "nobody", ("answer", "s1", "nobody", "k"), tenant_id="t1")
    assert (state.version, state.answer, state.seen) == (0, None, set())


async def test_user_state_and_put_blobs_without_redis_raise_cache_unavailable():
    from tests.conftest import free_port

    dead = RedisCache.from_url(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.2)
    for down in (InMemoryCache(up=False), dead):
        with pytest.raises(CacheUnavailable):
            await down.user_state("s1", "u1", None, tenant_id="t1")
        with pytest.raises(CacheUnavailable):
            await down.put_blobs([BlobWrite(("served", "r"), "x", 60)], tenant_id="t1")
    await dead.close()


async def test_label_scores_add_up_per_user_and_tenant(cache):
    await cache.add_label_scores({"u1": {"c:Drama": 1.5, "t:funny": 2.0}, "u2": {"c:Drama": 1.0}}, tenant_id="t1")
    await cache.add_label_scores({"u1": {"c:Drama": 0.25}}, tenant_id="t1")
    scores = await cache.label_scores(["u1", "u2", "u3"], tenant_id="t1")
    assert scores == {"u1": {"c:Drama": 1.75, "t:funny": 2.0}, "u2": {"c:Drama": 1.0}}
    assert await cache.label_scores(["u1"], tenant_id="t2") == {}
    assert await cache.erase_user("u1", [], tenant_id="t1", marker="h1") == 1
    assert await cache.label_scores(["u1"], tenant_id="t1") == {}


async def test_items_version_moves_with_each_change(cache):
    assert await cache.items_version(tenant_id="iv") == 0
    await cache.items_changed(tenant_id="iv")
    await cache.items_changed(tenant_id="iv")
    assert await cache.items_version(tenant_id="iv") == 2
    assert await cache.items_version(tenant_id="iv-other") == 0
