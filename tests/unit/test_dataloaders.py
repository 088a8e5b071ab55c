"""DataLoaders: one batch call per tick with every key, results in key order, None for misses, tenant-bound."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from resolvers.loaders import make_loaders


class FakeStore:
    """A get_many that records its calls and knows a fixed set of ids per tenant."""

    def __init__(self, known: dict[str, set[str]]) -> None:
        self.known = known
        self.calls: list[tuple[list[str], str]] = []

    async def get_many(self, ids, *, tenant_id):
        self.calls.append((list(ids), tenant_id))
        await asyncio.sleep(0)
        return [f"{tenant_id}:{i}" if i in self.known.get(tenant_id, set()) else None for i in ids]


def services(known: dict[str, set[str]]) -> SimpleNamespace:
    return SimpleNamespace(catalogue=FakeStore(known), scenarios=FakeStore(known), profiles=FakeStore(known))


async def test_twenty_concurrent_loads_make_one_batch_in_key_order():
    known = {f"i{n}" for n in range(0, 20, 2)}  # even ids exist, odd ones do not
    svc = services({"t1": known})
    loaders = make_loaders(svc, "t1")
    keys = [f"i{n}" for n in range(20)]
    results = await asyncio.gather(*(loaders.items.load(k) for k in keys))
    assert results == [f"t1:{k}" if k in known else None for k in keys]
    assert len(svc.catalogue.calls) == 1
    ids, tenant = svc.catalogue.calls[0]
    assert sorted(ids) == sorted(keys) and len(ids) == 20 and tenant == "t1"


async def test_load_many_and_repeated_keys_share_one_batch():
    svc = services({"t1": {"a", "b"}})
    loaders = make_loaders(svc, "t1")
    many, one, again = await asyncio.gather(
        loaders.items.load_many(["b", "missing", "a"]), loaders.items.load("a"), loaders.items.load("b"),
    )
    assert many == ["t1:b", None, "t1:a"] and one == "t1:a" and again == "t1:b"
    assert len(svc.catalogue.calls) == 1
    assert sorted(svc.catalogue.calls[0][0]) == ["a", "b", "missing"]


async def test_each_loader_batches_its_own_store():
    svc = services({"t1": {"x"}})
    loaders = make_loaders(svc, "t1")
    got = await asyncio.gather(loaders.items.load("x"), loaders.scenarios.load("x"), loaders.profiles.load("y"),
                               loaders.scenarios.load("z"), loaders.profiles.load("x"))
    assert got == ["t1:x", "t1:x", None, None, "t1:x"]
    assert [len(s.calls) for s in (svc.catalogue, svc.scenarios, svc.profiles)] == [1, 1, 1]
    assert sorted(svc.scenarios.calls[0][0]) == ["x", "z"]


async def test_later_ticks_are_cached_per_request_and_loaders_are_fresh_per_request():
    svc = services({"t1": {"a"}})
    loaders = make_loaders(svc, "t1")
    assert await loaders.items.load("a") == "t1:a"
    assert await loaders.items.load("a") == "t1:a"
    assert len(svc.catalogue.calls) == 1  # cached within the request
    other = make_loaders(svc, "t1")
    assert await other.items.load("a") == "t1:a"
    assert len(svc.catalogue.calls) == 2  # a new request asks again


async def test_loaders_are_bound_to_their_tenant():
    svc = services({"t1": {"a"}, "t2": {"b"}})
    one, two = make_loaders(svc, "t1"), make_loaders(svc, "t2")
    assert await asyncio.gather(one.items.load("a"), one.items.load("b")) == ["t1:a", None]
    assert await asyncio.gather(two.items.load("a"), two.items.load("b")) == [None, "t2:b"]
    assert [tenant for _, tenant in svc.catalogue.calls] == ["t1", "t2"]


async def test_without_a_tenant_everything_is_none_and_nothing_is_asked():
    svc = services({"t1": {"a"}})
    loaders = make_loaders(svc, None)
    got = await asyncio.gather(loaders.items.load("a"), loaders.scenarios.load("a"), loaders.profiles.load("a"))
    assert got == [None, None, None]
    assert svc.catalogue.calls == svc.scenarios.calls == svc.profiles.calls == []
