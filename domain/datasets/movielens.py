"""Read a dataset in the MovieLens layout (movies.csv, ratings.csv, tags.csv, links.csv) and load it into a tenant."""

from __future__ import annotations

import csv
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from domain.catalogue import ItemData
from domain.errors import BadInput
from domain.events import InteractionData
from domain.services import Services

YEAR = re.compile(r"\((\d{4})\)\s*$")
NO_GENRES = "(no genres listed)"
TAGS_PER_ITEM = 20
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class Dataset:
    items: list[ItemData]
    ratings_path: Path
    ratings: int


def _rows(path: Path) -> Iterator[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        yield from csv.DictReader(fh)


def _item_tags(root: Path) -> dict[str, list[str]]:
    """Return each movie's most used tags, lower-cased."""
    counts: dict[str, Counter] = defaultdict(Counter)
    if (root / "tags.csv").exists():
        for row in _rows(root / "tags.csv"):
            tag = row["tag"].strip().lower()
            if tag:
                counts[row["movieId"]][tag] += 1
    return {m: [t for t, _ in c.most_common(TAGS_PER_ITEM)] for m, c in counts.items()}


def _links(root: Path) -> dict[str, dict[str, str]]:
    if not (root / "links.csv").exists():
        return {}
    return {r["movieId"]: {"imdbId": r["imdbId"], "tmdbId": r["tmdbId"]} for r in _rows(root / "links.csv")}


def _item(row: dict[str, str], tags: list[str], links: dict[str, str]) -> ItemData:
    title = row["title"].strip()
    year = YEAR.search(title)
    genres = [g for g in row["genres"].split("|") if g and g != NO_GENRES]
    attributes: dict = {k: v for k, v in links.items() if v}
    published = None
    if year:
        attributes["year"] = int(year.group(1))
        published = datetime(int(year.group(1)), 1, 1, tzinfo=UTC)
    return ItemData(id=row["movieId"], title=title, categories=genres, tags=tags, attributes=attributes, published_at=published)


def read_movielens(path: Path) -> Dataset:
    """Read items eagerly and count ratings; ratings are streamed when loaded."""
    root = Path(path)
    if not (root / "movies.csv").exists() or not (root / "ratings.csv").exists():
        raise BadInput(f"{root} does not hold movies.csv and ratings.csv (MovieLens layout)", field="path")
    tags, links = _item_tags(root), _links(root)
    items = [_item(r, tags.get(r["movieId"], []), links.get(r["movieId"], {})) for r in _rows(root / "movies.csv")]
    with (root / "ratings.csv").open(encoding="utf-8") as fh:
        ratings = sum(1 for _ in fh) - 1
    return Dataset(items=items, ratings_path=root / "ratings.csv", ratings=ratings)


def rating_events(dataset: Dataset, scenario_id: str) -> Iterator[InteractionData]:
    """Yield each rating as a RATING interaction whose event id makes reloading idempotent."""
    for row in _rows(dataset.ratings_path):
        yield InteractionData(
            scenario_id=scenario_id, user_id=row["userId"], item_id=row["movieId"], type="RATING",
            value=float(row["rating"]), timestamp=datetime.fromtimestamp(int(row["timestamp"]), UTC),
            event_id=f"ml-{row['userId']}-{row['movieId']}-{row['timestamp']}",
        )


def _batches(events: Iterator[InteractionData], size: int) -> Iterator[list[InteractionData]]:
    batch: list[InteractionData] = []
    for event in events:
        batch.append(event)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


async def load_dataset(
    services: Services, dataset: Dataset, *, tenant_id: str, scenario_id: str, progress: Progress, batch: int = 5000
) -> dict[str, int]:
    """Upsert the items, then record the ratings; return counts of what was stored."""
    stored = {"items": 0, "interactions": 0, "duplicates": 0, "errors": 0}
    for start in range(0, len(dataset.items), batch):
        chunk = dataset.items[start : start + batch]
        result = await services.catalogue.upsert(chunk, tenant_id=tenant_id, scenario_id=scenario_id)
        stored["items"] += result.upserted
        stored["errors"] += len(result.errors)
        progress("items", start + len(chunk), len(dataset.items))
    done = 0
    for events in _batches(rating_events(dataset, scenario_id), batch):
        result = await services.events.record(events, tenant_id=tenant_id)
        stored["interactions"] += result.accepted
        stored["duplicates"] += result.duplicates
        stored["errors"] += len(result.errors)
        done += len(events)
        progress("interactions", done, dataset.ratings)
    return stored
