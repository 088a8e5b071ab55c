"""Embedding sources over the content space: `content` (look-alikes of the latest items) and `vector` (items near
the user's recency-weighted profile vector). Both ask the vector store when there is one, else search the engine's
copy of the embeddings exhaustively; an exact store gives the same ranking either way.

Similarity alone favours obscure look-alikes, so each source searches SEARCH_DEPTH times its limit and ranks
those by similarity x log2(2 + users of the item): an item nobody has used yet keeps weight 1 (new items still
surface), a widely used one counts up to several times more.
"""

from __future__ import annotations

import asyncio

import numpy as np

from domain.recommend.base import REGISTRY, Candidates
from domain.recommend.recall.context import RecallContext, best_positions, top_candidates, top_of

CONTENT_SEEDS = 3  # the latest items whose look-alikes are recalled
SEARCH_DEPTH = 2  # nearest items read per limit, before the popularity prior reorders them
OVERFETCH = 2  # a store search asks for this many times more, as older excluded items are removed afterwards


async def nearest(ctx: RecallContext, vectors: np.ndarray, limit: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return, per query vector, (catalogue indexes, cosine scores) of the nearest allowed items, best first."""
    if ctx.vectors is None or not ctx.content_space:
        return _exhaustive(ctx, vectors, limit)
    found = await asyncio.gather(*(search_space(ctx, ctx.content_space, v, limit) for v in vectors))
    return list(found)


async def search_space(ctx: RecallContext, space: str, vector: np.ndarray,
                       limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Return (catalogue indexes, store scores) of the nearest allowed items in a space of the vector store."""
    # The store skips the recent history; other exclusions (usually older history) are removed here, so ask for
    # more than needed. An exact store then gives the same ranking as the in-memory search.
    hits = await ctx.vectors.search(space, vector.tolist(), limit=limit * OVERFETCH,  # type: ignore[union-attr]
                                    exclude_ids=ctx.recent_ids)
    index = ctx.catalogue.index
    pairs = [(index[i], s) for i, s in hits if i in index]
    idx = np.array([p[0] for p in pairs], dtype=np.int64)
    scores = np.array([p[1] for p in pairs], dtype=np.float32)
    keep = ~ctx.blocked[idx] if len(idx) else np.ones(0, dtype=bool)
    return idx[keep][:limit], scores[keep][:limit]


def _exhaustive(ctx: RecallContext, vectors: np.ndarray, limit: int) -> list[tuple[np.ndarray, np.ndarray]]:
    embeddings = ctx.index.embeddings
    assert embeddings is not None
    scores = vectors.astype(np.float32) @ np.asarray(embeddings).T  # queries x items: rows stay contiguous
    blocked = ctx.blocked_idx
    scores[:, blocked] = -np.inf
    limit = min(limit, scores.shape[1] - len(blocked))
    out = []
    for row in scores:
        order = best_positions(row, limit)
        out.append((order.astype(np.int64), row[order]))
    return out


async def look_alikes(ctx: RecallContext, items: np.ndarray, limit: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Return, per seed item, (catalogue indexes, cosine scores) of its nearest allowed items, best first.

    In memory, each item's kept neighbour list answers (the same ranking as an exhaustive search); a list that runs
    short after the request's exclusions, and a vector store, search as `nearest` does.
    """
    kept = ctx.index.look_alikes
    embeddings = ctx.index.embeddings
    assert embeddings is not None
    if ctx.vectors is not None and ctx.content_space or kept is None:
        return await nearest(ctx, np.asarray(embeddings[items]), limit)
    out = []
    for item in items.tolist():
        found = kept.nearest(item, limit, ctx.blocked)
        out.append(found if found is not None else _exhaustive(ctx, np.asarray(embeddings[[item]]), limit)[0])
    return out


def _seed_items(ctx: RecallContext, count: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Return the newest `count` history items that have an embedding (all when None), with recency weights."""
    embeddings = ctx.index.embeddings
    if embeddings is None:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    items, weights = ctx.seeds(model_space=False)
    usable = np.any(np.asarray(embeddings[items]) != 0, axis=1)
    items, weights = items[usable], weights[usable]
    if count is not None:
        items, weights = items[-count:], weights[-count:]
    return items, weights


def _prior(ctx: RecallContext, idx: np.ndarray) -> np.ndarray:
    return np.log2(2.0 + ctx.index.counts[idx])


@REGISTRY.recall
class ContentSource:
    """Items that look like the user's latest items (title, categories, tags, attributes, era)."""

    name = "content"
    remote = True

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        items, weights = _seed_items(ctx, CONTENT_SEEDS)
        if len(items) == 0:
            return Candidates.empty()
        found = await look_alikes(ctx, items, limit * SEARCH_DEPTH)
        best = np.zeros(len(ctx.catalogue), dtype=np.float32)
        for (idx, scores), weight in zip(found, weights, strict=True):
            # idx holds each item once, so a gather and a scatter take the running maximum.
            best[idx] = np.maximum(best[idx], np.maximum(scores, 0.0) * weight * _prior(ctx, idx))
        return top_candidates(best, limit)


@REGISTRY.recall
class VectorSource:
    """Nearest items to the user's embedding (the recency-weighted mean of their items')."""

    name = "vector"
    remote = True

    async def recall(self, ctx: RecallContext, limit: int) -> Candidates:
        items, weights = _seed_items(ctx, None)
        if len(items) == 0:
            return Candidates.empty()
        user = weights @ np.asarray(ctx.index.embeddings[items])  # type: ignore[index]
        norm = float(np.linalg.norm(user))
        if norm < 1e-9:
            return Candidates.empty()
        [(idx, scores)] = await nearest(ctx, (user / norm)[None, :], limit * SEARCH_DEPTH)
        return top_of(idx, np.maximum(scores, 0.0) * _prior(ctx, idx), limit)
