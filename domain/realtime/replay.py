"""Read stored interactions back from MongoDB in the stream's form, in batches (catch-up, sweeps, rebuilds)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from domain.realtime.stream import StreamEvent, millis
from models.documents import Interaction

REPLAY_BATCH = 1000
CATCH_UP_MARGIN_S = 600  # replay this much before the watermark: concurrent ingests reach the stream out of order
_FIELDS = {"event_id": 1, "scenario_id": 1, "user_id": 1, "item_id": 1, "type": 1, "value": 1, "ts": 1,
           "received_at": 1, "request_id": 1}


def event_of(doc: dict[str, Any]) -> StreamEvent:
    """Return the stream form of a stored interaction."""
    return StreamEvent(
        doc["event_id"], doc["scenario_id"], doc["user_id"], doc["item_id"], doc["type"], doc.get("value"),
        millis(doc["ts"]), millis(doc["received_at"]), doc.get("request_id"),
    )


async def stored_events(query: dict[str, Any]) -> AsyncIterator[list[StreamEvent]]:
    """Yield the interactions matching query, REPLAY_BATCH at a time."""
    cursor = Interaction.get_pymongo_collection().find(query, _FIELDS, batch_size=REPLAY_BATCH)
    batch: list[StreamEvent] = []
    async for doc in cursor:
        batch.append(event_of(doc))
        if len(batch) >= REPLAY_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch
