"""Keep a serving process's long-lived objects out of the cyclic garbage collector's full scans.

After start-up a serving process holds about 200k container objects (imported modules, the GraphQL schema, Beanie
and Pydantic models) plus its models and item views. Every full collection scans them all: 200-300 ms on a 2-core
machine, a pause that every request in flight waits out. `gc.freeze()` moves what exists into a generation the
collector never scans, so full collections only see what requests allocated since.

`HeapSettler.settle` runs once start-up is done and after models or item views change, never per request; `request`
coalesces a burst of loads into one settle a moment later. A settle that comes `full_every_s` or more after the last
full one unfreezes, collects everything and freezes again, so a swapped-out model that only a reference cycle kept
alive is freed; that costs one full collection (the very pause the freeze avoids), so a settle sooner than that, as a
catalogue that changes every few seconds would ask for, only freezes the new objects.
"""

from __future__ import annotations

import asyncio
import gc
import time

import structlog

log = structlog.get_logger()


class HeapSettler:
    """Freeze the heap after start-up and after each change of what is served, one full collection each time."""

    def __init__(self, *, delay_s: float = 1.0, full_every_s: float = 600.0) -> None:
        self._delay_s = delay_s
        self._full_every_s = full_every_s
        self._last_full: float | None = None
        self._timer: asyncio.TimerHandle | None = None

    def request(self) -> None:
        """Settle the heap `delay_s` from now unless a settle is already due (call from the event loop)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._delay_s, self.settle)

    def settle(self, *, full: bool | None = None) -> None:
        """Freeze the heap; first collect every generation, frozen ones included, when `full` (default: when the last
        full settle is `full_every_s` old)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        started = time.perf_counter()
        if full is None:
            full = self._last_full is None or started - self._last_full >= self._full_every_s
        if full:
            gc.unfreeze()
            gc.collect()
            self._last_full = started
        gc.freeze()
        log.info("heap.settled", full=full, frozen=gc.get_freeze_count(),
                 seconds=round(time.perf_counter() - started, 3))

    def cancel(self) -> None:
        """Drop a pending settle (on shutdown)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
