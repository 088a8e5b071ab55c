"""Key windows: the bounds proposed for a page, and the samples behind them."""

from __future__ import annotations

import asyncio

from domain.windows import KeyWindows, sample_keys


def test_sample_keeps_every_nth_sorted_key():
    keys = [f"k{n:03d}" for n in reversed(range(10))]
    assert sample_keys(keys, max_sample=100).keys == sorted(keys)
    sample = sample_keys(keys, max_sample=3)
    assert sample.stride == 4 and sample.keys == ["k000", "k004", "k008"]


async def test_bounds_widen_and_end_unbounded():
    reads = []

    async def load(listing):
        reads.append(listing)
        return [f"k{n:03d}" for n in range(100)]

    windows = KeyWindows(load, refresh_s=60)
    first = await asyncio.gather(*(windows.bounds("a", after=None, need=5) for _ in range(3)))
    assert first == [["k004", "k019", "k079", None]] * 3
    assert reads == ["a"]  # the first callers share one read
    assert await windows.bounds("a", after="k010", need=5) == ["k015", "k030", "k090", None]
    assert await windows.bounds("a", after="k010x", need=5) == ["k015", "k030", "k090", None]
    assert await windows.bounds("a", after="k097", need=5) == [None]
    await windows.drain()
    assert reads == ["a"]  # a fresh sample is not read again


async def test_a_strided_sample_scales_the_span():
    async def load(listing):
        return [f"k{n:04d}" for n in range(1000)]

    windows = KeyWindows(load, max_sample=100)
    # stride 10: 21 keys need 3 sample points, then 12, then 48
    assert await windows.bounds("a", after=None, need=21) == ["k0020", "k0110", "k0470", None]


async def test_a_stale_sample_is_used_while_it_is_read_again():
    version = {"n": 0}

    async def load(listing):
        version["n"] += 1
        return [f"v{version['n']}-{n:02d}" for n in range(50)]

    windows = KeyWindows(load, refresh_s=0.0)
    assert (await windows.bounds("a", after=None, need=10))[0] == "v1-09"
    assert (await windows.bounds("a", after=None, need=10))[0] == "v1-09"  # stale: used, and re-read
    await windows.drain()
    assert (await windows.bounds("a", after=None, need=10))[0] == "v2-09"


async def test_a_failed_first_read_leaves_pages_unbounded():
    calls = []

    async def load(listing):
        calls.append(listing)
        if len(calls) == 1:
            raise ConnectionError("store away")
        return ["a", "b", "c"]

    windows = KeyWindows(load)
    assert await windows.bounds("x", after=None, need=1) == [None]
    assert await windows.bounds("x", after=None, need=1) == ["a", None]
