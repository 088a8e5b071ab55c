"""Bounds on free-form JSON a client sends as request or event `context`.

A context is stored with each event, hashed into the cache key of each answer and read by rules, so an unbounded
one costs memory, storage and CPU on every request that carries it. A context must be a JSON object of at most
MAX_CONTEXT_DEPTH levels of nesting (the object itself is level 1), MAX_CONTEXT_ENTRIES entries in all (object
keys and array elements, counted at every level) and MAX_CONTEXT_BYTES bytes as compact JSON.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

MAX_CONTEXT_DEPTH = 4
MAX_CONTEXT_ENTRIES = 64
MAX_CONTEXT_BYTES = 4 * 1024

_JSON = msgspec.json.Encoder(enc_hook=str)


def context_problem(value: Any) -> str | None:
    """Return what is wrong with a context (None when it is a JSON object within the bounds)."""
    if not isinstance(value, Mapping):
        return "context must be a JSON object"
    # The walk stops at the first bound passed, so a huge context costs no more than a small one to refuse.
    entries = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        children = node.values() if isinstance(node, Mapping) else node
        if depth > MAX_CONTEXT_DEPTH:
            return f"context nests at most {MAX_CONTEXT_DEPTH} levels of objects and arrays"
        for child in children:
            entries += 1
            if entries > MAX_CONTEXT_ENTRIES:
                return f"context holds at most {MAX_CONTEXT_ENTRIES} keys and array elements in all"
            if isinstance(child, (Mapping, list, tuple)):
                stack.append((child, depth + 1))
    if len(_JSON.encode(value)) > MAX_CONTEXT_BYTES:
        return f"context must be at most {MAX_CONTEXT_BYTES} bytes as JSON"
    return None
