"""The minute's refresh of running experiments beside each consumer: it keeps running when one refresh fails."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from workers.consumer import refresh_experiments


class Results:
    def __init__(self) -> None:
        self.calls = 0

    async def refresh_running(self) -> int:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("MongoDB went away")
        return 1


async def test_the_refresh_survives_a_failure_and_keeps_its_pace():
    results = Results()
    task = asyncio.create_task(refresh_experiments(SimpleNamespace(experiment_results=results), every_s=0.01))
    for _ in range(500):  # up to 5 s: the first exception's log line can take long on a loaded machine
        if results.calls >= 3:
            break
        await asyncio.sleep(0.01)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert results.calls >= 3  # the first failed, the next ones ran
