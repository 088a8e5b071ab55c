"""Vector storage behind one Protocol: embedded Qdrant shards, a Qdrant server, and an in-memory fake."""

from __future__ import annotations

from models.vectors.edge import EdgeVectorStore
from models.vectors.factory import open_vector_store
from models.vectors.fake import InMemoryVectorStore
from models.vectors.guarded import GuardedVectorStore, VectorStoreUnavailable
from models.vectors.protocol import (
    DISTANCES,
    INDEXED_KEYS,
    SpaceNotFoundError,
    VectorHit,
    VectorPoint,
    VectorStore,
    VectorStoreError,
)
from models.vectors.server import QdrantServerVectorStore

__all__ = [
    "DISTANCES",
    "INDEXED_KEYS",
    "EdgeVectorStore",
    "GuardedVectorStore",
    "InMemoryVectorStore",
    "QdrantServerVectorStore",
    "SpaceNotFoundError",
    "VectorHit",
    "VectorPoint",
    "VectorStore",
    "VectorStoreError",
    "VectorStoreUnavailable",
    "open_vector_store",
]
