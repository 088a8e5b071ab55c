"""Recall sources, one class per canonical name, each registered in REGISTRY as kind "recall".

Importing this package registers them all; a new source is one module here and one import line below.
"""

from __future__ import annotations

from domain.recommend.recall import affinity, collaborative, embeddings, popular, sasrec, two_tower
from domain.recommend.recall.context import HISTORY_CAP, Recall, RecallContext, VectorSearch, recency_weights
from domain.recommend.recall.index import CatalogueIndex

__all__ = ["HISTORY_CAP", "CatalogueIndex", "Recall", "RecallContext", "VectorSearch", "affinity",
           "collaborative", "embeddings", "popular", "recency_weights", "sasrec", "two_tower"]
