"""Non-personal item scores in event time: decayed popularity (shrunk toward the all-time share) and trending."""

from __future__ import annotations

import numpy as np

HOUR = 3600.0
# Recent traffic must add up to about this many (decayed) events before it outweighs the all-time popularity:
# a quiet scenario (a historical import, a small tenant) keeps a stable list instead of one user's last session.
PRIOR_EVENTS = 1000.0
TRENDING_HISTORY_WINDOWS = 7  # the baseline rate is the mean over this many windows before the current one
TRENDING_MIN_EVENTS = 2  # one event in a window is chance, not a trend


def decayed_popularity(items: np.ndarray, times: np.ndarray, counts: np.ndarray, now: float,
                       half_life_hours: float) -> np.ndarray:
    """Return each item's share of recent events (half-life decay) shrunk toward its all-time share `counts`."""
    n = len(counts)
    age = np.maximum(now - times, 0.0) / (half_life_hours * HOUR)
    decayed = np.bincount(items, weights=np.exp2(-age), minlength=n)
    total, prior = decayed.sum(), counts / max(counts.sum(), 1.0)
    return ((decayed + PRIOR_EVENTS * prior) / (total + PRIOR_EVENTS)).astype(np.float32)


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
