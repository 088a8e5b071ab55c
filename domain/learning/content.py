"""Content embeddings: TF-IDF over an item's title words, categories, tags and attributes, reduced by truncated
SVD to a small dense vector (cosine space). The vocabulary, IDF and projection are kept so that items added after
training embed into the same space."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

WORD = re.compile(r"[^\W\d_]{2,}", re.UNICODE)  # letters only: a year or a number in a title relates nothing
MIN_DF = 2  # a token on one item cannot relate two items
MAX_DF = 0.5  # a token on most items tells them apart from nothing
DENSE_SVD_LIMIT = 250_000  # below this many cells an exact dense SVD is cheaper than ARPACK
SEED = 7


@dataclass(frozen=True)
class ContentModel:
    """Item embeddings (L2-normalised rows, zero for items without usable text) and how to embed new items."""

    embeddings: np.ndarray  # float32, items x d
    vocabulary: list[str]
    idf: np.ndarray  # float32, per vocabulary token
    components: np.ndarray  # float32, vocabulary x d

    def __post_init__(self) -> None:
        object.__setattr__(self, "_token_index", {t: i for i, t in enumerate(self.vocabulary)})

    @property
    def dim(self) -> int:
        return self.embeddings.shape[1]

    def embed(self, items: Iterable[Mapping[str, Any]]) -> np.ndarray:
        """Return embeddings for item documents, in this model's space."""
        docs = [document_tokens(i) for i in items]
        tfidf = _tfidf(docs, self._token_index, self.idf)  # type: ignore[attr-defined]
        return _normalise(np.asarray(tfidf @ self.components, dtype=np.float32))


def item_tokens(title: str | None, categories: Sequence[str], tags: Sequence[str], attributes: Mapping[str, Any],
                published: float | None = None) -> list[str]:
    """Return an item's namespaced tokens: title words, categories, tags, short attribute values, year, decade."""
    tokens = [f"w:{w}" for w in WORD.findall((title or "").lower())]
    if published is not None and np.isfinite(published):
        year = datetime.fromtimestamp(published, UTC).year
        tokens += [f"y:{year}", f"d:{year // 10}"]
    tokens += [f"c:{c.lower()}" for c in categories] + [f"t:{t.lower()}" for t in tags]
    for key, value in attributes.items():
        values = value if isinstance(value, (list, tuple)) else [value]
        # Short text values (brand, artist, region) describe an item; numbers (ids, durations, prices) do not.
        tokens += [f"a:{key}={v}".lower() for v in values if isinstance(v, str) and len(v) <= 40]
    return tokens


def document_tokens(item: Mapping[str, Any]) -> list[str]:
    """Return the tokens of an item document (MongoDB shape; published_at a datetime or epoch seconds)."""
    published = item.get("published_at")
    if isinstance(published, datetime):
        published = (published if published.tzinfo else published.replace(tzinfo=UTC)).timestamp()
    return item_tokens(item.get("title"), item.get("categories") or (), item.get("tags") or (),
                       item.get("attributes") or {}, published if isinstance(published, (int, float)) else None)


def train_content(docs: list[list[str]], dim: int) -> ContentModel:
    """Fit TF-IDF and a truncated SVD over the items' tokens."""
    vocabulary, idf = _vocabulary(docs)
    index = {t: i for i, t in enumerate(vocabulary)}
    tfidf = _tfidf(docs, index, idf)
    components = _components(tfidf, dim)
    embeddings = _normalise(np.asarray(tfidf @ components, dtype=np.float32))
    return ContentModel(embeddings=embeddings, vocabulary=vocabulary, idf=idf, components=components)


def _vocabulary(docs: list[list[str]]) -> tuple[list[str], np.ndarray]:
    df: dict[str, int] = {}
    for doc in docs:
        for token in set(doc):
            df[token] = df.get(token, 0) + 1
    n = max(len(docs), 1)
    kept = sorted(t for t, c in df.items() if c >= MIN_DF and c <= MAX_DF * n)
    idf = np.array([np.log((1 + n) / (1 + df[t])) + 1.0 for t in kept], dtype=np.float32)
    return kept, idf


def _tfidf(docs: list[list[str]], index: Mapping[str, int], idf: np.ndarray) -> sp.csr_matrix:
    rows, cols = [], []
    for r, doc in enumerate(docs):
        for token in doc:
            if (c := index.get(token)) is not None:
                rows.append(r)
                cols.append(c)
    counts = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(docs), len(idf)))
    counts.sum_duplicates()
    counts.data = np.log1p(counts.data) * idf[counts.indices]
    norms = np.sqrt(np.asarray(counts.multiply(counts).sum(axis=1)).ravel())
    return sp.diags(1.0 / np.maximum(norms, 1e-12)).astype(np.float32) @ counts


def _components(tfidf: sp.csr_matrix, dim: int) -> np.ndarray:
    n, v = tfidf.shape
    k = min(dim, n - 1, v - 1)
    if k < 1:
        return np.zeros((v, max(min(dim, v), 0)), dtype=np.float32)
    if n * v <= DENSE_SVD_LIMIT:
        _, _, vt = np.linalg.svd(tfidf.toarray(), full_matrices=False)
        return np.ascontiguousarray(vt[:k].T, dtype=np.float32)
    v0 = np.random.default_rng(SEED).standard_normal(min(n, v))
    _, s, vt = svds(tfidf.astype(np.float64), k=k, v0=v0)
    order = np.argsort(-s)  # svds returns ascending singular values
    return np.ascontiguousarray(vt[order].T, dtype=np.float32)


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(norms > 1e-9, x / np.maximum(norms, 1e-9), 0.0).astype(np.float32)
