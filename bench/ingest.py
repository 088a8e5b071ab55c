"""Ingest benchmark: recograph's bulk mutations over HTTP against plain drivers on the same MongoDB server.

Starts `recograph serve` as a separate process on a temporary data dir (so the load generator never shares its
event loop), creates a tenant with `recograph tenants create`, a CUSTOM scenario over GraphQL, then times, on the
MovieLens demo data, in batches of 1,000:

  upsertItems         over HTTP   vs  raw pymongo `bulk_write([UpdateOne(..., upsert=True)])` of the same items
  recordInteractions  over HTTP   vs  Beanie `Interaction.insert_many` of the same interaction documents

Both sides of a pair run in the same process, against the same SecantusDB server (the baseline into a database of
its own, with the same indexes), with the same number of requests in flight, interleaved in rounds (alternating who
goes first) so that load from elsewhere on the machine hits both alike. Payloads and documents are prepared before
the clock starts. Afterwards it checks what was stored (totals, profiles, Redis item metadata and seen sets, a
resent batch) and, in-process, breaks one 1,000-row batch down into HTTP, GraphQL and domain steps.

    .venv/bin/python bench/ingest.py [--events 50000] [--concurrency 2] [--rounds 4]

Writes bench/results/ingest.json and prints a rich table and the same as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import io
import json
import os
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import msgspec  # noqa: E402
import structlog  # noqa: E402
from beanie import init_beanie  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402
from redis import asyncio as aioredis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from domain.catalogue import CatalogueService, ItemData, validate_item  # noqa: E402
from domain.datasets.movielens import rating_events, read_movielens  # noqa: E402
from domain.events import EventService, InteractionData, _document  # noqa: E402
from domain.ids import utcnow  # noqa: E402
from domain.profiles import ProfileService  # noqa: E402
from domain.scenarios.service import ScenarioService  # noqa: E402
from domain.services import Services  # noqa: E402
from models.cache import RedisCache, tenant_key  # noqa: E402
from models.documents import DOCUMENTS, Interaction, Item, composite_id  # noqa: E402
from models.settings import Settings  # noqa: E402

DATASET = ROOT / "demo" / "ml-latest-small"
RESULTS = ROOT / "bench" / "results" / "ingest.json"
BASELINE_DB = "recograph_bench_baseline"
TARGET = 0.6
BATCH = 1000
console = Console()

CREATE_SCENARIO = "mutation($i: CreateScenarioInput!) { createScenario(input: $i) { id } }"
UPSERT_ITEMS = (
    "mutation($s: ID!, $items: [ItemInput!]!) "
    "{ upsertItems(scenarioId: $s, items: $items) { upserted errors { index field message } } }"
)
RECORD = (
    "mutation($events: [InteractionInput!]!) "
    "{ recordInteractions(events: $events) { accepted duplicates errors { index field message } } }"
)
PROFILE = "query($u: ID!) { profile(userId: $u) { interactionCount } }"


# ---------------------------------------------------------------- the server under test


def free_port() -> int:
    """Return a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recograph_command() -> str:
    """Return the `recograph` script beside this interpreter, or the one on PATH."""
    beside = Path(sys.executable).parent / "recograph"
    return str(beside) if beside.exists() else (shutil.which("recograph") or "recograph")


class ServeProcess:
    """`recograph serve` on a data dir, in a session of its own so that it and its servers can be stopped."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        self.env = {**os.environ, "RECOGRAPH_LOG_LEVEL": "WARNING", "RECOGRAPH_DATA_DIR": str(data_dir)}
        self.log_path = data_dir / "serve.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Spawn the server."""
        argv = [recograph_command(), "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    async def wait_ready(self, client: httpx.AsyncClient, timeout_s: float = 240.0) -> None:
        """Poll /health/ready until it answers 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recograph serve exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if (await client.get(f"{self.url}/health/ready", timeout=5)).status_code == 200:
                    return
            await asyncio.sleep(0.25)
        raise RuntimeError(f"recograph serve not ready within {timeout_s:.0f} s:\n{self.tail()}")

    def runtime_info(self) -> dict[str, Any]:
        """Return serve's runtime.json (Mongo and Redis URLs)."""
        return json.loads((self.data_dir / "runtime.json").read_text())

    def create_tenant(self, name: str) -> tuple[dict[str, Any], str | None]:
        """Run `recograph tenants create NAME --json` against this server; return its JSON and any complaint."""
        argv = [recograph_command(), "tenants", "create", name, "--json"]
        done = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=300, cwd=self.data_dir)
        found = [line for line in done.stdout.splitlines() if line.startswith("{") and '"tenant_id"' in line]
        if not found:
            raise RuntimeError(f"tenants create printed no tenant (rc {done.returncode}):\n{done.stdout}\n{done.stderr[-3000:]}")
        complaint = None
        if done.returncode != 0 or len(done.stdout.strip().splitlines()) != 1:
            last = (done.stderr.strip().splitlines() or ["?"])[-1]
            complaint = f"`recograph tenants create --json` exited {done.returncode}, stdout {len(done.stdout.splitlines())} lines; stderr: {last}"
        return json.loads(found[0]), complaint

    def pids(self) -> dict[str, int]:
        """Return the pids of serve and of the servers it started."""
        out = {"serve": self.proc.pid}
        for child in _children(self.proc.pid):
            cmd = _cmdline(child)
            out["mongo" if "secantusd" in cmd else "redis" if "redis-server" in cmd else f"child-{child}"] = child
        return out

    def tail(self, lines: int = 40) -> str:
        """Return the end of the server log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM serve (it stops its own servers); kill the whole session if it does not go."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _cmdline(pid: int) -> str:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")
    return ""


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """Return user+system CPU seconds of each process (Linux /proc), plus this one as `client`."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"client": time.process_time()}
    for name, pid in pids.items():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            out[name] = (int(fields[11]) + int(fields[12])) / tick
    return out


# ---------------------------------------------------------------- data


def batches(rows: Sequence[Any], size: int = BATCH) -> list[list[Any]]:
    """Split rows into consecutive batches."""
    return [list(rows[i : i + size]) for i in range(0, len(rows), size)]


def iso(ts: datetime | None) -> str | None:
    """Return an ISO-8601 string with offset."""
    return ts.isoformat() if ts is not None else None


def item_json(d: ItemData) -> dict[str, Any]:
    """Return an ItemInput as a client sends it."""
    return {
        "id": d.id, "title": d.title, "categories": list(d.categories), "tags": list(d.tags),
        "attributes": dict(d.attributes or {}), "publishedAt": iso(d.published_at), "status": d.status,
    }


def event_json(e: InteractionData) -> dict[str, Any]:
    """Return an InteractionInput as a client sends it."""
    return {
        "scenarioId": e.scenario_id, "userId": e.user_id, "itemId": e.item_id, "type": e.type, "value": e.value,
        "timestamp": iso(e.timestamp), "eventId": e.event_id,
    }


def body(query: str, variables: dict[str, Any]) -> bytes:
    """Return a GraphQL request body, encoded once before timing."""
    return json.dumps({"query": query, "variables": variables}).encode()


# ---------------------------------------------------------------- GraphQL over HTTP


@dataclass
class Api:
    client: httpx.AsyncClient
    url: str
    admin: str

    async def post(self, payload: bytes) -> dict[str, Any]:
        """Post an encoded GraphQL body; return `data`, raising on any error."""
        response = await self.client.post(
            f"{self.url}/graphql", content=payload,
            headers={"Authorization": f"Bearer {self.admin}", "Content-Type": "application/json"},
        )
        answer = response.json()
        if response.status_code != 200 or answer.get("errors"):
            raise RuntimeError(f"GraphQL failed ({response.status_code}): {str(answer)[:2000]}")
        return answer["data"]

    async def query(self, query: str, variables: dict[str, Any]) -> dict[str, Any]:
        """Encode and post."""
        return await self.post(body(query, variables))


@dataclass
class Tally:
    """What recograph answered over a run."""

    stored: int = 0
    duplicates: int = 0
    errors: list[Any] = field(default_factory=list)

    def add(self, result: dict[str, Any], stored_key: str) -> None:
        """Add one mutation result."""
        self.stored += result[stored_key]
        self.duplicates += result.get("duplicates", 0)
        self.errors.extend(result["errors"][:5])


# ---------------------------------------------------------------- timing


async def run_batches(work: Callable[[Any], Awaitable[None]], todo: Sequence[Any], concurrency: int) -> float:
    """Run work over todo with `concurrency` in flight; return wall seconds."""
    queue = iter(todo)

    async def worker() -> None:
        for batch in queue:
            await work(batch)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - began


@dataclass
class Measured:
    name: str
    docs: int = 0
    seconds: float = 0.0
    cpu: dict[str, float] = field(default_factory=lambda: defaultdict(float))

    @property
    def rate(self) -> float:
        return self.docs / self.seconds if self.seconds else 0.0


async def compare(
    ours: Measured, base: Measured, pairs: list[tuple[Any, Any]], work: tuple[Callable, Callable],
    *, rounds: int, concurrency: int, pids: dict[str, int],
) -> None:
    """Time both paths over the same batches, interleaved in rounds and alternating which goes first."""
    per_round = max(1, -(-len(pairs) // rounds))
    for number, start in enumerate(range(0, len(pairs), per_round)):
        chunk = pairs[start : start + per_round]
        legs = [(ours, work[0], [p[0] for p in chunk]), (base, work[1], [p[1] for p in chunk])]
        for measured, fn, todo in legs if number % 2 == 0 else legs[::-1]:
            before = cpu_seconds(pids)
            measured.seconds += await run_batches(fn, todo, concurrency)
            after = cpu_seconds(pids)
            measured.docs += sum(len(b) if isinstance(b, list) else b[1] for b in todo)
            for name in after:
                measured.cpu[name] += after[name] - before.get(name, after[name])


# ---------------------------------------------------------------- checks


async def verify(
    api: Api, runtime: dict[str, Any], tenant_id: str, scenario_id: str, events: list[InteractionData],
    items: int, first_batch: bytes, database: str,
) -> dict[str, Any]:
    """Check what was stored against what was sent, from profiles, Redis state and whole-collection counts."""
    users = [events[0].user_id, events[len(events) // 2].user_id, events[-1].user_id]
    sent = Counter(e.user_id for e in events)
    distinct = defaultdict(set)
    for e in events:
        distinct[e.user_id].add(e.item_id)
    checks: dict[str, Any] = {"users": {}}
    redis = aioredis.from_url(runtime["redis_url"])
    mongo = AsyncMongoClient(runtime["mongo_url"])
    try:
        for user in dict.fromkeys(users):
            profile = (await api.query(PROFILE, {"u": user}))["profile"]
            seen = await redis.scard(tenant_key(tenant_id, "seen", scenario_id, user))
            checks["users"][user] = {
                "sent": sent[user], "interactionCount": profile and profile["interactionCount"],
                "distinct_items": len(distinct[user]), "redis_seen": seen,
            }
        checks["redis_item_meta"] = await redis.hlen(tenant_key(tenant_id, "items"))
        checks["mongo_interactions"] = await mongo[database]["interactions"].count_documents({"tenant_id": tenant_id})
        checks["baseline_interactions"] = await mongo[BASELINE_DB]["interactions"].count_documents({})
        checks["baseline_items"] = await mongo[BASELINE_DB]["items"].count_documents({})
        resent = (await api.post(first_batch))["recordInteractions"]
        checks["resend"] = {"accepted": resent["accepted"], "duplicates": resent["duplicates"], "errors": len(resent["errors"])}
    finally:
        await redis.aclose()
        await mongo.close()
    first = min(BATCH, len(events))
    checks["ok"] = (
        all(u["sent"] == u["interactionCount"] and u["distinct_items"] == u["redis_seen"] for u in checks["users"].values())
        and checks["redis_item_meta"] == items
        and checks["mongo_interactions"] == checks["baseline_interactions"] == len(events)
        and checks["baseline_items"] == items
        and checks["resend"] == {"accepted": 0, "duplicates": first, "errors": 0}
    )
    return checks


# ---------------------------------------------------------------- where the time goes (in-process)


class StepTimer:
    """Wrap async methods on classes to add up the time spent in each."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = defaultdict(float)
        self._undo: list[tuple[type, str, Any]] = []

    def wrap(self, owner: type, name: str, label: str) -> None:
        """Time every call of owner.name under label."""
        original = owner.__dict__[name]
        totals = self.totals

        async def timed(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                totals[label] += time.perf_counter() - began

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def reset(self) -> None:
        """Forget the totals so far."""
        self.totals.clear()

    def restore(self) -> None:
        """Put the original methods back."""
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


def ms(seconds: float) -> float:
    """Return milliseconds, rounded."""
    return round(seconds * 1000, 1)


async def _clock(coro: Awaitable[Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = await coro
    return time.perf_counter() - began, result


def _coercion_seconds(schema: Any, query: str, variables: dict[str, Any]) -> float:
    from graphql import parse
    from graphql.execution.values import get_variable_values

    definitions = parse(query).definitions[0].variable_definitions
    began = time.perf_counter()
    coerced = get_variable_values(schema._schema, definitions, variables)
    spent = time.perf_counter() - began
    if isinstance(coerced, list):
        raise RuntimeError(f"variables do not coerce: {coerced[:3]}")
    return spent


def _relabel_events(events: list[InteractionData], tag: str) -> list[InteractionData]:
    return [dataclasses.replace(e, event_id=f"{e.event_id}~{tag}") for e in events]


def _relabel_items(items: list[ItemData], tag: str) -> list[ItemData]:
    return [dataclasses.replace(i, id=f"{tag}-{i.id}") for i in items]


async def _in_process(runtime: dict[str, Any], database: str, admin: str) -> tuple[Any, Any, Any, Callable]:
    """Bind Beanie to recograph's own database and build the services, schema and a request context."""
    from graph.schema import build_schema, guard_extensions
    from resolvers.context import RequestContext
    from resolvers.loaders import make_loaders

    mongo = AsyncMongoClient(runtime["mongo_url"], tz_aware=True)
    await init_beanie(database=mongo[database], document_models=DOCUMENTS)
    cache = RedisCache.from_url(runtime["redis_url"])
    services = Services.build(cache=cache, vectors=None)
    principal = await services.tenancy.authenticate(admin)

    def context() -> RequestContext:
        loaders = make_loaders(services, principal.tenant_id)
        return RequestContext(services=services, principal=principal, loaders=loaders, log=structlog.get_logger(), request_id="bench")

    async def close() -> None:
        await cache.close()
        await mongo.close()

    return services, build_schema(guard_extensions()), context, close


async def breakdown(
    api: Api, runtime: dict[str, Any], database: str, tenant_id: str, scenario_id: str,
    events: list[InteractionData], items: list[ItemData], reps: int,
) -> dict[str, Any]:
    """Split one batch of each mutation into client, HTTP, GraphQL and domain steps (medians over reps)."""
    services, schema, context, close = await _in_process(runtime, database, api.admin)
    timer = StepTimer()
    timer.wrap(EventService, "_scenario_weights", "scenario lookup (Mongo)")
    timer.wrap(CatalogueService, "metas", "item metadata (Redis HMGET + decode)")
    timer.wrap(EventService, "_insert", "insert_many (Mongo)")
    timer.wrap(ProfileService, "apply", "profile bulk upsert (Mongo)")
    timer.wrap(EventService, "_mark_seen", "seen sets (Redis pipeline)")
    timer.wrap(ScenarioService, "get_or_raise", "scenario lookup (Mongo)")
    timer.wrap(CatalogueService, "_mirror", "mirror metadata (Redis)")
    try:
        out = {
            "recordInteractions": await _events_breakdown(api, services, schema, context, timer, tenant_id, events, reps),
            "upsertItems": await _items_breakdown(api, services, schema, context, timer, tenant_id, scenario_id, items, reps),
            "profile_execute_recordInteractions": await _profile_execute(schema, context, events),
        }
    finally:
        timer.restore()
        await close()
    return out


async def _events_breakdown(api, services, schema, context, timer, tenant_id, events, reps) -> dict[str, Any]:
    samples: dict[str, list[float]] = defaultdict(list)
    for rep in range(reps + 1):  # rep 0 warms the caches and is dropped
        variables = {"events": [event_json(e) for e in _relabel_events(events, f"h{rep}")]}
        began = time.perf_counter()
        payload = body(RECORD, variables)
        encode = time.perf_counter() - began
        http, _ = await _clock(api.post(payload))
        began = time.perf_counter()
        msgspec.json.decode(payload)
        decode = time.perf_counter() - began
        x_vars = {"events": [event_json(e) for e in _relabel_events(events, f"x{rep}")]}
        coercion = _coercion_seconds(schema, RECORD, x_vars)
        executed, result = await _clock(schema.execute(RECORD, variable_values=x_vars, context_value=context()))
        if result.errors:
            raise RuntimeError(f"in-process execute failed: {result.errors}")
        timer.reset()
        domain, recorded = await _clock(services.events.record(_relabel_events(events, f"d{rep}"), tenant_id=tenant_id))
        if recorded.accepted != len(events):
            raise RuntimeError(f"in-process record accepted {recorded.accepted} of {len(events)}")
        if rep == 0:
            continue
        _add(samples, {"client: encode JSON body": encode, "HTTP round trip (one request in flight)": http,
                       "JSON decode of the body (msgspec, as Litestar)": decode,
                       "GraphQL variable coercion (graphql-core)": coercion,
                       "in-process schema.execute (no HTTP)": executed, "domain EventService.record": domain})
        parts = dict(timer.totals)
        parts["validation + documents (Python)"] = domain - sum(parts.values())
        _add(samples, {f"  record: {k}": v for k, v in parts.items()})
    return _summarise(samples, len(events))


async def _items_breakdown(api, services, schema, context, timer, tenant_id, scenario_id, items, reps) -> dict[str, Any]:
    samples: dict[str, list[float]] = defaultdict(list)
    for rep in range(reps + 1):
        variables = {"s": scenario_id, "items": [item_json(i) for i in _relabel_items(items, f"h{rep}")]}
        began = time.perf_counter()
        payload = body(UPSERT_ITEMS, variables)
        encode = time.perf_counter() - began
        http, _ = await _clock(api.post(payload))
        x_vars = {"s": scenario_id, "items": [item_json(i) for i in _relabel_items(items, f"x{rep}")]}
        coercion = _coercion_seconds(schema, UPSERT_ITEMS, x_vars)
        executed, result = await _clock(schema.execute(UPSERT_ITEMS, variable_values=x_vars, context_value=context()))
        if result.errors:
            raise RuntimeError(f"in-process execute failed: {result.errors}")
        fresh = _relabel_items(items, f"d{rep}")
        began = time.perf_counter()
        now = utcnow()
        for data in fresh:
            validate_item(data)
            CatalogueService._upsert_op(data, tenant_id, scenario_id, now)
        python = time.perf_counter() - began
        timer.reset()
        domain, _ = await _clock(services.catalogue.upsert(fresh, tenant_id=tenant_id, scenario_id=scenario_id))
        if rep == 0:
            continue
        _add(samples, {"client: encode JSON body": encode, "HTTP round trip (one request in flight)": http,
                       "GraphQL variable coercion (graphql-core)": coercion,
                       "in-process schema.execute (no HTTP)": executed, "domain CatalogueService.upsert": domain})
        parts = {**timer.totals, "validation + ops (Python)": python}
        parts["bulk_write upsert (Mongo)"] = domain - sum(parts.values())
        _add(samples, {f"  upsert: {k}": v for k, v in parts.items()})
    return _summarise(samples, len(items))


def _add(samples: dict[str, list[float]], values: dict[str, float]) -> None:
    for key, value in values.items():
        samples[key].append(value)


def _summarise(samples: dict[str, list[float]], rows: int) -> dict[str, Any]:
    medians = {k: statistics.median(v) for k, v in samples.items()}
    keys = list(medians)
    execute = next(k for k in keys if k.startswith("in-process schema.execute"))
    domain = next(k for k in keys if k.startswith("domain "))
    http = "HTTP round trip (one request in flight)"
    derived = {
        "GraphQL layer (execute - domain)": medians[execute] - medians[domain],
        "  of which other than coercion (Strawberry conversion, to_domain, resolvers, result)":
            medians[execute] - medians[domain] - medians["GraphQL variable coercion (graphql-core)"],
        "HTTP + Litestar + context + extensions (round trip - execute)": medians[http] - medians[execute],
    }
    return {"rows": rows, "ms": {k: ms(v) for k, v in {**medians, **derived}.items()}}


async def _profile_execute(schema: Any, context: Callable, events: list[InteractionData]) -> list[str]:
    """Return the top functions by own time in one in-process recordInteractions execute."""
    variables = {"events": [event_json(e) for e in _relabel_events(events, "prof")]}
    profiler = cProfile.Profile()
    profiler.enable()
    result = await schema.execute(RECORD, variable_values=variables, context_value=context())
    profiler.disable()
    if result.errors:
        raise RuntimeError(f"in-process execute failed: {result.errors}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
    return [line for line in out.getvalue().splitlines() if line.strip()][-19:]


# ---------------------------------------------------------------- report


def rows_of(pairs: list[tuple[Measured, Measured]]) -> list[dict[str, Any]]:
    """Return one row per path: recograph rows carry the ratio to their baseline."""
    rows = []
    for ours, base in pairs:
        ratio = ours.rate / base.rate if base.rate else 0.0
        for measured, is_ours in ((ours, True), (base, False)):
            rows.append({
                "path": measured.name, "documents": measured.docs, "seconds": round(measured.seconds, 2),
                "docs_per_s": round(measured.rate, 1), "ratio": round(ratio, 3) if is_ours else None,
                "target": f">= {TARGET}" if is_ours else "baseline",
                "pass": (ratio >= TARGET) if is_ours else None,
                "cpu_s_per_1000": {k: round(v / measured.docs * 1000, 3) for k, v in measured.cpu.items()},
            })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print the results as a rich table."""
    table = Table(title="ingest: recograph over HTTP vs plain drivers, same MongoDB server")
    for column in ("path", "documents", "seconds", "docs/s", "ratio", "target", "CPU s / 1,000 docs"):
        table.add_column(column, justify="left" if column in ("path", "target", "CPU s / 1,000 docs") else "right")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"[{'green' if r['pass'] else 'red'}]{r['ratio']:.2f}[/]"
        cpu = " ".join(f"{k} {v:.2f}" for k, v in r["cpu_s_per_1000"].items())
        table.add_row(r["path"], f"{r['documents']:,}", f"{r['seconds']:.2f}", f"{r['docs_per_s']:,.0f}", ratio, r["target"], cpu)
    console.print(table)


def markdown(rows: list[dict[str, Any]]) -> str:
    """Return the results as a Markdown table."""
    lines = ["| path | documents | seconds | docs/s | ratio | target |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        lines.append(f"| {r['path']} | {r['documents']:,} | {r['seconds']:.2f} | {r['docs_per_s']:,.0f} | {ratio} | {r['target']} |")
    return "\n".join(lines)


def print_breakdown(parts: dict[str, Any]) -> None:
    """Print the per-batch breakdown."""
    for name in ("recordInteractions", "upsertItems"):
        table = Table(title=f"{name}: one batch of {parts[name]['rows']:,}, median ms")
        table.add_column("step")
        table.add_column("ms", justify="right")
        for step, value in parts[name]["ms"].items():
            table.add_row(step, f"{value:.1f}")
        console.print(table)
    console.print("[bold]cProfile, in-process recordInteractions execute, by own time:[/bold]")
    console.print("\n".join(parts["profile_execute_recordInteractions"]), markup=False, highlight=False)


# ---------------------------------------------------------------- the run


async def bench(args: argparse.Namespace, serve: ServeProcess) -> dict[str, Any]:
    """Run everything against a started server; return the results."""
    settings = Settings()
    database = settings.mongo.database
    warnings: list[str] = []
    limits = httpx.Limits(max_connections=max(4, args.concurrency), max_keepalive_connections=max(4, args.concurrency))
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        await serve.wait_ready(client)
        runtime = serve.runtime_info()
        keys, complaint = serve.create_tenant("bench")
        if complaint:
            warnings.append(complaint)
        tenant_id = keys["tenant_id"]
        api = Api(client, serve.url, keys["keys"]["admin"])
        scenario_id = (await api.query(CREATE_SCENARIO, {"i": {"name": "bench", "template": "CUSTOM"}}))["createScenario"]["id"]
        dataset = read_movielens(args.dataset)
        items = dataset.items
        events = list(islice(rating_events(dataset, scenario_id), args.events))
        console.print(f"tenant {tenant_id}, scenario {scenario_id}: {len(items):,} items, {len(events):,} events, "
                      f"batches of {BATCH:,}, {args.concurrency} in flight, {args.rounds} rounds")

        base_client = AsyncMongoClient(runtime["mongo_url"], tz_aware=True)
        await base_client.drop_database(BASELINE_DB)
        await init_beanie(database=base_client[BASELINE_DB], document_models=[Item, Interaction])
        pids = serve.pids()
        load_before = os.getloadavg()

        item_tally, event_tally = Tally(), Tally()
        now = utcnow()
        item_pairs = [
            ((body(UPSERT_ITEMS, {"s": scenario_id, "items": [item_json(i) for i in b]}), len(b)),
             [CatalogueService._upsert_op(i, tenant_id, scenario_id, now) for i in b])
            for b in batches(items)
        ]
        event_pairs = [
            ((body(RECORD, {"events": [event_json(e) for e in b]}), len(b)),
             [Interaction(**_document(e, composite_id(tenant_id, e.event_id), e.event_id, tenant_id, now)) for e in b])
            for b in batches(events)
        ]

        async def post_items(job: tuple[bytes, int]) -> None:
            item_tally.add((await api.post(job[0]))["upsertItems"], "upserted")

        async def post_events(job: tuple[bytes, int]) -> None:
            event_tally.add((await api.post(job[0]))["recordInteractions"], "accepted")

        async def bulk_items(ops: list) -> None:
            await base_client[BASELINE_DB]["items"].bulk_write(ops, ordered=False)

        async def insert_events(docs: list[Interaction]) -> None:
            await Interaction.insert_many(docs)

        c = args.concurrency
        items_ours = Measured(f"upsertItems over HTTP (c={c})")
        items_base = Measured(f"pymongo bulk_write UpdateOne(upsert=True) (c={c})")
        await compare(items_ours, items_base, item_pairs, (post_items, bulk_items), rounds=args.rounds, concurrency=c, pids=pids)
        events_ours = Measured(f"recordInteractions over HTTP (c={c})")
        events_base = Measured(f"Beanie Interaction.insert_many (c={c})")
        await compare(events_ours, events_base, event_pairs, (post_events, insert_events), rounds=args.rounds, concurrency=c, pids=pids)
        load_after = os.getloadavg()
        await base_client.close()

        rows = rows_of([(items_ours, items_base), (events_ours, events_base)])
        print_table(rows)
        answered = {
            "items": {"upserted": item_tally.stored, "errors": item_tally.errors},
            "events": {"accepted": event_tally.stored, "duplicates": event_tally.duplicates, "errors": event_tally.errors},
        }
        checks = await verify(api, runtime, tenant_id, scenario_id, events, len(items), event_pairs[0][0][0], database)
        checks["ok"] = checks["ok"] and item_tally.stored == len(items) and event_tally.stored == len(events) \
            and not item_tally.errors and not event_tally.errors and not event_tally.duplicates
        console.print(f"verification: {'[green]ok[/green]' if checks['ok'] else '[red]FAILED[/red]'} "
                      f"{json.dumps(checks['users'])} resend={checks['resend']}")

        parts = None
        if args.breakdown_reps > 0:
            parts = await breakdown(api, runtime, database, tenant_id, scenario_id, events[:BATCH], items[:BATCH], args.breakdown_reps)
            print_breakdown(parts)
    return {
        "when": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(), "loadavg_before": load_before,
        "loadavg_after": load_after, "events": len(events), "items": len(items), "batch": BATCH,
        "concurrency": args.concurrency, "rounds": args.rounds, "rows": rows, "answered": answered,
        "verification": checks, "breakdown_per_batch": parts, "warnings": warnings, "markdown": markdown(rows),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="ratings to send as RATING events (default 50,000)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests / bulk calls in flight on both sides (default 2)")
    parser.add_argument("--rounds", type=int, default=4, help="interleaved rounds per comparison (default 4)")
    parser.add_argument("--breakdown-reps", type=int, default=5, help="in-process breakdown repetitions; 0 skips (default 5)")
    parser.add_argument("--dataset", type=Path, default=DATASET, help="a MovieLens-layout directory")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir (for post-mortems)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 1 when what was stored does not match what was sent."""
    args = parse_args(argv)
    data_dir = Path(tempfile.mkdtemp(prefix="recograph-bench-"))
    serve = ServeProcess(data_dir, free_port())
    try:
        serve.start()
        results = asyncio.run(bench(args, serve))
    except BaseException:
        console.print(f"[red]bench failed; server log tail:[/red]\n{serve.tail()}", markup=True, highlight=False)
        raise
    finally:
        serve.stop()
        if args.keep:
            console.print(f"kept {data_dir}")
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str))
    for warning in results["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"\nwrote {args.output}\n")
    print(results["markdown"])
    return 0 if results["verification"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
