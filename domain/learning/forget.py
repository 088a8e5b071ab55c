"""Remove users from a saved model: their training history and their column of the item -> users index.

A model keeps each training user's history (for user-CF and the seen filter of trained items, with the event behind
each item where sasrec reads event features) under their id.
After an erasure every kept version is rewritten without the user; a training that was running when the user was
erased drops them from its result before the version is applied. Aggregates that keep no user (item counts,
popularity, neighbour tables, factors) stay as trained.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np

from domain.learning.model import ScenarioModel
from domain.learning.storage import read_users, save_model


def without_users(model: ScenarioModel, rows: np.ndarray) -> ScenarioModel:
    """Return a copy of the model without the given user rows (renumbering the rest)."""
    keep = np.ones(len(model.user_ids), dtype=bool)
    keep[rows] = False
    lengths = np.diff(np.asarray(model.history_indptr))
    kept = np.repeat(keep, lengths)
    items = np.asarray(model.history_items)[kept]
    events = {name: np.asarray(array)[kept] for name in ("history_types", "history_values")
              if (array := getattr(model, name)) is not None}  # the event behind each kept history item
    indptr = np.r_[0, np.cumsum(lengths[keep])].astype(np.int64)
    item_users = model.item_users[:, np.flatnonzero(keep)].tocsr() if model.item_users is not None else None
    info = {**model.info, "users": int(keep.sum())} if "users" in model.info else model.info
    return replace(
        model, user_ids=[u for u, kept in zip(model.user_ids, keep, strict=True) if kept], history_indptr=indptr,
        history_items=items.astype(np.int32), item_users=item_users, info=info, **events,
    )


def forget_users(path: Path, erased: Callable[[str], bool]) -> int:
    """Rewrite the model at `path` without the users for whom `erased(user_id)` holds; return how many went.

    Only the (small) list of user ids is read unless one of them must go; the rewrite is atomic (save_model).
    """
    rows = np.array([i for i, user_id in enumerate(read_users(path)) if erased(user_id)], dtype=np.int64)
    if not len(rows):
        return 0
    save_model(without_users(ScenarioModel.load(path), rows), path)
    return len(rows)
