"""Reading over many users on the embedded MongoDB: users streamed by aggregation, their events in bounded queries."""

from __future__ import annotations

from domain.ids import new_id, utcnow
from domain.userbatches import count_matching, distinct_users, user_queries
from models.documents import Interaction


async def store(tenant_id: str, rows: list[tuple[str, str]]) -> None:
    now = utcnow()
    await Interaction.insert_many([
        Interaction(id=new_id("ev"), tenant_id=tenant_id, scenario_id=scenario, user_id=user, item_id="i1",
                    type="VIEW", ts=now, event_id=new_id("e"), received_at=now)
        for scenario, user in rows
    ])


async def test_profile_rebuild_reads_users_in_batches_not_one_in(served):
    tenant, other = new_id("tn"), new_id("tn")
    rows = [("s1", f"u{n}") for n in range(7)] + [("s2", "u0"), ("s2", "u1"), ("s2", "x9"), ("s1", "u3")]
    await store(tenant, rows)
    await store(other, [("s1", "u0"), ("s1", "stranger")])
    users = await distinct_users({"tenant_id": tenant, "scenario_id": "s1"})
    assert sorted(users) == [f"u{n}" for n in range(7)]
    queries = user_queries(tenant, users, size=3)
    assert [len(q["user_id"]["$in"]) for q in queries] == [3, 3, 1]  # no query names more than `size` users
    # Every event of the scenario's users in the tenant, its other scenarios' included, exactly once.
    assert await count_matching(queries) == 7 + 2 + 1
    found = []
    for query in queries:
        found += await Interaction.get_pymongo_collection().find(query, {"user_id": 1}).to_list(None)
    assert len({d["_id"] for d in found}) == len(found) == 10
    assert user_queries(tenant, []) == []
