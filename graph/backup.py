"""`recograph backup` and `recograph restore`: the domain's backup and restore with progress bars on the console.

Both attach to the running `serve` of the data dir (runtime.json) or to the servers the URLs name, and start the
embedded servers themselves only when nothing serves the data dir; they stop what they started, so nothing they
started outlives them. A restore into a data dir writes its vector shards, which only one process may open: it is
refused while `serve` runs there (with QDRANT_URL set, the vector store is a server and a restore may run beside).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from domain.backup import Manifest, Restored, Target, check_target, restore_backup, take_backup
from domain.errors import BadInput
from graph.runtime import open_runtime
from models.embedded import read_runtime
from models.settings import Settings

MIB = 1 << 20
LABELS = {"verify": "verify (MiB)"}


class _Bars:
    """One progress bar per stage, added as the stage first reports; gone once done (the command then says in one
    line what it did, or why it stopped)."""

    def __init__(self, console: Console) -> None:
        columns = (TextColumn("{task.description:>18}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        self._progress = Progress(*columns, console=console, transient=True)
        self._tasks: dict[str, TaskID] = {}

    def update(self, stage: str, done: int, total: int | None) -> None:
        if stage == "verify":  # bytes, shown in MiB
            done, total = done // MIB, None if total is None else max(total // MIB, 1)
        if stage not in self._tasks:
            self._tasks[stage] = self._progress.add_task(LABELS.get(stage, stage), total=total)
        self._progress.update(self._tasks[stage], completed=done, total=total)

    @contextlib.contextmanager
    def shown(self) -> Iterator[_Bars]:
        with self._progress:
            yield self


def lower_priority(increment: int = 10) -> None:
    """Run this process (and what it starts) at a lower CPU priority, so that serving keeps the cores."""
    with contextlib.suppress(OSError):
        os.nice(increment)


async def write_backup(settings: Settings, path: Path, *, tenant_id: str | None, console: Console) -> Manifest:
    """Write a backup of every tenant (or of one) to `path`, attached to the running servers; return its manifest."""
    check_target(path)  # before any server is started or attached to
    runtime = await open_runtime(settings, with_vectors=False)
    try:
        with _Bars(console).shown() as bars:
            extra = None if settings.server.in_memory else settings.server.data_dir
            return await take_backup(path, tenant_id=tenant_id, models_dir=runtime.models_dir, extra_dir=extra,
                                     redis=runtime.cache.client, progress=bars.update)
    finally:
        await runtime.close()


async def run_restore(settings: Settings, path: Path, *, tenant_id: str | None, console: Console) -> Restored:
    """Restore a backup into the stores the settings name; return what was restored."""
    _check_target(settings)
    runtime = await open_runtime(settings, with_vectors=True, serving=False)
    try:
        services = runtime.services
        assert runtime.models_dir is not None
        target = Target(
            db=runtime.mongo[settings.mongo.database], redis=runtime.cache.client, realtime=services.realtime,
            vectors=runtime.vectors, models_dir=runtime.models_dir,
            data_dir=None if settings.server.in_memory else settings.server.data_dir,
        )
        with _Bars(console).shown() as bars:
            return await restore_backup(path, target, tenant_id=tenant_id, progress=bars.update)
    finally:
        await runtime.close()


def _check_target(settings: Settings) -> None:
    if settings.server.in_memory:
        raise BadInput("a restore into memory would be gone when it ends: unset RECOGRAPH_IN_MEMORY",
                       field="RECOGRAPH_IN_MEMORY")
    data_dir = settings.server.data_dir
    info = read_runtime(data_dir)
    if info is not None and settings.qdrant.url is None:
        raise BadInput(f"recograph (pid {info['pid']}) serves {data_dir}: stop it before restoring into that data dir "
                       "(a restore writes the vector shards, which one process opens at a time)", field="PATH")


def summary(restored: Restored) -> str:
    """Return the one line a restore ends with."""
    names = ", ".join(f"{t.id} ({t.name})" for t in restored.tenants)
    seconds = sum(restored.seconds.values())
    migrated = f"; migrations {', '.join(map(str, restored.migrations))} applied" if restored.migrations else ""
    stages = ", ".join(f"{name} {s:.1f}" for name, s in restored.seconds.items() if s >= 0.05)
    return (f"restored {names}: {restored.documents:,} documents, {restored.events_replayed:,} events replayed into "
            f"Redis, {restored.vector_points:,} vector points, in {seconds:.1f} s ({stages}; schema version "
            f"{restored.schema_version}{migrated})")
