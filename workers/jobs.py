"""Thin arq jobs: each takes ids and the tenant, gets its service from the worker context and calls it once.

Every job is queued as `function(tenant_id, scenario_id, job_id)` under the job's own id (domain.jobs.JobService).
A store that was briefly unavailable makes the domain raise Retryable; the job asks arq to run it again after a
growing delay, until the function's last try (which fails the job instead).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from arq import Retry

from domain.jobs import JOB_FUNCTIONS, JobKind, Retryable
from domain.learning.tower_spaces import SYNC_FUNCTION

# Seconds before retry n (1-based) of a job whose stores were briefly unavailable.
BACKOFF_S = (5, 30, 120, 600)
Attempt = Callable[[int, bool], Awaitable[dict | None]]


def backoff_s(attempt: int) -> int:
    """Return how long to wait before the next try after `attempt` failed."""
    return BACKOFF_S[min(max(attempt, 1), len(BACKOFF_S)) - 1]


async def _run(ctx: dict[str, Any], kind: JobKind, attempt_fn: Attempt) -> dict | None:
    """Call one attempt with its number and whether another may follow; turn Retryable into an arq Retry."""
    attempt = int(ctx.get("job_try") or 1)
    tries = (ctx.get("tries") or {}).get(JOB_FUNCTIONS[kind], ctx["max_tries"])
    try:
        return await attempt_fn(attempt, attempt < int(tries))
    except Retryable as exc:
        raise Retry(defer=backoff_s(attempt)) from exc


async def train_scenario(ctx: dict[str, Any], tenant_id: str, scenario_id: str, job_id: str) -> dict | None:
    """scenarios.train: (re)train everything the scenario uses and swap the serving copy."""
    training = ctx["services"].training
    return await _run(ctx, JobKind.TRAIN, lambda attempt, may_retry: training.train(
        job_id, tenant_id=tenant_id, scenario_id=scenario_id, attempt=attempt, may_retry=may_retry))


async def refresh_similarity(ctx: dict[str, Any], tenant_id: str, scenario_id: str, job_id: str) -> dict | None:
    """scenarios.similarity: refit item-CF neighbours and content vectors, and swap them in."""
    background = ctx["services"].background
    return await _run(ctx, JobKind.SIMILARITY, lambda attempt, may_retry: background.refresh_similarity(
        job_id, tenant_id=tenant_id, scenario_id=scenario_id, attempt=attempt, may_retry=may_retry))


async def rebuild_profiles(ctx: dict[str, Any], tenant_id: str, scenario_id: str, job_id: str) -> dict | None:
    """profiles.rebuild: replay the scenario's stored events into its users' profiles."""
    services = ctx["services"]
    rebuilder = getattr(services, "realtime", None)
    return await _run(ctx, JobKind.PROFILES, lambda attempt, may_retry: services.background.rebuild_profiles(
        job_id, tenant_id=tenant_id, scenario_id=scenario_id, attempt=attempt, may_retry=may_retry,
        rebuilder=rebuilder))


async def precompute_candidates(ctx: dict[str, Any], tenant_id: str, scenario_id: str, job_id: str) -> dict | None:
    """candidates.precompute: warm the cached answers of the scenario's recently active users."""
    background = ctx["services"].background
    return await _run(ctx, JobKind.CANDIDATES, lambda attempt, may_retry: background.precompute_candidates(
        job_id, tenant_id=tenant_id, scenario_id=scenario_id, attempt=attempt, may_retry=may_retry))


async def cleanup(ctx: dict[str, Any], tenant_id: str, scenario_id: str, job_id: str) -> dict | None:
    """maintenance.cleanup: delete old artifacts, job records, expired interactions and orphan Redis keys."""
    background = ctx["services"].background
    return await _run(ctx, JobKind.CLEANUP, lambda attempt, may_retry: background.cleanup(
        job_id, tenant_id=tenant_id, scenario_id=scenario_id, attempt=attempt, may_retry=may_retry))


async def sync_item_vectors(ctx: dict[str, Any], tenant_id: str, scenario_id: str,
                            item_ids: list[str]) -> dict | None:
    """items.vectors: give written items their two-tower vectors in the store, and take removed ones out.

    Queued by each item write of a scenario that serves two towers, not recorded as a job (there is one per write).
    """
    towers = ctx["services"].towers
    if towers is None:
        return None
    attempt = int(ctx.get("job_try") or 1)
    tries = (ctx.get("tries") or {}).get(SYNC_FUNCTION, ctx["max_tries"])
    try:
        return await towers.sync(item_ids, tenant_id=tenant_id, scenario_id=scenario_id,
                                 may_retry=attempt < int(tries))
    except Retryable as exc:
        raise Retry(defer=backoff_s(attempt)) from exc


JOBS: dict[JobKind, Callable[..., Awaitable[dict | None]]] = {
    JobKind.TRAIN: train_scenario,
    JobKind.SIMILARITY: refresh_similarity,
    JobKind.PROFILES: rebuild_profiles,
    JobKind.CANDIDATES: precompute_candidates,
    JobKind.CLEANUP: cleanup,
}
