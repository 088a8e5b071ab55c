"""Which variant a user gets: a salted hash of (layer salt, layer, user) picks one of BUCKETS buckets of the layer.

An experiment holds the buckets [offset, offset + trafficPercent) of its layer (in hundredths of a percent), so
experiments of one layer whose ranges do not overlap never share a user. Within its range, a user's position picks
a variant by the cumulative weights. The hash is xxHash64 (a kept library, stable across processes and versions,
unlike Python's `hash()`), and the layer's salt is a keyed hash of the tenant's secret key and the layer's name, so
two tenants, or two layers, split the same user ids independently and nobody outside can predict the split.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from hashlib import sha256

import xxhash

BUCKETS = 10_000  # one bucket is 0.01% of a layer's users
INTERLEAVED = "interleaved"  # RecommendationList.variant under INTERLEAVE


def layer_salt(tenant_key: str | bytes, layer: str) -> str:
    """Return the salt of a tenant's layer: a keyed hash, so the split cannot be predicted from user ids."""
    key = tenant_key.encode() if isinstance(tenant_key, str) else bytes(tenant_key)
    return hmac.new(key, f"layer:{layer}".encode(), sha256).hexdigest()[:32]


def bucket(salt: str, layer: str, user_id: str) -> int:
    """Return the user's bucket in the layer, 0 <= bucket < BUCKETS."""
    return xxhash.xxh3_64_intdigest(f"{salt}\x1f{layer}\x1f{user_id}".encode()) % BUCKETS


def span(traffic_offset: float, traffic_percent: float) -> tuple[int, int]:
    """Return the buckets [start, end) that an experiment's traffic covers."""
    start = round(traffic_offset * BUCKETS / 100)
    return start, min(BUCKETS, start + round(traffic_percent * BUCKETS / 100))


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Return whether two bucket ranges share a bucket."""
    return a[0] < b[1] and b[0] < a[1] and a[0] < a[1] and b[0] < b[1]


def pick(weights: Sequence[float], position: float) -> int:
    """Return the index whose cumulative share of the weights covers position (0 <= position < 1)."""
    total = float(sum(weights))
    target, acc = position * total, 0.0
    for i, w in enumerate(weights):
        acc += w
        if target < acc:
            return i
    return len(weights) - 1


def variant_index(
    salt: str, layer: str, user_id: str, *, traffic: tuple[int, int], weights: Sequence[float]
) -> int | None:
    """Return the index of the variant a user gets, or None when the user is outside the experiment's traffic."""
    b = bucket(salt, layer, user_id)
    start, end = traffic
    if not start <= b < end:
        return None
    # A second, independent hash places the user among the variants: the layer's buckets stay whole for traffic
    # ranges, and weights finer than a bucket still split evenly.
    position = xxhash.xxh3_64_intdigest(f"{salt}\x1fvariant\x1f{layer}\x1f{user_id}".encode()) / 2**64
    return pick(weights, position)
