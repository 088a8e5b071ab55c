"""The demo tenant: MovieLens loaded into a VLOG-style scenario, its keys kept in a 0600 file in the data dir."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.panel import Panel
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from domain.datasets.movielens import load_dataset, read_movielens
from graph.runtime import Runtime
from models.documents import Interaction
from models.settings import Settings

TENANT_NAME = "demo"
SCENARIO_NAME = "movies"
KEYS_FILE = "demo-keys.json"


@dataclass(frozen=True)
class Demo:
    tenant_id: str
    scenario_id: str
    keys: dict[str, str]


def _keys_path(settings: Settings) -> Path | None:
    return None if settings.server.in_memory else settings.server.data_dir / KEYS_FILE


def _read_keys(path: Path | None) -> dict | None:
    if path is None or not path.exists():
        return None
    return json.loads(path.read_text())


def _write_keys(path: Path | None, info: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh, indent=2)
    os.chmod(path, 0o600)


async def _tenant(runtime: Runtime, path: Path | None) -> dict:
    tenancy = runtime.services.tenancy
    info = _read_keys(path)
    if info and await tenancy.get_tenant(tenant_id=info["tenant_id"]) is not None:
        return info
    tenant, keys = await tenancy.create_tenant(TENANT_NAME)
    info = {"tenant_id": tenant.id, "keys": {scope.value: new.secret for scope, new in keys.items()}}
    _write_keys(path, info)
    return info


async def _scenario(runtime: Runtime, tenant_id: str) -> str:
    scenarios = runtime.services.scenarios
    page = await scenarios.list(tenant_id=tenant_id, first=200, after=None, max_first=200)
    for scenario in page.nodes:
        if scenario.name == SCENARIO_NAME:
            return scenario.id
    created = await scenarios.create(tenant_id=tenant_id, name=SCENARIO_NAME, template="VLOG", config=None)
    return created.id


async def ensure_demo(runtime: Runtime, dataset_path: Path, *, console: Console) -> Demo:
    """Create the demo tenant and scenario if missing and load the dataset unless it is loaded already."""
    info = await _tenant(runtime, _keys_path(runtime.settings))
    scenario_id = await _scenario(runtime, info["tenant_id"])
    dataset = read_movielens(dataset_path)
    stored = await Interaction.get_pymongo_collection().count_documents({"tenant_id": info["tenant_id"]})
    if stored < dataset.ratings:
        with Progress(
            TextColumn("{task.description:>12}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
            console=console,
        ) as bar:
            tasks: dict[str, int] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done)

            counts = await load_dataset(
                runtime.services, dataset, tenant_id=info["tenant_id"], scenario_id=scenario_id, progress=progress
            )
        console.print(f"demo loaded: {counts}")
    return Demo(tenant_id=info["tenant_id"], scenario_id=scenario_id, keys=info["keys"])


def print_banner(demo: Demo, settings: Settings, *, console: Console) -> None:
    """Print where to go and which keys to use."""
    base = f"http://{settings.server.host}:{settings.server.port}"
    lines = [
        f"GraphQL + GraphiQL: [bold]{base}/graphql[/bold]",
        f"dashboard: [bold]{base}/dashboard[/bold] (sign in with the admin key)",
        f"demo tenant: {demo.tenant_id}   scenario 'movies': {demo.scenario_id}",
        *(f"{scope:8} key: {secret}" for scope, secret in demo.keys.items()),
        'send it as the header  Authorization: Bearer <key>',
    ]
    console.print(Panel("\n".join(lines), title="recograph demo", expand=False))
