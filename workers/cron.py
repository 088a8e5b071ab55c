"""The schedules: one arq cron job per kind, each submitting a job of that kind for every tenant's scenarios.

Submission goes through JobService, so a tick while the previous job of that kind and scenario is still queued or
running submits nothing for it. Times are UTC, staggered so the two model-writing kinds never start together:

    SIMILARITY  hourly at :30          PROFILES    every 2 h at :10 (00:10, 02:10, ...)
    CANDIDATES  every 4 h at :20       TRAIN       daily at 03:00           CLEANUP    daily at 04:00

Running experiments' results and bandit weights are refreshed every minute beside each event consumer
(workers.consumer), not here: an every-minute arq cron job in the embedded serving process stalled cold answers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from arq.cron import CronJob, cron

from domain.jobs import JobKind

SCHEDULES: dict[JobKind, dict[str, Any]] = {
    JobKind.SIMILARITY: {"minute": 30},
    JobKind.PROFILES: {"hour": set(range(0, 24, 2)), "minute": 10},
    JobKind.CANDIDATES: {"hour": set(range(0, 24, 4)), "minute": 20},
    JobKind.TRAIN: {"hour": 3, "minute": 0},
    JobKind.CLEANUP: {"hour": 4, "minute": 0},
}
TICK_TIMEOUT_S = 300  # listing tenants and queueing one job per scenario


async def fan_out(ctx: dict[str, Any], kind: JobKind) -> dict[str, int]:
    """Submit `kind` for every scenario of every tenant; return how many were queued, still active, refused."""
    done = await ctx["services"].background.fan_out(kind)
    return {"submitted": len(done.submitted), "alreadyActive": len(done.already_active), "refused": len(done.refused)}


def tick(kind: JobKind) -> Callable[[dict[str, Any]], Awaitable[dict[str, int]]]:
    """Return the cron coroutine of one kind."""
    async def scheduled(ctx: dict[str, Any]) -> dict[str, int]:
        return await fan_out(ctx, kind)

    scheduled.__qualname__ = scheduled.__name__ = f"schedule_{kind.value}"
    return scheduled


def cron_jobs() -> list[CronJob]:
    """Return the schedules as arq cron jobs (unique: one run per tick however many workers run)."""
    return [cron(tick(kind), name=f"cron:{kind.value}", timeout=TICK_TIMEOUT_S, **when)
            for kind, when in SCHEDULES.items()]
