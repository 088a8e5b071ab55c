"""Thin arq jobs: each takes ids and the tenant, gets its service from the worker context and calls it once."""

from __future__ import annotations

from typing import Any

from arq import Retry

from domain.learning.service import Retryable

# Seconds before retry n (1-based) of a job whose stores were briefly unavailable.
BACKOFF_S = (5, 30, 120, 600)


def backoff_s(attempt: int) -> int:
    """Return how long to wait before the next try after `attempt` failed."""
    return BACKOFF_S[min(max(attempt, 1), len(BACKOFF_S)) - 1]


async def train_scenario(ctx: dict[str, Any], tenant_id: str, scenario_id: str, job_id: str) -> dict | None:
    """scenarios.train: (re)train everything the scenario uses and swap the serving copy."""
    attempt = int(ctx.get("job_try") or 1)
    try:
        return await ctx["services"].training.train(
            job_id, tenant_id=tenant_id, scenario_id=scenario_id, attempt=attempt,
            may_retry=attempt < int(ctx["max_tries"]),
        )
    except Retryable as exc:
        raise Retry(defer=backoff_s(attempt)) from exc
