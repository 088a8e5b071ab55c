"""Canonical stage names that scenario configs use, and the JSON Schema of each stage's `params`.

Adding a stage is one line in its name tuple (plus a params entry when it takes params); the engine registers its
class under the same name. A stage without a params entry takes no params.
"""

from __future__ import annotations

from typing import Any

RECALL_SOURCES: tuple[str, ...] = (
    "popular",
    "trending",
    "item_cf",
    "user_cf",
    "als",
    "ease",
    "content",
    "vector",
    "fresh",
    "affinity",
    "sasrec",
    "two_tower",
)
FILTERS: tuple[str, ...] = ("seen", "availability", "rules", "blocklist")
RANKERS: tuple[str, ...] = ("fusion", "dcn")
RERANKERS: tuple[str, ...] = ("mmr", "freshness", "category_cap", "pins", "dedupe")

# Sources that need no user history, so they can fill the list for a new user.
FALLBACK_SOURCES: tuple[str, ...] = ("popular", "trending", "fresh")

RECALL_SET = frozenset(RECALL_SOURCES)
FILTER_SET = frozenset(FILTERS)
RANKER_SET = frozenset(RANKERS)
RERANKER_SET = frozenset(RERANKERS)


def prop(type_: str | list[str], description: str, **keywords: Any) -> dict[str, Any]:
    """Return a property schema of `type_` with its description and extra keywords (default, bounds...)."""
    return {"type": type_, "description": description, **keywords}


def params(*, required: tuple[str, ...] = (), **properties: dict[str, Any]) -> dict[str, Any]:
    """Return a closed params object schema (unknown params are typos, so they are refused)."""
    schema: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": properties}
    if required:
        schema["required"] = list(required)
    return schema


def _hours(description: str, default: float | None, maximum: float = 8760) -> dict[str, Any]:
    if default is None:
        return prop(["number", "null"], description, default=None, exclusiveMinimum=0, maximum=maximum)
    return prop("number", description, default=default, exclusiveMinimum=0, maximum=maximum)


def _neighbors(default: int) -> dict[str, Any]:
    return prop("integer", "Nearest neighbours kept per item/user.", default=default, minimum=1, maximum=1000)


def _history_items() -> dict[str, Any]:
    return prop(
        ["integer", "null"], "How many of the user's newest items the source reads; null: 200. Where the whole "
        "history counts (a long `historyHalfLife`) more of it helps. Fitted at training with `models.tune`.",
        default=None, minimum=1, maximum=5000)


def _history_half_life() -> dict[str, Any]:
    return prop(
        ["number", "null"], "How much the user's newest items count more: an item's weight halves every this many "
        "newer items (down to a fifth). Small: the session's last items steer; large: the whole history counts "
        "alike. null: 2. Fitted at training with `models.tune`.", default=None, minimum=0.25, maximum=100000)


RECALL_PARAMS: dict[str, dict[str, Any]] = {
    "popular": params(halfLifeHours=_hours("Popularity decay half-life; null: use popularity.halfLifeHours.", None)),
    "trending": params(windowHours=_hours("Sliding window; null: use popularity.trendingWindowHours.", None, 720)),
    "item_cf": params(
        neighbors=_neighbors(50),
        historyHalfLife=_history_half_life(),
        historyItems=_history_items(),
        seedItems=prop("integer", "How many of the user's recent items seed the lookup.", default=20, minimum=1,
                       maximum=200),
    ),
    "user_cf": params(
        neighbors=_neighbors(50),
        historyHalfLife=_history_half_life(),
        historyItems=_history_items(),
        seedItems=prop("integer", "How many of the user's recent items seed the neighbour search.", default=50,
                       minimum=1, maximum=200),
    ),
    "als": params(
        historyHalfLife=_history_half_life(),
        historyItems=_history_items(),
        factors=prop("integer", "Latent factors.", default=64, minimum=2, maximum=512),
        iterations=prop("integer", "Alternating least-squares sweeps.", default=15, minimum=1, maximum=100),
        regularization=prop("number", "L2 regularisation.", default=0.01, minimum=0, maximum=100),
    ),
    "ease": params(
        historyHalfLife=_history_half_life(),
        historyItems=_history_items(),
        # EASE inverts an items x items matrix, so the vocabulary is capped to the most popular items.
        **{"lambda": prop("number", "L2 regularisation of the item-item matrix.", default=500.0, exclusiveMinimum=0,
                          maximum=1e6)},
        # Training inverts a maxItems x maxItems matrix: beyond ~6,000 it needs GBs and minutes on one node.
        maxItems=prop("integer", "Most popular items kept in the model.", default=6000, minimum=10, maximum=6000),
    ),
    "fresh": params(maxAgeHours=_hours("Only items published within this many hours.", 72.0)),
    # The next-item transformer (SASRec), trained with a full (or, over fullSoftmaxItems, a sampled) softmax.
    "sasrec": params(
        maxLength=prop("integer", "The user's newest items the model reads.", default=50, minimum=2, maximum=200),
        dim=prop("integer", "Embedding width.", default=64, minimum=8, maximum=512, multipleOf=8),
        blocks=prop("integer", "Transformer blocks.", default=2, minimum=1, maximum=8),
        heads=prop("integer", "Attention heads (dim is a multiple of 8, so of each).", default=1, enum=[1, 2, 4, 8]),
        dropout=prop("number", "Dropout rate in training.", default=0.2, minimum=0, maximum=0.9),
        targetSpan=prop("integer", "How many of the following items each position learns to predict (1: the next).",
                        default=8, minimum=1, maximum=50),
        minItemUsers=prop("integer", "Items of fewer users are left out of the model (too rare to learn).",
                          default=3, minimum=1, maximum=1000),
        minUsers=prop("integer", "Fewer users with two items or more: the model is not trained (it would learn "
                      "noise) and the other recall sources serve.", default=200, minimum=1, maximum=10_000_000),
        learningRate=prop("number", "Adam learning rate.", default=0.01, exclusiveMinimum=0, maximum=1),
        batchSize=prop("integer", "Sequences per training step.", default=128, minimum=1, maximum=4096),
        maxEpochs=prop("integer", "Most passes over the data.", default=200, minimum=1, maximum=1000),
        patience=prop("integer", "Epochs without a validation gain before training stops.", default=10, minimum=1,
                      maximum=100),
        timeBudgetSeconds=prop("number", "Wall-clock limit of the training; the best epoch so far is kept.",
                               default=150.0, exclusiveMinimum=0, maximum=7200),
        fullSoftmaxItems=prop("integer", "Largest vocabulary trained with a full softmax; above it, sampled.",
                              default=50000, minimum=1, maximum=10_000_000),
        negatives=prop("integer", "Items drawn per batch for the sampled softmax.", default=2048, minimum=16,
                       maximum=65536),
        eventTypes=prop("boolean", "Read the type of each item's event beside it, where the histories hold more "
                        "than one type.", default=True),
        eventValues=prop("boolean", "Read the bucket of each item's event value (watch seconds, rating) beside it, "
                         "where events have values.", default=False),
        seed=prop("integer", "Seed of the initial weights and of the sampling in training.", default=7, minimum=0,
                  maximum=2**31 - 1),
    ),
    # Two towers (user: newest items and their categories; item: id and features) trained with in-batch negatives.
    "two_tower": params(
        maxLength=prop("integer", "The user's newest items the user tower reads.", default=50, minimum=1,
                       maximum=200),
        dim=prop("integer", "Vector width.", default=64, minimum=8, maximum=512),
        idDropout=prop("number", "Share of item ids hidden in training, so that features alone place an item.",
                       default=0.1, minimum=0, maximum=0.9),
        minItemUsers=prop("integer", "Items of fewer users get no id embedding (their features stand for them).",
                          default=2, minimum=1, maximum=1000),
        targetsPerUser=prop("integer", "Targets drawn per user and epoch.", default=32, minimum=1, maximum=1000),
        learningRate=prop("number", "Adam learning rate.", default=0.01, exclusiveMinimum=0, maximum=1),
        batchSize=prop("integer", "Examples per training step (each one's negatives are the others' targets).",
                       default=256, minimum=2, maximum=8192),
        temperature=prop("number", "Scores are dot products of unit vectors over this.", default=0.05,
                         exclusiveMinimum=0, maximum=10),
        maxEpochs=prop("integer", "Most epochs.", default=100, minimum=1, maximum=1000),
        patience=prop("integer", "Epochs without a validation gain before training stops.", default=5, minimum=1,
                      maximum=100),
        timeBudgetSeconds=prop("number", "Wall-clock limit of the training; the best epoch so far is kept.",
                               default=90.0, exclusiveMinimum=0, maximum=7200),
        seed=prop("integer", "Seed of the initial weights and of the sampling in training.", default=7, minimum=0,
                  maximum=2**31 - 1),
    ),
    "affinity": params(
        topCategories=prop("integer", "The user's strongest categories/tags recalled from.", default=5, minimum=1,
                           maximum=50),
    ),
}

_EXPRESSION = prop("string", "One rule, e.g. `publishedAt within 72h`.", minLength=1, maxLength=500, pattern=r"\S")
_LABELS = {"type": "array", "items": prop("string", "An id or label.", minLength=1), "uniqueItems": True}

FILTER_PARAMS: dict[str, dict[str, Any]] = {
    "rules": params(
        required=("expressions",),
        expressions={"type": "array", "description": "Business rules an item must satisfy (all of them).",
                     "minItems": 1, "items": _EXPRESSION},
    ),
    "blocklist": params(
        itemIds={**_LABELS, "description": "Item ids never recommended.", "default": []},
        categories={**_LABELS, "description": "Categories never recommended.", "default": []},
    ),
}

RANKER_PARAMS: dict[str, dict[str, Any]] = {
    "fusion": params(
        method=prop("string", "weighted: sum of normalised scores x recall weight; rrf: reciprocal-rank fusion.",
                    enum=["weighted", "rrf"], default="weighted"),
        normalize=prop("string", "Per-source score normalisation for weighted fusion.",
                       enum=["minmax", "rank", "max"], default="minmax"),
        rrfK=prop("number", "RRF constant k in 1/(k + rank).", default=60.0, exclusiveMinimum=0, maximum=1000),
    ),
    # DCN-v2 over the fused candidates' features, trained on the validation slice and served lists; served only
    # where it beats fusion on held-out users (else fusion serves, with the fitted weights).
    "dcn": params(
        crossLayers=prop("integer", "Cross layers (each adds one degree of feature crossing).", default=2, minimum=0,
                         maximum=6),
        hidden=prop("integer", "Width of the deep layers.", default=32, minimum=4, maximum=1024),
        deepLayers=prop("integer", "Deep (ReLU) layers beside the cross layers.", default=2, minimum=0, maximum=4),
        dropout=prop("number", "Dropout of the deep layers in training.", default=0.1, minimum=0, maximum=0.9),
        loss=prop("string", "softmax: listwise cross-entropy over each user's candidates; bce: per candidate.",
                  enum=["softmax", "bce"], default="softmax"),
        negatives=prop("integer", "Non-positive candidates of a list drawn per training step.", default=256,
                       minimum=1, maximum=10000),
        learningRate=prop("number", "Adam learning rate.", default=0.001, exclusiveMinimum=0, maximum=1),
        weightDecay=prop("number", "Adam weight decay (L2).", default=1e-5, minimum=0, maximum=1),
        batchLists=prop("integer", "Lists per training step.", default=32, minimum=1, maximum=4096),
        maxEpochs=prop("integer", "Most passes over the lists.", default=200, minimum=1, maximum=1000),
        patience=prop("integer", "Epochs without a gain on the held-out users before training stops.", default=8,
                      minimum=1, maximum=100),
        timeBudgetSeconds=prop("number", "Wall-clock limit of the training; the best epoch so far is kept.",
                               default=45.0, exclusiveMinimum=0, maximum=3600),
        seed=prop("integer", "Seed of the initial weights and of the sampling in training.", default=7, minimum=0,
                  maximum=2**31 - 1),
    ),
}

_PIN = {
    "type": "object",
    "additionalProperties": False,
    "required": ["itemId", "position"],
    "properties": {
        "itemId": prop("string", "The pinned item's id.", minLength=1),
        "position": prop("integer", "1-based slot in the served list (1 = first).", minimum=1, maximum=200),
    },
}

RERANK_PARAMS: dict[str, dict[str, Any]] = {
    "mmr": params(
        **{"lambda": prop("number", "Relevance vs diversity: 1 = relevance only, 0 = diversity only.", default=0.7,
                          minimum=0, maximum=1)},
        by=prop("string", "What makes two items similar.", enum=["category", "embedding"], default="category"),
    ),
    "freshness": params(
        halfLifeHours=_hours("Freshness boost half-life; null: use freshness.halfLifeHours.", None),
        weight=prop("number", "Share of the final score given to freshness.", default=0.2, minimum=0, maximum=1),
    ),
    "category_cap": params(
        maxPerCategory=prop("integer", "Most items of one category in a served page.", default=3, minimum=1,
                            maximum=200),
    ),
    "pins": params(
        pins={"type": "array", "description": "Items placed at fixed positions (merchandising).", "default": [],
              "items": _PIN, "maxItems": 200},
    ),
    "dedupe": params(
        by=prop("string", "Key that makes two items duplicates (syndicated copies share a title).",
                enum=["id", "title"], default="id"),
    ),
}
