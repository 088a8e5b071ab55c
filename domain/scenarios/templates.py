"""Starting configs per product kind: each is complete (every setting spelled out) and valid.

`createScenario(input: {template, config})` merges `config` over one of these (see config.build_config).
Recall weights are relative to each other within one scenario.
"""

from __future__ import annotations

from typing import Any

# Weighted fusion of min-max normalised source scores: the evaluated default for every template.
FUSION = {"name": "fusion", "params": {"method": "weighted", "normalize": "minmax", "rrfK": 60.0}}


def _weights(**weights: float) -> dict[str, float]:
    """Return interaction weights for every InteractionType, 0 for the ones not named."""
    kinds = ("VIEW", "CLICK", "LIKE", "SHARE", "COMMENT", "PURCHASE", "ADD_TO_CART", "RATING", "WATCH", "SKIP",
             "DISLIKE")
    return {kind: float(weights.get(kind, 0.0)) for kind in kinds}


def _limits() -> dict[str, int]:
    return {"recallTimeoutMs": 50, "maxCandidates": 1000}


# SASRec, the next-item transformer (domain/learning/sasrec.py), where what a user did last says what comes next.
# Settings chosen on ml-latest-small without its test part; below `minUsers` it is not trained and the other sources
# serve. Its weight, like every weight here, is a starting point: training fits the blend (`models.tune`).
def _sasrec(weight: float) -> dict[str, Any]:
    return {"source": "sasrec", "weight": weight, "limit": 200, "params": {
        "maxLength": 50, "dim": 64, "blocks": 2, "heads": 1, "dropout": 0.2, "targetSpan": 8, "minItemUsers": 3,
        "minUsers": 200, "learningRate": 0.01, "batchSize": 128, "maxEpochs": 200, "patience": 10,
        "timeBudgetSeconds": 150.0, "fullSoftmaxItems": 50000, "negatives": 2048, "seed": 7,
        "eventTypes": True, "eventValues": False}}


# Short video: the signal is how much of a clip was watched, and a skip is a strong "no".
VLOG: dict[str, Any] = {
    "features": {
        "item": ["durationSeconds", "creatorId", "categories", "tags", "publishedAt"],
        "user": ["watchTimeSeconds", "completionRate", "topCategories"],
        "context": ["device", "hourOfDay", "network"],
    },
    "recall": [
        # Co-watch structure around the clips just watched carries the session's intent best: EASE over the
        # 3k most watched clips (its exact item-item solve stays a few seconds), co-watch neighbours for the rest.
        {"source": "ease", "weight": 3.0, "limit": 300,
         "params": {"lambda": 300.0, "maxItems": 3000, "historyHalfLife": None,
                    "historyItems": None}},
        # The order of the clips just watched: what a feed shows next.
        _sasrec(3.0),
        {"source": "item_cf", "weight": 1.0, "limit": 200,
         "params": {"neighbors": 50, "seedItems": 20, "historyHalfLife": None,
                    "historyItems": None}},
        # Embeddings reach clips with few views that CF cannot see yet.
        {"source": "vector", "weight": 0.5, "limit": 200, "params": {}},
        {"source": "content", "weight": 0.5, "limit": 150, "params": {}},
        {"source": "trending", "weight": 1.5, "limit": 150, "params": {"windowHours": None}},
        # A little exploration so new uploads get first views.
        {"source": "fresh", "weight": 0.5, "limit": 100, "params": {"maxAgeHours": 48.0}},
    ],
    "filters": [{"name": "seen", "params": {}}, {"name": "availability", "params": {}}],
    "ranker": FUSION,
    "rerank": [
        # A feed of one category tires fast; MMR mixes categories while keeping relevance first. At 0.85 on
        # ml-latest-small it costs no NDCG@10 on either split and keeps about half the category mix of 0.7, which
        # cost 1.4% (random split) and 0.8% (temporal).
        {"name": "mmr", "params": {"lambda": 0.85, "by": "category"}},
        {"name": "dedupe", "params": {"by": "id"}},
    ],
    "freshness": {"halfLifeHours": 72.0},
    "popularity": {"halfLifeHours": 48.0, "trendingWindowHours": 12.0},
    # Rewatching a favourite after a month is fine; within a month it is a wasted slot.
    "seen": {"exclude": True, "windowHours": 720.0, "types": ["VIEW", "WATCH", "LIKE", "SHARE", "COMMENT", "SKIP",
                                                                "DISLIKE"], "excludeServedHours": 6.0},
    "fallback": {"sources": ["trending", "popular"], "minItems": 20},
    # Watch time is the truest signal of a clip's value; a skip is a clear negative.
    "interactionWeights": _weights(VIEW=0.5, CLICK=1, LIKE=4, SHARE=6, COMMENT=4, RATING=2, WATCH=5, SKIP=-3,
                                   DISLIKE=-6),
    "retention": {"interactionsDays": 180},
    "limits": _limits(),
    "models": {"promotionMargin": 0.0, "tune": True, "validation": "temporal", "tuningBudgetSeconds": 90.0},
}

# News: value decays within hours, readers expect their region and language, and wire copies repeat.
NEWS: dict[str, Any] = {
    "features": {
        "item": ["categories", "tags", "publisher", "region", "language", "publishedAt"],
        "user": ["topCategories", "region", "language"],
        "context": ["region", "language", "device", "hourOfDay"],
    },
    "recall": [
        {"source": "fresh", "weight": 3.0, "limit": 300, "params": {"maxAgeHours": 48.0}},
        {"source": "content", "weight": 2.5, "limit": 200, "params": {}},
        {"source": "trending", "weight": 2.0, "limit": 200, "params": {"windowHours": None}},
        {"source": "affinity", "weight": 1.5, "limit": 150, "params": {"topCategories": 5}},
        # Co-reading ("readers of this also read") is the classic news signal while a story is live.
        {"source": "item_cf", "weight": 2.0, "limit": 100,
         "params": {"neighbors": 30, "seedItems": 10, "historyHalfLife": None,
                    "historyItems": None}},
        {"source": "popular", "weight": 0.5, "limit": 100, "params": {"halfLifeHours": None}},
    ],
    "filters": [
        {"name": "seen", "params": {}},
        {"name": "availability", "params": {}},
        {"name": "rules", "params": {"expressions": ["publishedAt within 72h"]}},
    ],
    "ranker": FUSION,
    "rerank": [
        {"name": "freshness", "params": {"halfLifeHours": None, "weight": 0.3}},
        # A front page needs breadth: at most three stories per section.
        {"name": "category_cap", "params": {"maxPerCategory": 3}},
        {"name": "dedupe", "params": {"by": "title"}},
    ],
    "freshness": {"halfLifeHours": 6.0},
    "popularity": {"halfLifeHours": 12.0, "trendingWindowHours": 3.0},
    # Older articles are filtered by the rule anyway, so the seen window need not be longer.
    "seen": {"exclude": True, "windowHours": 72.0, "types": ["VIEW", "CLICK", "LIKE", "SHARE", "COMMENT",
                                                               "DISLIKE"], "excludeServedHours": 12.0},
    "fallback": {"sources": ["trending", "fresh", "popular"], "minItems": 20},
    "interactionWeights": _weights(VIEW=1, CLICK=2, LIKE=3, SHARE=5, COMMENT=4, RATING=2, WATCH=2, SKIP=-1,
                                   DISLIKE=-4),
    "retention": {"interactionsDays": 90},
    "limits": _limits(),
    "models": {"promotionMargin": 0.0, "tune": True, "validation": "temporal", "tuningBudgetSeconds": 90.0},
}

# E-commerce: buying is the goal, stock changes, and merchandisers pin and balance the shelf.
ECOMMERCE: dict[str, Any] = {
    "features": {
        "item": ["price", "brand", "categories", "rating", "inStock"],
        "user": ["priceBand", "topBrands", "topCategories", "purchaseCount"],
        "context": ["device", "country", "pageType"],
    },
    "recall": [
        # EASE is strong on sparse basket data; capped to the 4k best sellers (an exact solve of that size takes
        # seconds, the long tail is reached through co-purchase neighbours).
        {"source": "ease", "weight": 3.0, "limit": 300,
         "params": {"lambda": 300.0, "maxItems": 4000, "historyHalfLife": None,
                    "historyItems": None}},
        {"source": "item_cf", "weight": 1.5, "limit": 300,
         "params": {"neighbors": 100, "seedItems": 20, "historyHalfLife": None,
                    "historyItems": None}},
        {"source": "als", "weight": 1.0, "limit": 200,
         "params": {"factors": 128, "iterations": 20, "regularization": 0.05, "historyHalfLife": None,
                    "historyItems": None}},
        # Browsing sessions have an order (a phone, then its case): the next product after the last ones viewed.
        _sasrec(3.0),
        {"source": "popular", "weight": 0.5, "limit": 100, "params": {"halfLifeHours": None}},
        {"source": "trending", "weight": 0.5, "limit": 100, "params": {"windowHours": None}},
    ],
    "filters": [
        {"name": "seen", "params": {}},
        # Out-of-stock or delisted products must never be shown.
        {"name": "availability", "params": {}},
        {"name": "blocklist", "params": {"itemIds": [], "categories": []}},
    ],
    "ranker": FUSION,
    "rerank": [
        {"name": "category_cap", "params": {"maxPerCategory": 4}},
        # Merchandisers add pins with updateScenario; empty until then.
        {"name": "pins", "params": {"pins": []}},
        {"name": "dedupe", "params": {"by": "id"}},
    ],
    "freshness": {"halfLifeHours": 720.0},
    "popularity": {"halfLifeHours": 168.0, "trendingWindowHours": 24.0},
    # Viewed products may come back (they convert); bought or disliked ones should not, for a month.
    "seen": {"exclude": True, "windowHours": 720.0, "types": ["PURCHASE", "DISLIKE"], "excludeServedHours": 0.0},
    "fallback": {"sources": ["popular", "trending"], "minItems": 10},
    "interactionWeights": _weights(VIEW=1, CLICK=1.5, LIKE=3, SHARE=3, COMMENT=2, PURCHASE=10, ADD_TO_CART=6,
                                   RATING=2, WATCH=0.5, SKIP=-1, DISLIKE=-4),
    # Two years keeps yearly seasonality (last December) in the training data.
    "retention": {"interactionsDays": 730},
    "limits": _limits(),
    "models": {"promotionMargin": 0.0, "tune": True, "validation": "temporal", "tuningBudgetSeconds": 90.0},
}

# Music: listening is repetitive by nature and sessions flow by artist and genre.
MUSIC: dict[str, Any] = {
    "features": {
        "item": ["artist", "genre", "album", "durationSeconds", "tempo", "releaseYear"],
        "user": ["topArtists", "topGenres", "listenTimeSeconds"],
        "context": ["device", "hourOfDay", "activity"],
    },
    "recall": [
        # Next-track neighbours of the last few plays keep the session's flow.
        {"source": "item_cf", "weight": 3.0, "limit": 300,
         "params": {"neighbors": 50, "seedItems": 10, "historyHalfLife": None,
                    "historyItems": None}},
        # A listening session is a sequence: the next track after the last plays.
        _sasrec(5.0),
        {"source": "als", "weight": 2.5, "limit": 300,
         "params": {"factors": 96, "iterations": 15, "regularization": 0.01, "historyHalfLife": None,
                    "historyItems": None}},
        {"source": "affinity", "weight": 2.0, "limit": 200, "params": {"topCategories": 8}},
        {"source": "popular", "weight": 0.5, "limit": 100, "params": {"halfLifeHours": None}},
        {"source": "fresh", "weight": 0.5, "limit": 100, "params": {"maxAgeHours": 336.0}},
    ],
    "filters": [{"name": "seen", "params": {}}, {"name": "availability", "params": {}}],
    "ranker": FUSION,
    "rerank": [
        # Light diversity only: listeners want a coherent mood, not a genre sampler.
        {"name": "mmr", "params": {"lambda": 0.85, "by": "category"}},
        # The same song appears on singles, albums and compilations under one title.
        {"name": "dedupe", "params": {"by": "title"}},
    ],
    "freshness": {"halfLifeHours": 336.0},
    "popularity": {"halfLifeHours": 168.0, "trendingWindowHours": 48.0},
    # Repeat-friendly: only tracks played or skipped in the last two hours are held back.
    "seen": {"exclude": True, "windowHours": 2.0, "types": ["WATCH", "SKIP", "DISLIKE"], "excludeServedHours": 1.0},
    "fallback": {"sources": ["popular", "trending"], "minItems": 20},
    # WATCH is seconds listened; a skip early in a track is the clearest negative in music.
    "interactionWeights": _weights(VIEW=0.5, CLICK=1, LIKE=5, SHARE=4, COMMENT=2, PURCHASE=6, ADD_TO_CART=3,
                                   RATING=2, WATCH=3, SKIP=-2, DISLIKE=-6),
    "retention": {"interactionsDays": 365},
    "limits": _limits(),
    "models": {"promotionMargin": 0.0, "tune": True, "validation": "temporal", "tuningBudgetSeconds": 90.0},
}

# Custom: the smallest useful pipeline (what is popular, what goes with what the user just did, what is new), to
# build on with overrides.
CUSTOM: dict[str, Any] = {
    "features": {"item": [], "user": [], "context": []},
    "recall": [
        {"source": "popular", "weight": 1.0, "limit": 200, "params": {"halfLifeHours": None}},
        {"source": "item_cf", "weight": 1.0, "limit": 200,
         "params": {"neighbors": 50, "seedItems": 20, "historyHalfLife": None,
                    "historyItems": None}},
        {"source": "fresh", "weight": 0.5, "limit": 100, "params": {"maxAgeHours": 72.0}},
    ],
    "filters": [{"name": "seen", "params": {}}, {"name": "availability", "params": {}}],
    "ranker": FUSION,
    "rerank": [],
    "freshness": {"halfLifeHours": 48.0},
    "popularity": {"halfLifeHours": 72.0, "trendingWindowHours": 24.0},
    "seen": {"exclude": True, "windowHours": None, "types": ["VIEW", "CLICK", "LIKE", "SHARE", "COMMENT", "PURCHASE",
                                                               "ADD_TO_CART", "RATING", "WATCH", "SKIP", "DISLIKE"],
             "excludeServedHours": 0.0},
    "fallback": {"sources": ["popular"], "minItems": 10},
    "interactionWeights": _weights(VIEW=1, CLICK=2, LIKE=4, SHARE=5, COMMENT=4, PURCHASE=8, ADD_TO_CART=4,
                                   RATING=3, WATCH=3, SKIP=-1, DISLIKE=-4),
    "retention": {"interactionsDays": None},
    "limits": _limits(),
    "models": {"promotionMargin": 0.0, "tune": True, "validation": "temporal", "tuningBudgetSeconds": 90.0},
}

TEMPLATES: dict[str, dict[str, Any]] = {
    "VLOG": VLOG,
    "NEWS": NEWS,
    "ECOMMERCE": ECOMMERCE,
    "MUSIC": MUSIC,
    "CUSTOM": CUSTOM,
}
