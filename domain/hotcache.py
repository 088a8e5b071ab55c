"""A small in-process LRU with expiry, for objects read on every request (items shown in lists)."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable
from typing import Generic, TypeVar

V = TypeVar("V")


class HotCache(Generic[V]):
    """Keep up to `size` values for `ttl_s` seconds; other API pods see changes within ttl_s."""

    def __init__(self, *, size: int = 50_000, ttl_s: float = 30.0) -> None:
        self._data: OrderedDict[Hashable, tuple[float, V]] = OrderedDict()
        self._size = size
        self._ttl = ttl_s

    def get(self, key: Hashable) -> V | None:
        """Return a live value or None."""
        entry = self._data.get(key)
        if entry is None:
            return None
        if entry[0] < time.monotonic():
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return entry[1]

    def put(self, key: Hashable, value: V) -> None:
        """Store a value, evicting the least recently used beyond the size."""
        self._data[key] = (time.monotonic() + self._ttl, value)
        self._data.move_to_end(key)
        while len(self._data) > self._size:
            self._data.popitem(last=False)

    def drop_where(self, predicate: Callable[[Hashable], bool]) -> None:
        """Forget every key the predicate accepts."""
        for key in [k for k in self._data if predicate(k)]:
            del self._data[key]

    def drop(self, keys: Iterable[Hashable]) -> None:
        """Forget keys (after a local write)."""
        for key in keys:
            self._data.pop(key, None)
