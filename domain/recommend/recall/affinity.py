"""Affinity: popular items of the categories and tags the user prefers (stated, or learned from the history)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping

import numpy as np

from domain.recommend.base import REGISTRY, Candidates
from domain.recommend.recall.context import RecallContext, top_candidates

TAG_SHARE = 0.5  # tags are noisier than categories, so they count half
PROFILE_ITEMS = 50  # the latest items that make a learned profile


def preferences(ctx: RecallContext) -> tuple[dict[str, float], dict[str, float]]:
    """Return category and tag weights: the request's stated ones, else the recency-weighted history's."""
    request = ctx.request
    if request.category_prefs or request.tag_prefs:
        return dict(request.category_prefs), dict(request.tag_prefs)
    items, weights = ctx.seeds(PROFILE_ITEMS, model_space=False)
    categories: dict[str, float] = defaultdict(float)
    tags: dict[str, float] = defaultdict(float)
    for i, w in zip(items, weights, strict=True):
        for c in ctx.catalogue.categories[i]:
            categories[c] += float(w)
        for t in ctx.catalogue.tags[i]:
            tags[t] += float(w)
    return categories, tags


def _strongest(prefs: Mapping[str, float], count: int) -> list[tuple[str, float]]:
    ranked = sorted(((k, v) for k, v in prefs.items() if v > 0), key=lambda kv: (-kv[1], kv[0]))[:count]
    top = ranked[0][1] if ranked else 1.0
    return [(k, v / top) for k, v in ranked]


@REGISTRY.recall
class AffinitySource:
    """Popular items in the user's strongest categories and tags; an item in several of them scores higher."""

    name = "affinity"
    remote = False

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        count = int(ctx.params.get("topCategories") or 5)
        categories, tags = preferences(ctx)
        scores = np.zeros(len(ctx.catalogue), dtype=np.float32)
        for lists, prefs, share in ((ctx.index.by_category, categories, 1.0), (ctx.index.by_tag, tags, TAG_SHARE)):
            for label, weight in _strongest(prefs, count):
                items = lists.get(label)
                if items is not None and len(items):
                    scores[items] += share * weight * (1.0 - np.arange(len(items)) / len(items))
        scores[ctx.excluded] = 0.0
        return top_candidates(scores, limit)
