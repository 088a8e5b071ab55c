"""The hot cache's stale window and the background re-reads that keep stores off the request path."""

import asyncio

from domain.hotcache import HotCache, Revalidator


def test_a_value_past_its_ttl_is_served_stale_within_the_window_then_dropped(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr("domain.hotcache.time.monotonic", lambda: clock[0])
    cache: HotCache[str] = HotCache(ttl_s=10, stale_s=50)
    cache.put("k", "v")
    assert cache.lookup("k") == ("v", False) and cache.get("k") == "v"
    clock[0] = 111
    assert cache.lookup("k") == ("v", True)  # stale: answer now, re-read in the background
    assert cache.get("k") is None  # plain reads never see a stale value
    clock[0] = 161
    assert cache.lookup("k") == (None, True)  # past the window: gone
    assert cache.lookup("k") == (None, True)


async def test_revalidator_reads_each_key_once_at_a_time_and_survives_failures():
    calls: list[list[str]] = []
    gate = asyncio.Event()

    async def reread(keys: list[str]) -> None:
        calls.append(keys)
        await gate.wait()
        if keys == ["bad"]:
            raise RuntimeError("store down")

    revalidator = Revalidator(reread, name="test")
    revalidator.schedule(["a", "b", "a"])
    revalidator.schedule(["b", "c"])  # b is in flight already
    revalidator.schedule(["bad"])
    await asyncio.sleep(0)
    assert calls == [["a", "b"], ["c"], ["bad"]]
    gate.set()
    await revalidator.drain()
    revalidator.schedule(["a", "bad"])  # done (or failed) keys may be read again
    await revalidator.drain()
    assert calls[-1] == ["a", "bad"]


def test_without_a_stale_window_expiry_is_immediate(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr("domain.hotcache.time.monotonic", lambda: clock[0])
    cache: HotCache[int] = HotCache(ttl_s=1)
    cache.put("k", 1)
    clock[0] = 1.5
    assert cache.lookup("k") == (None, True)
