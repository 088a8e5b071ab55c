"""Co-occurrence models on sparse matrices: item-item cosine neighbours, EASE, and the item -> users index that
user-based CF reads at request time."""

from __future__ import annotations

import numpy as np
import scipy.linalg.lapack
import scipy.sparse as sp

from domain.learning.tables import BLOCK_FLOATS, DenseTable, NeighbourTable, expand_rows, remap_columns, top_k_table

ITEM_CF_SHRINK = 10.0  # damps similarities resting on a handful of co-occurrences
# EASE's matrix is kept whole up to this many items (64 MB, memory-mapped and shared by the serving processes):
# its negative weights carry much of its accuracy. On a random split of ml-latest-small (3,000 items, lambda 200)
# NDCG@10 is 0.377 whole, 0.370 with each row's 500 largest weights in magnitude, 0.351 with its 500 largest
# positive ones and 0.345 with 100 (what a pruned positive table served before).
EASE_DENSE_MAX = 4000
EASE_NEIGHBORS = 100  # beyond EASE_DENSE_MAX, each item's strongest weights in magnitude, negative ones included
EASE_HARD_CAP = 6000  # an items x items inverse beyond this needs GBs and minutes: prune to it whatever the config
MAX_USERS_PER_ITEM = 500  # user-CF reads the most recent users of each item only, bounding request cost


def item_cf(binary: sp.csr_matrix, k: int) -> NeighbourTable:
    """Return each item's top-k neighbours by shrunk cosine similarity of their user sets."""
    items_users = binary.T.tocsr()
    norms = np.sqrt(np.asarray(binary.sum(axis=0), dtype=np.float32).ravel())

    def block(start: int, stop: int) -> np.ndarray:
        co = (items_users[start:stop] @ binary).toarray()
        co[np.arange(stop - start), np.arange(start, stop)] = 0.0
        co /= norms[start:stop, None] * norms[None, :] + np.float32(ITEM_CF_SHRINK)
        return co

    return top_k_table(binary.shape[1], binary.shape[1], k, block)


def ease(matrix: sp.csr_matrix, lam: float, max_items: int, k: int = EASE_NEIGHBORS,
         dense_max: int = EASE_DENSE_MAX) -> tuple[NeighbourTable | DenseTable, int]:
    """Fit EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) on the most popular items
    and return its weights, whole up to `dense_max` items, else pruned to each item's k strongest; and the items
    kept."""
    counts = np.asarray((matrix > 0).sum(axis=0)).ravel()
    n = int(min(max_items, EASE_HARD_CAP, np.count_nonzero(counts)))
    vocab = np.argsort(-counts, kind="stable")[:n]
    if n == 0:  # no interactions yet: an empty table
        return expand_rows(NeighbourTable(np.empty((0, k), np.int32), np.empty((0, k), np.float32)), vocab,
                           matrix.shape[1]), 0
    gram = _gram(matrix[:, vocab].tocsr())
    gram[np.diag_indices(n)] += lam
    weights = _spd_inverse(gram)
    del gram
    weights /= -np.diag(weights).copy()[None, :]  # B[i, j]: how much item i predicts item j
    weights[np.diag_indices(n)] = 0.0
    if n <= dense_max:
        return DenseTable(vocab.astype(np.int32), weights), n
    table = top_k_table(n, n, k, lambda start, stop: weights[start:stop], positive_only=False)
    return expand_rows(remap_columns(table, vocab), vocab, matrix.shape[1]), n


def _spd_inverse(matrix: np.ndarray) -> np.ndarray:
    """Return the inverse of a symmetric positive definite float32 matrix, overwriting it."""
    # Cholesky in float32 LAPACK: half the flops of an LU inverse, and none of numpy's float64 copies.
    factor, info = scipy.linalg.lapack.spotrf(matrix, lower=False, overwrite_a=True, clean=False)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE Gram matrix is not positive definite (spotrf info {info})")
    upper, info = scipy.linalg.lapack.spotri(factor, lower=False, overwrite_c=True)
    if info != 0:
        raise np.linalg.LinAlgError(f"EASE Gram matrix is singular (spotri info {info})")
    inverse = np.triu(upper)
    inverse += np.triu(upper, 1).T
    return inverse


def _gram(matrix: sp.csr_matrix) -> np.ndarray:
    """Return matrix.T @ matrix as a dense float32 array, densifying a block of rows at a time."""
    # A sparse x sparse product would hold every co-occurring pair as a sparse entry before densifying.
    n = matrix.shape[1]
    gram = np.zeros((n, n), dtype=np.float32)
    step = max(1, BLOCK_FLOATS // max(n, 1))
    for start in range(0, matrix.shape[0], step):
        rows = matrix[start : start + step]
        gram += np.asarray(rows.T @ rows.toarray(), dtype=np.float32)
    return gram


def item_users(history_indptr: np.ndarray, history_items: np.ndarray, history_times: np.ndarray,
               n_items: int) -> sp.csr_matrix:
    """Return items x users (1 = the user has the item), keeping each item's most recent users only."""
    users = np.repeat(np.arange(len(history_indptr) - 1), np.diff(history_indptr))
    order = np.lexsort((history_times, history_items))
    items, users = history_items[order], users[order]
    # Position within the item's run, counted from its newest pair: keep the newest MAX_USERS_PER_ITEM.
    run_ends = np.searchsorted(items, items, side="right")
    keep = run_ends - np.arange(len(items)) <= MAX_USERS_PER_ITEM
    return sp.csr_matrix((np.ones(int(keep.sum()), np.float32), (items[keep], users[keep])),
                         shape=(n_items, len(history_indptr) - 1))
