"""Read the lists served to a scenario's users (impressions) and the events attributed to them, for the learned
ranker's training (domain.learning.ranking).

Bounded: the newest SERVED_LISTS impressions, and the events of the same scenario that cite a request id since the
oldest of them (one range read on the scenario's time index; the match by request id is done here, since an `$in`
over tens of thousands of ids is slow on the embedded server).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

import numpy as np

from domain.learning.data import ServedLists
from models.documents import Impression, Interaction

SERVED_LISTS = 50_000
BATCH = 5_000
EARLY = timedelta(hours=1)  # an attributed event's client timestamp may run slightly behind the serve time


async def load_served(tenant_id: str, scenario_id: str, limit: int = SERVED_LISTS) -> ServedLists:
    """Return the scenario's newest served lists with the events citing them."""
    scenario = {"tenant_id": tenant_id, "scenario_id": scenario_id}
    pages = await Impression.get_pymongo_collection().find(
        scenario, {"_id": 0, "user_id": 1, "request_id": 1, "items.i": 1, "served_at": 1}, batch_size=BATCH,
    ).sort("served_at", -1).limit(limit).to_list(None)
    if not pages:
        return served_lists([], [])
    oldest = min(p["served_at"] for p in pages) - EARLY
    cursor = Interaction.get_pymongo_collection().find(
        {**scenario, "ts": {"$gte": oldest}, "request_id": {"$ne": None}},
        {"_id": 0, "request_id": 1, "item_id": 1, "type": 1}, batch_size=BATCH,
    )
    events: list[dict[str, Any]] = []
    while batch := await cursor.to_list(BATCH):
        events.extend(batch)
    return served_lists(pages, events)


def served_lists(pages: Iterable[Mapping[str, Any]], events: Iterable[Mapping[str, Any]]) -> ServedLists:
    """Return impression documents with their attributed events (documents as stored) as ServedLists."""
    pages = list(pages)
    cited: dict[str, list[tuple[str, str]]] = {p["request_id"]: [] for p in pages}
    for event in events:
        found = cited.get(event.get("request_id") or "")
        if found is not None:
            found.append((event["item_id"], event["type"]))
    return ServedLists(
        user_ids=[p["user_id"] for p in pages],
        served_at=np.array([p["served_at"].timestamp() for p in pages], dtype=np.float64),
        items=[[entry["i"] for entry in p.get("items") or ()] for p in pages],
        events=[cited[p["request_id"]] for p in pages],
    )
