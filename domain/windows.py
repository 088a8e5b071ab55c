"""Key windows: page a sorted listing on a server that sorts before it limits.

The embedded MongoDB server answers `find(...).sort(k).limit(n)` by fetching and sorting every matching document:
a page of a 10k-item catalogue costs it about 250 ms. A bounded range of the same index (`k > a and k <= b`) costs
it about 1 ms. `KeyWindows` keeps a sorted sample of each listing's keys in memory and proposes upper bounds that
should hold a page; the query stays the record of truth, so the sample only has to be roughly right:

- a window that holds enough matching documents holds the first ones after the cursor, in order, whatever changed
  since the sample was read (keys added inside it are in it; keys removed from it are simply not found);
- a window that holds too few (deletions, a sparse filter) is widened four times over, and the last try has no upper
  bound, so keys added past the end of the sample are never missed.

A listing's first page waits for its sample (one read of its keys, shared by the requests that arrive meanwhile:
about what one unbounded page costs); after that, samples are re-read in the background once they are older than
`refresh_s`, and a listing never waits for one.
"""

from __future__ import annotations

import asyncio
import math
from bisect import bisect_right
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

from domain.hotcache import HotCache, Revalidator

WIDEN = 4  # how much each further window grows
MAX_SAMPLE = 50_000  # keys kept per listing; larger listings keep every n-th key


@dataclass(frozen=True, slots=True)
class KeySample:
    keys: list[str]  # sorted; every `stride`-th key of the listing
    stride: int


def sample_keys(keys: list[str], *, max_sample: int = MAX_SAMPLE) -> KeySample:
    """Sort the keys and keep at most `max_sample` of them, evenly spaced."""
    keys = sorted(keys)
    stride = max(1, math.ceil(len(keys) / max_sample))
    return KeySample(keys=keys[::stride], stride=stride)


class KeyWindows:
    """Upper bounds for paging listings, from samples that `load(listing)` reads (all of a listing's keys)."""

    def __init__(
        self, load: Callable[[Hashable], Awaitable[list[str]]], *, refresh_s: float = 600.0, listings: int = 1_000,
        max_sample: int = MAX_SAMPLE,
    ) -> None:
        self._load = load
        self._max_sample = max_sample
        # An old sample still gives good windows: keep using it while a new one is read.
        self._samples: HotCache[KeySample] = HotCache(size=listings, ttl_s=refresh_s, stale_s=30 * 24 * 3600.0)
        self._reread = Revalidator(self._read, name="key-windows")
        self._first: dict[Hashable, asyncio.Future[None]] = {}

    async def bounds(self, listing: Hashable, *, after: str | None, need: int) -> list[str | None]:
        """Return the upper bounds (inclusive) to try in turn for `need` keys after `after`; the last is None (no
        bound). The first call for a listing reads its sample; if that fails, None is the only bound."""
        sample, stale = self._samples.lookup(listing)
        if sample is None:
            sample = await self._first_read(listing)
        elif stale:
            self._reread.schedule([listing])
        if sample is None:
            return [None]
        keys = sample.keys
        start = bisect_right(keys, after) if after is not None else 0
        span = max(1, math.ceil(need / sample.stride))
        out: list[str | None] = []
        while start + span <= len(keys):
            out.append(keys[start + span - 1])
            span *= WIDEN
        out.append(None)
        return out

    async def _first_read(self, listing: Hashable) -> KeySample | None:
        """Read a listing's sample once for every caller waiting on it; None when the read failed."""
        pending = self._first.get(listing)
        if pending is None:
            pending = self._first[listing] = asyncio.ensure_future(self._read([listing]))
            pending.add_done_callback(lambda _: self._first.pop(listing, None))
        try:
            await asyncio.shield(pending)
        except Exception:  # noqa: BLE001 - the page is still right without a sample, only slower
            return None
        return self._samples.lookup(listing)[0]

    async def _read(self, listings: list[Hashable]) -> None:
        for listing in listings:
            self._samples.put(listing, sample_keys(await self._load(listing), max_sample=self._max_sample))

    async def drain(self) -> None:
        """Wait for the sample reads in flight (tests)."""
        await self._reread.drain()
