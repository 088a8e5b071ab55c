"""The learned ranker's served lists read from the Mongo wire server: the newest impressions of the scenario, each
with the events of its own scenario and tenant that cite its request id."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from domain.learning.served import load_served
from models.documents import Impression, Interaction

NOW = datetime(2025, 3, 1, 12, tzinfo=UTC)


def page(tenant: str, scenario: str, n: int, items: list[str], user: str = "ann") -> dict:
    return {"_id": f"{tenant}:{scenario}:r{n}", "tenant_id": tenant, "scenario_id": scenario, "user_id": user,
            "request_id": f"{scenario}-r{n}", "items": [{"i": i, "s": ["ease"]} for i in items],
            "served_at": NOW + timedelta(minutes=n)}


def event(tenant: str, scenario: str, n: int, item: str, kind: str, request: str | None) -> dict:
    return {"_id": f"{tenant}:e{n}:{scenario}:{item}:{kind}", "tenant_id": tenant, "scenario_id": scenario,
            "user_id": "ann", "item_id": item, "type": kind, "value": None, "ts": NOW + timedelta(minutes=n, seconds=5),
            "context": None, "request_id": request, "event_id": f"e{n}{item}{kind}", "received_at": NOW}


async def test_newest_lists_with_their_own_attributed_events(served) -> None:
    tenant, other = "served-lists-a", "served-lists-b"
    await Impression.get_pymongo_collection().insert_many([
        page(tenant, "feed", 1, ["v1", "v2"]), page(tenant, "feed", 2, ["v3", "v4"], user="bob"),
        page(tenant, "feed", 3, ["v5"]), page(tenant, "shop", 4, ["v1"]), page(other, "feed", 5, ["v1"]),
    ])
    await Interaction.get_pymongo_collection().insert_many([
        event(tenant, "feed", 1, "v2", "CLICK", "feed-r1"), event(tenant, "feed", 2, "v3", "SKIP", "feed-r2"),
        event(tenant, "feed", 2, "v4", "LIKE", "feed-r2"), event(tenant, "feed", 3, "v5", "VIEW", None),
        event(tenant, "shop", 4, "v1", "CLICK", "feed-r3"), event(other, "feed", 5, "v5", "CLICK", "feed-r3"),
    ])
    lists = await load_served(tenant, "feed", limit=2)
    assert lists.user_ids == ["ann", "bob"]  # newest first, at most `limit`
    assert lists.items == [["v5"], ["v3", "v4"]]
    assert lists.events == [[], [("v3", "SKIP"), ("v4", "LIKE")]]  # never another scenario's or tenant's event
    assert lists.served_at.tolist() == [(NOW + timedelta(minutes=m)).timestamp() for m in (3, 2)]
    assert len(await load_served(tenant, "none")) == 0
