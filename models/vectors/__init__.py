"""Vector storage behind one Protocol: embedded Qdrant shards, a Qdrant server, and an in-memory fake.

The server store (models.vectors.server) is imported by name where used: qdrant-client takes 1-2 s to import.
"""

from __future__ import annotations

from models.vectors.edge import EdgeVectorStore
from models.vectors.factory import open_vector_store, searches_in_memory
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

__all__ = [
    "DISTANCES",
    "INDEXED_KEYS",
    "EdgeVectorStore",
    "GuardedVectorStore",
    "InMemoryVectorStore",
    "SpaceNotFoundError",
    "VectorHit",
    "VectorPoint",
    "VectorStore",
    "VectorStoreError",
    "VectorStoreUnavailable",
    "open_vector_store",
    "searches_in_memory",
]
