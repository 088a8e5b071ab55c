"""A request's history: the user's training items, then their live items oldest first, each with its event.

Live items are the scenario's seen set (written at ingest, so a new event counts at once) less the training items.
Their order, types and values come from the user's recent events, which the realtime consumer keeps in Redis (the
newest RECENT_KEPT, every scenario together) and which serving reads in the same round trip as the seen set
(models.cache.UserState). A live item without a recent event in the scenario is either one the consumer has not
applied yet, the newest, or one older than every kept event: it goes last while events wait for the consumer or
while nothing was ever dropped from the recent events, and first otherwise, in id order either way.
"""

from __future__ import annotations

from typing import Any

from domain.realtime.keys import RECENT_KEPT, recent_event
from domain.recommend.recall.context import HISTORY_CAP
from models.cache import UserState

Event = tuple[str | None, float | None]  # (type, value); None: unknown
NO_EVENT: Event = (None, None)


def request_history(model: Any, user_id: str, scenario_id: str,
                    state: UserState | None) -> tuple[list[str], list[Event]]:
    """Return the history (training items, then live items oldest first) and the events of its newest items,
    aligned with its end (RecRequest.history_events)."""
    trained: list[str] = model.user_history(user_id) if model is not None else []
    events: list[Event] = model.user_events(user_id, HISTORY_CAP) if model is not None else []
    live = state.seen.difference(trained) if state is not None and state.seen else set()
    if not live:
        return trained, events
    newest = live_events(state.recent if state is not None else (), scenario_id, live)
    placed = sorted(newest, key=lambda item: (newest[item][0], item))
    unplaced = sorted(live.difference(newest))
    awaited = state is not None and (state.pending or len(state.recent) < RECENT_KEPT)
    order = [*placed, *unplaced] if awaited else [*unplaced, *placed]
    live_part = [newest[item][1:] if item in newest else NO_EVENT for item in order]
    return [*trained, *order], [*events, *live_part]  # events cover the newest training items: aligned at the end


def live_events(members: tuple[str, ...], scenario_id: str,
                items: set[str]) -> dict[str, tuple[int, str, float | None]]:
    """Return the newest recent event in the scenario of each of `items` that has one: (ts ms, type, value)."""
    out: dict[str, tuple[int, str, float | None]] = {}
    for member in members:
        try:
            ts, item, scenario, kind, value = recent_event(member)
        except ValueError:  # not a member the consumer wrote: it says nothing about the order
            continue
        if scenario == scenario_id and item in items and (item not in out or ts >= out[item][0]):
            out[item] = (ts, kind, value)
    return out
