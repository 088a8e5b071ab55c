"""Candidate precompute: warm the cached answers of recently active users, so their next request is a cache hit.

Serving caches each answer under the user's version (bumped by every recorded interaction); asking for a user's
recommendations here computes and stores that answer exactly as a request would. "Recently active" is measured from
the scenario's newest event (as decay and trending are), so a historical import behaves like live traffic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog

from domain.errors import DomainError, NotFound, Unavailable
from domain.events import newest_event_time
from domain.recommend.service import RecommendationService
from domain.scenarios.service import ScenarioService
from models.cache import CacheUnavailable
from models.documents import Interaction

log = structlog.get_logger()

Report = Callable[[float, str], Awaitable[None]]
WARM_FIRST = 20  # the page size asked for; the whole ranked list is cached whatever the page
MAX_FIRST = 200


@dataclass(frozen=True)
class CandidatePolicy:
    """Which users a CANDIDATES job warms, and how many at once."""

    active_hours: float = 24.0
    max_users: int = 5000
    concurrency: int = 4


async def active_users(*, tenant_id: str, scenario_id: str, hours: float, limit: int) -> list[str]:
    """Return up to `limit` users with interactions in the scenario's last `hours` (of event time), latest first."""
    newest = await newest_event_time(tenant_id=tenant_id, scenario_id=scenario_id)
    if newest is None:
        return []
    since = newest - timedelta(hours=hours)
    match = {"tenant_id": tenant_id, "scenario_id": scenario_id, "ts": {"$gte": since}}  # one dict: the index applies
    rows = await Interaction.get_pymongo_collection().aggregate([
        {"$match": match}, {"$group": {"_id": "$user_id", "last": {"$max": "$ts"}}},
        {"$sort": {"last": -1, "_id": 1}}, {"$limit": limit},
    ])
    return [row["_id"] async for row in rows]


class CandidateService:
    """Warm recommendations for a scenario's active users with bounded concurrency."""

    def __init__(self, recommendations: RecommendationService, scenarios: ScenarioService,
                 policy: CandidatePolicy | None = None) -> None:
        self._recommendations = recommendations
        self._scenarios = scenarios
        self._policy = policy or CandidatePolicy()

    async def warm(self, *, tenant_id: str, scenario_id: str, report: Report) -> dict[str, Any]:
        """Compute and cache the answers of the scenario's recently active users; return how many were warmed."""
        await self._scenarios.get_or_raise(scenario_id, tenant_id=tenant_id)
        policy = self._policy
        users = await active_users(tenant_id=tenant_id, scenario_id=scenario_id, hours=policy.active_hours,
                                   limit=policy.max_users)
        await report(0.05, f"warming {len(users)} users")
        if not users:
            return {"activeUsers": 0, "warmed": 0, "failed": 0}
        await self._first(users[0], tenant_id, scenario_id)  # no engine here: fail the job once, not per user
        counts = {"warmed": 1, "failed": 0}
        gate = asyncio.Semaphore(policy.concurrency)

        async def one(user_id: str) -> None:
            async with gate:
                ok = await self._warm_one(user_id, tenant_id, scenario_id)
            counts["warmed" if ok else "failed"] += 1
            await report(0.05 + 0.95 * (counts["warmed"] + counts["failed"]) / len(users), "warming answers")

        await asyncio.gather(*(one(u) for u in users[1:]))
        return {"activeUsers": len(users), **counts}

    async def _first(self, user_id: str, tenant_id: str, scenario_id: str) -> None:
        try:
            await self._recommend(user_id, tenant_id, scenario_id)
        except Unavailable as exc:
            raise Unavailable(f"candidate precompute needs a recommendation engine in the worker: {exc}") from exc

    async def _warm_one(self, user_id: str, tenant_id: str, scenario_id: str) -> bool:
        try:
            await self._recommend(user_id, tenant_id, scenario_id)
        except NotFound:
            raise  # the scenario went away: the job ends
        except (DomainError, CacheUnavailable) as exc:
            # No user id in logs: a log file keeps what it was once written, erasure or not (domain.erasure).
            log.warning("candidates.user_failed", scenario_id=scenario_id, error=type(exc).__name__)
            return False
        return True

    async def _recommend(self, user_id: str, tenant_id: str, scenario_id: str) -> None:
        await self._recommendations.recommend(
            tenant_id=tenant_id, scenario_id=scenario_id, user_id=user_id, first=WARM_FIRST, after=None, context=None,
            exclude_seen=True, debug=False, max_first=MAX_FIRST,
        )
