"""The `recograph` command: serve, tenants, keys and the demo."""

from __future__ import annotations

import asyncio
import json
import math
import os
import shutil
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import typer
import uvicorn
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from domain.errors import BadInput, DomainError, NotFound
from domain.ratelimit import Limit, read_overrides
from domain.tenancy import Scope
from graph import demo as demo_setup
from graph.backup import lower_priority, run_restore, summary, write_backup
from graph.evaluate import register as register_evaluate
from graph.export import Kind as ExportKind, parse_time, write_export
from graph.logs import configure_logging
from graph.processes import PortUnavailable, auto_processes, listening_socket, serving_children
from graph.runtime import Runtime, open_runtime
from models.embedded import EmbeddedStartError, ServerUnavailable
from models.settings import Settings
from workers.consumer import process_exited, run_beside, run_until_signal
from workers.settings import missing_urls, standalone_worker

app = typer.Typer(help="recograph: recommendations as a GraphQL subgraph.", no_args_is_help=True, pretty_exceptions_show_locals=False)
tenants_app = typer.Typer(help="Create and list tenants.", no_args_is_help=True)
keys_app = typer.Typer(help="List, create, rotate and revoke a tenant's API keys.", no_args_is_help=True)
demo_app = typer.Typer(help="The MovieLens demo tenant.", no_args_is_help=True)
app.add_typer(tenants_app, name="tenants")
app.add_typer(keys_app, name="keys")
app.add_typer(demo_app, name="demo")
register_evaluate(app)
console = Console(stderr=True)
T = TypeVar("T")
DEFAULT_DATASET = Path(__file__).resolve().parent.parent / "demo" / "ml-latest-small"


@app.callback()
def main() -> None:
    """Send logs to stderr as configured, so stdout carries only what a command prints."""
    configure_logging(Settings().server)


def _settings(host: str | None = None, port: int | None = None, data_dir: Path | None = None, in_memory: bool = False) -> Settings:
    settings = Settings()
    server = settings.server
    updates: dict[str, Any] = {"in_memory": in_memory or server.in_memory}
    for name, value in (("host", host), ("port", port), ("data_dir", data_dir)):
        if value is not None:
            updates[name] = value
    return settings.model_copy(update={"server": server.model_copy(update=updates)})


def _serving(settings: Settings) -> Settings:
    """Return settings for a serving process: unless configured, the event consumer runs in a child process, so its
    CPU stays off the serving loop, the heap is frozen after models load, so full collections stay short, and one
    serving process runs per core (at most 4)."""
    updates: dict[str, Any] = {
        name: True for name in ("consumer_process", "freeze_heap") if name not in settings.server.model_fields_set
    }
    if "processes" not in settings.server.model_fields_set:
        updates["processes"] = auto_processes()
    return settings.model_copy(update={"server": settings.server.model_copy(update=updates)}) if updates else settings


def _run(work: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; turn known failures into one clear line and exit status 1."""
    try:
        return asyncio.run(work())
    except (ServerUnavailable, EmbeddedStartError, PortUnavailable) as exc:
        console.print(f"[red]recograph: {exc}[/red]", soft_wrap=True)  # one line, however narrow the terminal
    except DomainError as exc:
        console.print(f"[red]recograph: {exc.message}{f' ({exc.field})' if exc.field else ''}[/red]", soft_wrap=True)
    raise typer.Exit(1)


async def _with_runtime(settings: Settings, work: Callable[[Runtime], Awaitable[T]]) -> T:
    # CLI commands never open the vector shards: only `serve` holds them.
    runtime = await open_runtime(settings, with_vectors=False)
    try:
        return await work(runtime)
    finally:
        await runtime.close()


def _app(settings: Settings, runtime: Runtime) -> Any:
    """Return the ASGI app. Imported here: the GraphQL schema and the web framework take a second or two to import,
    which the CLI's other commands (keys, tenants, backup, export) do without."""
    from graph.app import create_app

    return create_app(settings, runtime=runtime)


class _Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: object) -> None:
        # uvicorn re-raises a caught SIGTERM/SIGINT after shutting down, which would end the process before the
        # runtime closes (embedded servers stopped in order, runtime.json removed). Exit normally instead.
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        self._captured_signals.clear()


async def serve_runtime(settings: Settings, runtime: Runtime) -> None:
    """Serve HTTP until SIGINT/SIGTERM (with `processes` > 1, beside serving children on the same socket); the caller
    closes the runtime."""
    host, port = settings.server.host, settings.server.port
    runtime.servers.set_api_url(f"http://{host}:{port}")
    children = settings.server.processes - 1
    # Serving children and the consumer child count into /metrics too: pool every process's values.
    pooled = runtime.servers.logs_dir.parent / "prometheus" / str(os.getpid())
    if children or (settings.server.run_worker and settings.server.consumer_process):
        from graph.metrics import share_across_processes  # with the web app's: only `serve` needs them

        share_across_processes(pooled)
    try:
        sock = listening_socket(host, port, first=True)  # refused at once, with one clear line, if the port is taken
        try:
            config = uvicorn.Config(_app(settings, runtime), log_config=None, lifespan="on")
            async with serving_children(settings, runtime, sock.getsockname()[1], children, on_exit=process_exited):
                await _Server(config).serve(sockets=[sock])
        finally:
            sock.close()
    finally:
        shutil.rmtree(pooled, ignore_errors=True)


@app.command("serve-child", hidden=True)
def serve_child() -> None:
    """Serve beside `serve` on its address, attached to its servers (see graph/processes.py)."""
    settings = Settings()

    async def work() -> None:
        # A vector store with a URL is shared; the embedded one stays with the parent (embeddings searched here).
        runtime = await open_runtime(settings, with_vectors=settings.qdrant.url is not None, serving=True)
        try:
            config = uvicorn.Config(_app(settings, runtime), log_config=None, lifespan="on")
            sock = listening_socket(settings.server.host, settings.server.port)
            try:
                await _Server(config).serve(sockets=[sock])
            finally:
                sock.close()
        finally:
            await runtime.close()

    _run(work)


@app.command()
def serve(
    host: str = typer.Option(None, help="Bind address (default 127.0.0.1)."),
    port: int = typer.Option(None, help="Port (default 8000)."),
    data_dir: Path = typer.Option(None, help="Data directory of the embedded servers (default ./data)."),
    in_memory: bool = typer.Option(False, "--in-memory", help="Keep nothing on disk."),
) -> None:
    """Serve GraphQL at /graphql, starting embedded servers for unset URLs."""
    settings = _serving(_settings(host, port, data_dir, in_memory))

    async def work() -> None:
        runtime = await open_runtime(settings)
        try:
            await serve_runtime(settings, runtime)
        finally:
            await runtime.close()

    _run(work)


@tenants_app.command("create")
def tenants_create(name: str, as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Create a tenant and print its admin, public and gateway keys (shown only this once)."""

    async def work(rt: Runtime) -> None:
        tenant, keys = await rt.services.tenancy.create_tenant(name)
        secrets = {scope.value: new.secret for scope, new in keys.items()}
        if as_json:
            print(json.dumps({"tenant_id": tenant.id, "keys": secrets}))
            return
        console.print(f"tenant [bold]{tenant.id}[/bold] ({tenant.name}); keys are shown only now:")
        for scope, secret in secrets.items():
            print(f"  {scope:8} {secret}")

    _run(lambda: _with_runtime(_settings(), work))


@tenants_app.command("list")
def tenants_list() -> None:
    """List tenants."""

    async def work(rt: Runtime) -> None:
        for tenant in await rt.services.tenancy.list_tenants():
            print(f"{tenant.id}\t{tenant.name}\t{tenant.created_at.isoformat()}")

    _run(lambda: _with_runtime(_settings(), work))


@tenants_app.command("limits")
def tenants_limits(
    tenant_id: str = typer.Argument(..., help="Tenant id, as `tenants create --json` prints it."),
    scope: Scope = typer.Option(None, help="The scope whose limit to set or clear."),
    rate: float = typer.Option(None, help="Requests per second the tenant's keys of the scope may sustain, each and "
                               "all together."),
    burst: int = typer.Option(None, help="Requests they may send at once (default: twice the rate)."),
    clear: bool = typer.Option(False, "--clear", help="Return the scope to the defaults."),
    show: bool = typer.Option(False, "--show", help="Print the tenant's limits per scope (the default action)."),
) -> None:
    """Set, clear or show a tenant's rate limits; every serving process applies a change within seconds."""

    async def work(rt: Runtime) -> None:
        if rate is not None or clear:
            if scope is None:
                raise BadInput("name the scope to set or clear with --scope", field="--scope")
            limit = None if clear else Limit(rate, burst or max(1, math.ceil(2 * rate)))
            await _change_limit(rt, tenant_id, scope, limit)
        if show or (rate is None and not clear):
            await _print_limits(rt, tenant_id)

    _run(lambda: _with_runtime(_settings(), work))


async def _change_limit(rt: Runtime, tenant_id: str, scope: Scope, limit: Limit | None) -> None:
    """Set the tenant's limit for the scope (None: back to the defaults) and say when serving applies it."""
    limits = rt.services.rate_limits
    if limit is None:
        told = await limits.clear_override(tenant_id, scope)
    else:
        told = await limits.set_override(tenant_id, scope, limit)
    when = "at once" if told else f"within {limits.policy.overrides_refresh_s:g} s (Redis did not answer)"
    console.print(f"{tenant_id} {scope.value}: {'back to the defaults' if limit is None else 'set'}; serving "
                  f"processes apply it {when}")


async def _print_limits(rt: Runtime, tenant_id: str) -> None:
    """Print each scope's limit per key, and whether it is the tenant's own or the default."""
    overrides = await read_overrides(tenant_id=tenant_id)
    for scope in Scope:
        key, together = rt.services.rate_limits.limits(scope, overrides)
        shared = f"all keys: {together.rate:g}/s, burst {together.burst}"
        source = "override" if scope in overrides else f"default ({shared})"
        print(f"{scope.value}\t{key.rate:g}/s\tburst {key.burst}\t{source}")


@keys_app.command("list")
def keys_list(tenant: str = typer.Option(..., help="Tenant id.")) -> None:
    """List a tenant's live keys by prefix."""

    async def work(rt: Runtime) -> None:
        for key in await rt.services.tenancy.list_keys(tenant_id=tenant):
            expires = key.expires_at.isoformat() if key.expires_at else "-"
            rule = "user-token" if key.require_user_token else "-"
            print(f"{key.id}\t{key.scope}\t{key.prefix}…\t{key.created_at.isoformat()}\t{expires}\t{rule}")

    _run(lambda: _with_runtime(_settings(), work))


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., help="Tenant id."), scope: Scope = typer.Option(Scope.PUBLIC),
    expires_at: datetime | None = typer.Option(
        None, "--expires-at", formats=["%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S"],
        help="When the key stops working (ISO-8601; UTC unless an offset is given).",
    ),
    require_user_token: bool = typer.Option(
        False, "--require-user-token", help="A public key that serves only the user its X-User-Token names."
    ),
) -> None:
    """Create a key and print its secret once."""
    if expires_at is not None and expires_at.tzinfo is None:
        expires_at = expires_at.replace(tzinfo=UTC)

    async def work(rt: Runtime) -> None:
        if await rt.services.tenancy.get_tenant(tenant_id=tenant) is None:
            raise NotFound(f"no tenant {tenant}", field="--tenant")
        new = await rt.services.tenancy.create_key(
            scope, tenant_id=tenant, expires_at=expires_at, require_user_token=require_user_token
        )
        print(f"{new.key.id}\t{new.key.scope}\t{new.secret}")

    _run(lambda: _with_runtime(_settings(), work))


@keys_app.command("rotate")
def keys_rotate(key_id: str, tenant: str = typer.Option(..., help="Tenant id.")) -> None:
    """Replace a key by a new one of the same scope (the old one stops working)."""

    async def work(rt: Runtime) -> None:
        new = await rt.services.tenancy.rotate_key(key_id, tenant_id=tenant)
        print(f"{new.key.id}\t{new.key.scope}\t{new.secret}")

    _run(lambda: _with_runtime(_settings(), work))


@keys_app.command("revoke")
def keys_revoke(key_id: str, tenant: str = typer.Option(..., help="Tenant id.")) -> None:
    """Revoke a key."""

    async def work(rt: Runtime) -> None:
        if not await rt.services.tenancy.revoke_key(key_id, tenant_id=tenant):
            console.print(f"[red]no live key {key_id} in tenant {tenant}[/red]")
            raise typer.Exit(1)
        print(f"revoked {key_id}")

    _run(lambda: _with_runtime(_settings(), work))


@app.command("export")
def export(
    kind: ExportKind = typer.Argument(..., help="What to export."),
    tenant: str = typer.Option(..., help="Tenant id."),
    scenario: str = typer.Option(None, help="Only this scenario's interactions or items (default: every scenario)."),
    start: str = typer.Option(None, "--from", help="Interactions at or after this time (ISO-8601; UTC without an "
                              "offset)."),
    end: str = typer.Option(None, "--to", help="Interactions before this time (ISO-8601; UTC without an offset)."),
    output: Path = typer.Option(..., "--output", "-o", help="The NDJSON file to write ('-': stdout)."),
) -> None:
    """Write a tenant's interactions (newest first), items or profiles as NDJSON, one JSON object a line, as
    `GET /export/...` streams them; attaches to a running `serve`'s servers."""

    async def work() -> None:
        since = parse_time(start, field="--from") if start is not None else None
        until = parse_time(end, field="--to") if end is not None else None
        lines = await _with_runtime(_settings(), lambda rt: write_export(
            rt, kind, tenant_id=tenant, scenario_id=scenario, start=since, end=until, output=output,
            console=console))
        console.print(f"{lines} {kind.value} written to {output}")

    _run(work)


@app.command("backup")
def backup(
    path: Path = typer.Argument(..., help="Where to write it: a new directory, or an archive when it ends in .tar or "
                                ".tar.gz (it must not exist)."),
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant (default: every tenant)."),
) -> None:
    """Write a backup of every tenant (or one) while `serve` keeps serving: documents, model artifacts and a manifest
    with the schema version and checksums; attaches to a running `serve`'s servers, at a lower priority."""
    lower_priority()

    async def work() -> None:
        manifest = await write_backup(_settings(), path, tenant_id=tenant, console=console)
        documents = sum(sum(t.counts.values()) for t in manifest.tenants)
        console.print(f"backup of {len(manifest.tenants)} tenant(s), {documents:,} documents, schema version "
                      f"{manifest.schema_version}, written to {path}", soft_wrap=True)

    _run(work)


@app.command("restore")
def restore(
    path: Path = typer.Argument(..., help="A backup: its directory, or its .tar / .tar.gz archive."),
    tenant: str = typer.Option(None, "--tenant", help="Only this tenant of the backup (default: all of them)."),
    data_dir: Path = typer.Option(None, help="Data directory to restore into (default: RECOGRAPH_DATA_DIR, ./data); "
                                  "with MONGODB_URL, REDIS_URL and QDRANT_URL set, those servers instead."),
) -> None:
    """Restore a backup's tenants into the data dir or the servers the settings name; refused for a tenant the
    target holds, and for a backup of a newer schema."""
    settings = _settings(data_dir=data_dir)
    _run(lambda: _restored(settings, path, tenant))


async def _restored(settings: Settings, path: Path, tenant: str | None) -> None:
    done = await run_restore(settings, path, tenant_id=tenant, console=console)
    console.print(summary(done), soft_wrap=True)


@demo_app.command("load")
def demo_load(path: Path = typer.Argument(DEFAULT_DATASET, help="A dataset in the MovieLens layout.")) -> None:
    """Load the demo tenant (items and ratings) from a MovieLens dataset; reloading stores nothing twice."""
    settings = _settings()
    _run(lambda: _with_runtime(settings, lambda rt: demo_setup.ensure_demo(rt, path, console=console)))


@demo_app.command("up")
def demo_up(
    path: Path = typer.Option(DEFAULT_DATASET, help="A dataset in the MovieLens layout."),
    host: str = typer.Option(None), port: int = typer.Option(None),
    in_memory: bool = typer.Option(False, "--in-memory"),
) -> None:
    """Load the demo tenant and train it if needed, print its keys, and serve (what `make run` does)."""
    settings = _serving(_settings(host, port, None, in_memory))

    async def work() -> None:
        runtime = await open_runtime(settings)
        try:
            demo = await demo_setup.ensure_demo(runtime, path, console=console)
            if not await _demo_trained(runtime, demo, path):
                await _train_with_progress(runtime, demo.tenant_id, demo.scenario_id)
            demo_setup.print_banner(demo, settings, console=console)
            await serve_runtime(settings, runtime)
        finally:
            await runtime.close()

    _run(work)


async def _demo_trained(runtime: Runtime, demo: demo_setup.Demo, path: Path) -> bool:
    """Return whether the demo's active model saw all of the demo data (loading is idempotent and append-only)."""
    from domain.datasets.movielens import read_movielens

    dataset = read_movielens(path)
    active = await runtime.services.training.active_version(demo.scenario_id, tenant_id=demo.tenant_id)
    seen = active.metrics if active is not None else {}
    return seen.get("interactions", 0) >= dataset.ratings and seen.get("items", 0) >= len(dataset.items)


async def _train_with_progress(runtime: Runtime, tenant_id: str, scenario_id: str) -> None:
    """Train a scenario in this process (before serving starts), showing the job's progress."""
    training, jobs = runtime.services.training, runtime.services.jobs
    job = await training.open_job(scenario_id, tenant_id=tenant_id)
    run = asyncio.create_task(training.train(job.id, tenant_id=tenant_id, scenario_id=scenario_id))
    columns = (TextColumn("{task.description:>12}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[stage]}"))
    with Progress(*columns, console=console) as bar:
        task = bar.add_task("training", total=1.0, stage="")
        while not run.done():
            await asyncio.wait({run}, timeout=0.3)
            if (current := await jobs.get(job.id, tenant_id=tenant_id)) is not None:
                bar.update(task, completed=current.progress, stage=current.stage or "")
    done = await jobs.get(job.id, tenant_id=tenant_id)
    if done is not None and done.status == "SUCCEEDED":
        console.print(f"demo trained: model version {(done.result or {}).get('version')} in {done.duration_s:.1f} s")
    else:
        why = done.error if done is not None else "its job record is gone"
        console.print(f"[yellow]demo training failed ({why}); serving without a trained model[/yellow]")


@app.command()
def worker() -> None:
    """Run the job worker and the event consumer as their own deployment (with MONGODB_URL and REDIS_URL set; without
    QDRANT_URL the models' embeddings are searched in memory by every process)."""
    settings = _settings()
    if missing := missing_urls(settings):
        # The embedded servers and vector shards belong to `serve`, so in embedded mode it runs the jobs itself.
        console.print(f"[red]recograph: a separate worker needs {', '.join(missing)}; in embedded mode `serve` runs "
                      "the jobs[/red]")
        raise typer.Exit(1)
    run_beside(standalone_worker(settings), settings)  # the arq worker and the event consumer


@app.command()
def consumer() -> None:
    """Run the event consumer alone until SIGTERM, attached to running servers (MONGODB_URL and REDIS_URL, or the
    data directory's); in embedded mode `serve` starts one as its child."""
    settings = _settings()
    _run(lambda: _with_runtime(settings, lambda rt: run_until_signal(rt.services, settings)))


if __name__ == "__main__":
    app()
