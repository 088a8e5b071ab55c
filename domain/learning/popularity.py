"""Non-personal item scores in event time: decayed popularity (shrunk toward the all-time share) and trending."""

from __future__ import annotations

import numpy as np

HOUR = 3600.0
# Recency is trusted in two steps, each with a prior: an item's recent events are compared with what its all-time
# share predicts (ITEM_PRIOR pseudo-events damp one item's noise), and the comparison counts in proportion to how much
# recent traffic the scenario has at all (SCENARIO_PRIOR decayed events to count half). A quiet scenario (a
# historical import, a small tenant) keeps its all-time ranking instead of following one user's last session; a busy
# one follows its recent shares.
ITEM_PRIOR = 20.0
SCENARIO_PRIOR = 1000.0
TRENDING_HISTORY_WINDOWS = 7  # the baseline rate is the mean over this many windows before the current one
TRENDING_MIN_EVENTS = 2  # one event in a window is chance, not a trend


def decayed_popularity(items: np.ndarray, times: np.ndarray, counts: np.ndarray, now: float,
                       half_life_hours: float) -> np.ndarray:
    """Return each item's all-time share scaled by its shrunk recent lift (decayed events over predicted ones)."""
    # With plenty of recent events this is the item's recent share; with few, its all-time share.
    n = len(counts)
    age = np.maximum(now - times, 0.0) / (half_life_hours * HOUR)
    decayed = np.bincount(items, weights=np.exp2(-age), minlength=n)
    total = float(decayed.sum())
    share = counts / max(float(counts.sum()), 1.0)
    lift = (decayed + ITEM_PRIOR) / (share * total + ITEM_PRIOR)
    trust = total / (total + SCENARIO_PRIOR)
    return (share * (1.0 + trust * (lift - 1.0))).astype(np.float32)


def trending_scores(items: np.ndarray, times: np.ndarray, n_items: int, now: float,
                    window_hours: float) -> np.ndarray:
    """Return each item's rise in the last window over its recent baseline (a z-score; 0 when not rising)."""
    window = window_hours * HOUR
    age = now - times
    current = np.bincount(items[age <= window], minlength=n_items).astype(np.float64)
    before = (age > window) & (age <= window * (1 + TRENDING_HISTORY_WINDOWS))
    baseline = np.bincount(items[before], minlength=n_items) / TRENDING_HISTORY_WINDOWS
    z = (current - baseline) / np.sqrt(baseline + 1.0)
    rising = (current >= TRENDING_MIN_EVENTS) & (z > 0)
    return np.where(rising, z, 0.0).astype(np.float32)
