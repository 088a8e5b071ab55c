"""A dataset in the MovieLens layout as item documents and interaction columns, the shape training reads."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from domain.catalogue import ItemData
from domain.datasets.movielens import read_movielens


@dataclass(frozen=True)
class Ratings:
    """A dataset's items (MongoDB-shaped documents) and its ratings as aligned columns."""

    items: list[dict[str, Any]]
    user_ids: np.ndarray  # object (str)
    item_ids: np.ndarray  # object (str)
    values: np.ndarray  # float64
    timestamps: np.ndarray  # float64 epoch seconds

    def __len__(self) -> int:
        return len(self.user_ids)


def item_document(item: ItemData) -> dict[str, Any]:
    """Return an item as the items collection stores it."""
    return {"item_id": item.id, "title": item.title, "categories": list(item.categories), "tags": list(item.tags),
            "attributes": dict(item.attributes or {}), "published_at": item.published_at, "status": item.status}


def load_ratings(path: Path) -> Ratings:
    """Read movies.csv (with tags and links) and ratings.csv; ratings with unknown movies are dropped."""
    dataset = read_movielens(path)
    items = [item_document(i) for i in dataset.items]
    known = {i["item_id"] for i in items}
    users, movies, values, times = [], [], [], []
    with dataset.ratings_path.open(newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            if row["movieId"] in known:
                users.append(row["userId"])
                movies.append(row["movieId"])
                values.append(float(row["rating"]))
                times.append(float(row["timestamp"]))
    return Ratings(items=items, user_ids=np.array(users, dtype=object), item_ids=np.array(movies, dtype=object),
                   values=np.array(values), timestamps=np.array(times))
