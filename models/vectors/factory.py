"""Pick the vector store for the topology: a Qdrant server when a URL is set; none when MongoDB and Redis are shared
servers without one (each process searches the models' embeddings in memory); embedded shards otherwise."""

from __future__ import annotations

import tempfile
from pathlib import Path

from models.settings import BreakerSettings, Settings
from models.vectors.edge import EdgeVectorStore
from models.vectors.guarded import guard
from models.vectors.protocol import VectorStore


def searches_in_memory(settings: Settings) -> bool:
    """Return whether processes open no vector store and search the models' item embeddings in memory.

    So it is when MONGODB_URL and REDIS_URL name shared servers and QDRANT_URL names none: several hosts may then
    serve and run jobs over the same data, and an embedded shard cannot be shared between them (it opens in one
    process only), so each host opening its own would silently diverge from the others. The embeddings come from the
    model artifacts in the models directory all of them share, and rank the same.
    """
    return bool(settings.mongo.url and settings.redis.url and not settings.qdrant.url)


def open_vector_store(
    *, url: str | None, api_key: str | None, data_dir: Path | None, breaker: BreakerSettings | None = None
) -> VectorStore:
    """Return a server store for `url`, else an embedded one under `data_dir/qdrant` (or a temporary directory);
    with `breaker` settings, behind a circuit breaker (`models.vectors.guarded`)."""
    store = _open(url=url, api_key=api_key, data_dir=data_dir)
    if breaker is None:
        return store
    return guard(store, failures=breaker.failures, cooldown_s=breaker.cooldown_s,
                 read_timeout_s=breaker.vectors_timeout_s)


def _open(*, url: str | None, api_key: str | None, data_dir: Path | None) -> VectorStore:
    if url:
        # qdrant-client takes 1-2 s to import: only a process that talks to a server loads it.
        from qdrant_client import AsyncQdrantClient

        from models.vectors.server import QdrantServerVectorStore

        return QdrantServerVectorStore(AsyncQdrantClient(url=url, api_key=api_key))
    if data_dir is not None:
        return EdgeVectorStore(Path(data_dir) / "qdrant")
    # In-memory mode still needs a directory for the shards; close() removes it.
    root = Path(tempfile.mkdtemp(prefix="recograph-qdrant-"))
    return EdgeVectorStore(root, remove_on_close=True)
