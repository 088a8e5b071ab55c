"""Read over many users without one huge query: a scenario's users streamed, their events queried in batches.

MongoDB answers `distinct` in one document and takes a query as one document, both at most 16 MB: a tenant with a
few hundred thousand users passes that with `distinct("user_id")` or `{"user_id": {"$in": users}}`. Here the users
come from an aggregation cursor (batches of documents) and each query names at most USERS_PER_QUERY of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from models.documents import Interaction

USERS_PER_QUERY = 1000


async def distinct_users(scope: Mapping[str, Any]) -> list[str]:
    """Return the distinct user ids of the interactions matching scope (which must name the tenant)."""
    cursor = await Interaction.get_pymongo_collection().aggregate(
        [{"$match": dict(scope)}, {"$group": {"_id": "$user_id"}}], allowDiskUse=True
    )
    return [doc["_id"] async for doc in cursor]


def user_queries(tenant_id: str, users: Sequence[str], *, size: int | None = None) -> list[dict[str, Any]]:
    """Return queries matching every interaction of the users in the tenant, each naming at most `size` users
    (default USERS_PER_QUERY)."""
    users, size = list(users), size or USERS_PER_QUERY
    return [{"tenant_id": tenant_id, "user_id": {"$in": users[start : start + size]}}
            for start in range(0, len(users), size)]


async def count_matching(queries: Sequence[Mapping[str, Any]]) -> int:
    """Return how many interactions the queries match together (they must not overlap)."""
    collection = Interaction.get_pymongo_collection()
    return sum([await collection.count_documents(dict(q)) for q in queries])
