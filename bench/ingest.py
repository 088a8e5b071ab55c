"""Ingest benchmark: recograph's bulk mutations over HTTP against plain drivers on the same MongoDB server.

Starts `recograph serve` as a separate process on a temporary data dir with the embedded servers (so the load
generator never shares its event loop), creates a tenant with `recograph tenants create`, a CUSTOM scenario over
GraphQL, then times, on the MovieLens demo data, in batches of 1,000:

  upsertItems         over HTTP   vs  raw pymongo `bulk_write([UpdateOne(..., upsert=True)])` of the same items
  recordInteractions  over HTTP   vs  Beanie `Interaction.insert_many` of the same interaction documents

Both sides are driven from this process against the same SecantusDB server (the baseline into a database of its
own, with the same indexes), with the same number of calls in flight, interleaved in rounds (alternating who goes
first) so that load from elsewhere on the machine hits both alike. Payloads and documents are prepared before the
clock starts. Afterwards it checks what was stored (three users' profiles and Redis seen sets, Redis item metadata,
whole-collection counts, a resent batch) and, in-process, breaks one 1,000-row batch of each mutation down into
HTTP, GraphQL and domain steps, with the MongoDB server's CPU for each.

    .venv/bin/python bench/ingest.py [--events 50000] [--concurrency 2] [--rounds 4] [--shuffle]

Writes bench/results/ingest.json and prints a rich table and the same as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import dataclasses
import gc
import io
import json
import os
import pstats
import random
import shutil
import signal
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
from graphql import parse  # noqa: E402
from graphql.execution.values import get_variable_values  # noqa: E402
from pymongo import AsyncMongoClient  # noqa: E402
from redis import asyncio as aioredis  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from domain.catalogue import CatalogueService, ItemData  # noqa: E402
from domain.datasets.movielens import rating_events, read_movielens  # noqa: E402
from domain.events import EventService, InteractionData, _document  # noqa: E402
from domain.ids import utcnow  # noqa: E402
from domain.profiles import ProfileService  # noqa: E402
from domain.scenarios.service import ScenarioService  # noqa: E402
from domain.services import Services  # noqa: E402
from graph.schema import build_schema, guard_extensions  # noqa: E402
from models.cache import RedisCache, tenant_key  # noqa: E402
from models.documents import DOCUMENTS, Interaction, Item, composite_id  # noqa: E402
from models.settings import Settings  # noqa: E402
from resolvers.context import RequestContext  # noqa: E402
from resolvers.loaders import make_loaders  # noqa: E402
from harness import children, cmdline, cpu_seconds, free_port, recograph_command, stop_leftovers

DATASET = ROOT / "demo" / "ml-latest-small"
RESULTS = ROOT / "bench" / "results" / "ingest.json"
BASELINE_DB = "recograph_bench_baseline"
TARGET = 0.6
BATCH = 1000
console = Console(width=None if sys.stdout.isatty() else 200)

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






class ServeProcess:
    """`recograph serve` on a data dir, in a session of its own so that it and its servers can be stopped."""

    def __init__(self, data_dir: Path, port: int) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        # Embedded servers only: URLs from the environment would point the bench at other servers.
        env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URL", "REDIS_URL", "QDRANT_URL")}
        self.env = {**env, "RECOGRAPH_LOG_LEVEL": "WARNING", "RECOGRAPH_DATA_DIR": str(data_dir)}
        self.log_path = data_dir / "serve.log"
        self.proc: subprocess.Popen | None = None
        self._servers: dict[int, str] = {}  # pid -> command line of the servers serve started

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
        for child in children(self.proc.pid):
            cmd = self._servers.setdefault(child, cmdline(child))
            out["mongo" if "secantusd" in cmd else "redis" if "redis-server" in cmd else f"child-{child}"] = child
        return out

    def tail(self, lines: int = 40) -> str:
        """Return the end of the server log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM serve (it stops its own servers); kill the whole session if it does not go."""
        if self.proc is None:
            return
        if self.proc.poll() is not None:
            self._stop_leftovers()
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self._stop_leftovers()

    def _stop_leftovers(self) -> None:
        """Stop servers serve left running (own sessions, so killpg misses them)."""
        stop_leftovers(self._servers)








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
    rounds: list[float] = field(default_factory=list)  # docs/s of each round

    @property
    def rate(self) -> float:
        """Return documents per second over all rounds."""
        return self.docs / self.seconds if self.seconds else 0.0

    def add(self, docs: int, seconds: float, before: dict[str, float], after: dict[str, float]) -> None:
        """Add one timed leg and the CPU each process spent in it."""
        self.docs += docs
        self.seconds += seconds
        self.rounds.append(docs / seconds)
        for name in after:
            self.cpu[name] += after[name] - before.get(name, after[name])


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
            before = cpu_seconds(pids, client=True)
            seconds = await run_batches(fn, todo, concurrency)
            docs = sum(len(b) if isinstance(b, list) else b[1] for b in todo)
            measured.add(docs, seconds, before, cpu_seconds(pids, client=True))


# ---------------------------------------------------------------- checks


async def verify(
    api: Api, runtime: dict[str, Any], tenant_id: str, scenario_id: str, events: list[InteractionData],
    items: int, first_batch: bytes, database: str,
) -> dict[str, Any]:
    """Check what was stored against what was sent: profiles, Redis state, whole-collection counts, a resend."""
    redis = aioredis.from_url(runtime["redis_url"])
    mongo = AsyncMongoClient(runtime["mongo_url"])
    try:
        checks: dict[str, Any] = {"users": await _check_users(api, redis, tenant_id, scenario_id, events)}
        checks["redis_item_meta"] = await redis.hlen(tenant_key(tenant_id, "items"))
        checks["mongo_interactions"] = await mongo[database]["interactions"].count_documents({"tenant_id": tenant_id})
        checks["baseline_interactions"] = await mongo[BASELINE_DB]["interactions"].count_documents({})
        checks["baseline_items"] = await mongo[BASELINE_DB]["items"].count_documents({})
        resent = (await api.post(first_batch))["recordInteractions"]
        checks["resend"] = {"accepted": resent["accepted"], "duplicates": resent["duplicates"], "errors": len(resent["errors"])}
    finally:
        await redis.aclose()
        await mongo.close()
    checks["ok"] = (
        all(u["sent"] == u["interactionCount"] and u["distinct_items"] == u["redis_seen"] for u in checks["users"].values())
        and checks["redis_item_meta"] == items
        and checks["mongo_interactions"] == checks["baseline_interactions"] == len(events)
        and checks["baseline_items"] == items
        and checks["resend"] == {"accepted": 0, "duplicates": min(BATCH, len(events)), "errors": 0}
    )
    return checks


async def _check_users(
    api: Api, redis: aioredis.Redis, tenant_id: str, scenario_id: str, events: list[InteractionData], wait_s: float = 60.0
) -> dict[str, dict[str, Any]]:
    """Compare three users' profile counts and Redis seen sets with what was sent (waiting for a lagging consumer)."""
    sent, distinct = Counter(e.user_id for e in events), defaultdict(set)
    for e in events:
        distinct[e.user_id].add(e.item_id)
    users = dict.fromkeys([events[0].user_id, events[len(events) // 2].user_id, events[-1].user_id])
    began = time.monotonic()
    while True:
        found = {}
        for user in users:
            profile = (await api.query(PROFILE, {"u": user}))["profile"]
            found[user] = {
                "sent": sent[user], "interactionCount": profile and profile["interactionCount"],
                "distinct_items": len(distinct[user]),
                "redis_seen": await redis.scard(tenant_key(tenant_id, "seen", scenario_id, user)),
            }
        settled = all(f["sent"] == f["interactionCount"] for f in found.values())
        if settled or time.monotonic() - began > wait_s:
            for f in found.values():
                f["waited_s"] = round(time.monotonic() - began, 1)
            return found
        await asyncio.sleep(0.5)


# ---------------------------------------------------------------- where the time goes (in-process)


class StepTimer:
    """Wrap async methods on classes to add up wall time, CPU of this process and MongoDB CPU spent in each."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.wall: dict[str, float] = defaultdict(float)
        self.cpu: dict[str, float] = defaultdict(float)
        self.mongo: dict[str, float] = defaultdict(float)
        self._mongo_pid = {"mongo": pids["mongo"]} if "mongo" in pids else {}
        self._undo: list[tuple[type, str, Any]] = []
        self.missing: list[str] = []

    def wrap(self, owner: type, name: str, label: str) -> None:
        """Time every call of owner.name under label (a method renamed since is skipped and noted)."""
        original = owner.__dict__.get(name)
        if original is None:
            self.missing.append(f"{owner.__name__}.{name}")
            return
        timer = self

        async def timed(*args: Any, **kwargs: Any) -> Any:
            began, began_cpu, before = time.perf_counter(), time.process_time(), cpu_seconds(timer._mongo_pid, client=True)
            try:
                return await original(*args, **kwargs)
            finally:
                after = cpu_seconds(timer._mongo_pid, client=True)
                timer.wall[label] += time.perf_counter() - began
                timer.cpu[label] += time.process_time() - began_cpu
                timer.mongo[label] += after.get("mongo", 0.0) - before.get("mongo", 0.0)

        setattr(owner, name, timed)
        self._undo.append((owner, name, original))

    def reset(self) -> None:
        """Forget the totals so far."""
        for totals in (self.wall, self.cpu, self.mongo):
            totals.clear()

    def restore(self) -> None:
        """Put the original methods back."""
        for owner, name, original in reversed(self._undo):
            setattr(owner, name, original)


def ms(seconds: float) -> float:
    """Return milliseconds, rounded."""
    return round(seconds * 1000, 1)


async def _measure(coro: Awaitable[Any], pids: dict[str, int]) -> tuple[float, float, dict[str, float], Any]:
    """Await coro; return its wall seconds, this process's CPU seconds, other processes' CPU seconds, result."""
    before = cpu_seconds(pids, client=True)
    began, began_cpu = time.perf_counter(), time.process_time()
    result = await coro
    wall, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    after = cpu_seconds(pids, client=True)
    return wall, cpu, {k: after[k] - before[k] for k in pids if k in after and k in before}, result


def _coercion_cpu(schema: Any, query: str, variables: dict[str, Any]) -> float:
    definitions = parse(query).definitions[0].variable_definitions
    began = time.process_time()
    coerced = get_variable_values(schema._schema, definitions, variables)
    spent = time.process_time() - began
    if isinstance(coerced, list):
        raise RuntimeError(f"variables do not coerce: {coerced[:3]}")
    return spent


def _relabel_events(events: list[InteractionData], tag: str) -> list[InteractionData]:
    return [dataclasses.replace(e, event_id=f"{e.event_id}~{tag}") for e in events]


def _relabel_items(items: list[ItemData], tag: str) -> list[ItemData]:
    return [dataclasses.replace(i, id=f"{tag}-{i.id}") for i in items]


@dataclass
class InProcess:
    """recograph's schema and services in this process, on serve's own MongoDB database and Redis."""

    services: Services
    schema: Any
    context: Callable[[], Any]
    close: Callable[[], Awaitable[None]]


async def in_process(runtime: dict[str, Any], database: str, admin: str) -> InProcess:
    """Bind Beanie to recograph's database and build the services, schema and a request context."""
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

    return InProcess(services, build_schema(guard_extensions()), context, close)


@dataclass
class Case:
    """One mutation to break down: how to build its variables for a fresh copy of the batch."""

    name: str
    query: str
    rows: int
    variables: Callable[[str], dict[str, Any]]
    domain_label: str
    steps_label: str


async def breakdown(api: Api, runtime: dict[str, Any], database: str, pids: dict[str, int], cases: list[Case], reps: int) -> dict[str, Any]:
    """Split one batch of each mutation into HTTP, GraphQL and domain steps (medians over reps, wall and CPU)."""
    here = await in_process(runtime, database, api.admin)
    timer = StepTimer(pids)
    timer.wrap(EventService, "record", "domain: EventService.record")
    timer.wrap(EventService, "_scenario_weights", "scenario lookup (Mongo)")
    timer.wrap(CatalogueService, "metas", "item metadata (Redis HMGET + decode)")
    timer.wrap(EventService, "_insert", "insert_many interactions (Mongo)")
    timer.wrap(ProfileService, "apply", "profile bulk upsert (Mongo)")
    timer.wrap(EventService, "_mark_seen", "seen sets + user versions (Redis pipeline)")
    timer.wrap(CatalogueService, "upsert", "domain: CatalogueService.upsert")
    timer.wrap(ScenarioService, "get_or_raise", "scenario lookup (Mongo)")
    timer.wrap(CatalogueService, "_write", "write items: insert_many, upserts for existing (Mongo)")
    timer.wrap(CatalogueService, "_mirror", "mirror metadata (Redis)")
    try:
        out: dict[str, Any] = {"http_overhead": await _http_overhead(api, pids)}
        out.update({case.name: await _break_down(api, here, timer, pids, case, reps) for case in cases})
        out["cprofile_recordInteractions"] = await _profile_execute(here, cases[0])
        out["methods_not_found"] = timer.missing
    finally:
        timer.restore()
        await here.close()
    return out


async def _http_overhead(api: Api, pids: dict[str, int], requests: int = 200) -> dict[str, float]:
    """Return serve's wall and CPU ms per request for `{ __typename }`: HTTP, Litestar, context, extensions."""
    payload = body("{ __typename }", {})
    await api.post(payload)
    wall, _, others, _ = await _measure(_repeat(api, payload, requests), pids)
    return {"requests": requests, "wall_ms": ms(wall / requests), "serve_cpu_ms": ms(others.get("serve", 0.0) / requests)}


async def _repeat(api: Api, payload: bytes, times: int) -> None:
    for _ in range(times):
        await api.post(payload)


Sample = tuple[float | None, float | None, float | None]  # wall, CPU of the process doing it, MongoDB server CPU


async def _break_down(api: Api, here: InProcess, timer: StepTimer, pids: dict[str, int], case: Case, reps: int) -> dict[str, Any]:
    samples: dict[str, list[Sample]] = defaultdict(list)
    for rep in range(reps + 1):  # rep 0 warms the caches and is dropped
        began = time.process_time()
        payload = body(case.query, case.variables(f"h{rep}"))
        encode = time.process_time() - began
        http = await _measure(api.post(payload), pids)
        began = time.process_time()
        msgspec.json.decode(payload)
        decode = time.process_time() - began
        variables = case.variables(f"x{rep}")
        coercion = _coercion_cpu(here.schema, case.query, variables)
        timer.reset()
        executed = await _measure(here.schema.execute(case.query, variable_values=variables, context_value=here.context()), pids)
        if executed[3].errors:
            raise RuntimeError(f"in-process execute failed: {executed[3].errors}")
        if rep:
            for key, value in _rows(case, encode, decode, coercion, http, executed, timer).items():
                samples[key].append(value)
    return {"rows": case.rows, "columns": ["wall ms", "CPU ms", "MongoDB CPU ms"],
            "ms": {k: [_median([s[i] for s in v]) for i in range(3)] for k, v in samples.items()}}


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return ms(statistics.median(known)) if known else None


def _rows(case: Case, encode, decode, coercion, http, executed, timer: StepTimer) -> dict[str, Sample]:
    http_wall, _, http_others, _ = http
    wall, cpu, others, _ = executed
    serve_cpu = http_others.get("serve")  # /proc ticks: 10 ms resolution
    domain_wall, domain_cpu = timer.wall[case.domain_label], timer.cpu[case.domain_label]
    steps = [k for k in timer.wall if k != case.domain_label]
    return {
        "client: encode the JSON body": (encode, encode, None),
        "HTTP round trip, one request in flight (CPU: serve process)": (http_wall, serve_cpu, http_others.get("mongo")),
        "in-process schema.execute, no HTTP (CPU: this process)": (wall, cpu, others.get("mongo")),
        "  GraphQL layer (execute - domain)": (wall - domain_wall, cpu - domain_cpu, None),
        "    for scale: JSON decode of the body (msgspec, as Litestar)": (decode, decode, None),
        "    variable coercion (graphql-core)": (coercion, coercion, None),
        "    rest: Strawberry argument conversion, to_domain, resolver, result": (
            wall - domain_wall - coercion, cpu - domain_cpu - coercion, None),
        f"  {case.domain_label}": (domain_wall, domain_cpu, timer.mongo[case.domain_label]),
        **{f"    {k}": (timer.wall[k], timer.cpu[k], timer.mongo[k] if "Mongo" in k else None) for k in steps},
        f"    {case.steps_label}": (
            domain_wall - sum(timer.wall[k] for k in steps), domain_cpu - sum(timer.cpu[k] for k in steps), None),
    }


async def _profile_execute(here: InProcess, case: Case) -> list[str]:
    """Return the top functions by own time in one in-process execute of the case."""
    variables = case.variables("prof")
    profiler = cProfile.Profile()
    profiler.enable()
    result = await here.schema.execute(case.query, variable_values=variables, context_value=here.context())
    profiler.disable()
    if result.errors:
        raise RuntimeError(f"in-process execute failed: {result.errors}")
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(18)
    lines = [line.replace(str(ROOT / ".venv" / "lib"), "…") for line in out.getvalue().splitlines() if line.strip()]
    return lines[-19:]


# ---------------------------------------------------------------- report


def rows_of(pairs: list[tuple[Measured, Measured]]) -> list[dict[str, Any]]:
    """Return one row per path: recograph rows carry the ratio to their baseline."""
    rows = []
    for ours, base in pairs:
        ratio = ours.rate / base.rate if base.rate else 0.0
        per_round = [round(a / b, 2) for a, b in zip(ours.rounds, base.rounds)]
        for measured, is_ours in ((ours, True), (base, False)):
            rows.append({
                "path": measured.name, "documents": measured.docs, "seconds": round(measured.seconds, 2),
                "docs_per_s": round(measured.rate, 1), "ratio": round(ratio, 3) if is_ours else None,
                "target": f">= {TARGET}" if is_ours else "baseline",
                "pass": (ratio >= TARGET) if is_ours else None,
                "ratio_per_round": per_round if is_ours else None,
                "docs_per_s_per_round": [round(r) for r in measured.rounds],
                "cpu_s_per_1000": {k: round(v / measured.docs * 1000, 3) for k, v in measured.cpu.items()},
            })
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """Print the results as a rich table."""
    table = Table(title="ingest: recograph over HTTP vs plain drivers, same MongoDB server")
    left = ("path", "target", "ratio per round", "CPU s / 1,000 docs")
    for column in ("path", "documents", "seconds", "docs/s", "ratio", "target", "ratio per round", "CPU s / 1,000 docs"):
        table.add_column(column, justify="left" if column in left else "right")
    for r in rows:
        ratio = "" if r["ratio"] is None else f"[{'green' if r['pass'] else 'red'}]{r['ratio']:.2f}[/]"
        cpu = " ".join(f"{k} {v:.2f}" for k, v in r["cpu_s_per_1000"].items())
        rounds = " ".join(f"{v:.2f}" for v in r["ratio_per_round"] or [])
        table.add_row(r["path"], f"{r['documents']:,}", f"{r['seconds']:.2f}", f"{r['docs_per_s']:,.0f}", ratio, r["target"], rounds, cpu)
    console.print(table)


def markdown(rows: list[dict[str, Any]]) -> str:
    """Return the results as a Markdown table."""
    lines = ["| path | documents | seconds | docs/s | ratio | target | ratio per round |", "|---|---:|---:|---:|---:|---|---|"]
    for r in rows:
        ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}"
        rounds = " ".join(f"{v:.2f}" for v in r["ratio_per_round"] or [])
        lines.append(f"| {r['path']} | {r['documents']:,} | {r['seconds']:.2f} | {r['docs_per_s']:,.0f} | {ratio} | {r['target']} | {rounds} |")
    return "\n".join(lines)


def print_breakdown(parts: dict[str, Any]) -> None:
    """Print the per-batch breakdown."""
    for name, part in parts.items():
        if not isinstance(part, dict) or "rows" not in part:
            continue
        table = Table(title=f"{name}: one batch of {part['rows']:,}, medians")
        table.add_column("step")
        for column in part["columns"]:
            table.add_column(column, justify="right")
        for step, values in part["ms"].items():
            table.add_row(step, *("" if v is None else f"{v:.1f}" for v in values))
        console.print(table)
    overhead = parts["http_overhead"]
    console.print(f"HTTP + Litestar + context + extensions per request ({{ __typename }} x{overhead['requests']}): "
                  f"{overhead['wall_ms']} ms wall, {overhead['serve_cpu_ms']} ms serve CPU")
    if parts.get("methods_not_found"):
        console.print(f"[yellow]not timed (renamed since this bench was written):[/yellow] {parts['methods_not_found']}")
    print("cProfile, one in-process recordInteractions execute, by own time:")
    print("\n".join(parts["cprofile_recordInteractions"]))


# ---------------------------------------------------------------- the run


@dataclass
class Setup:
    api: Api
    runtime: dict[str, Any]
    database: str
    tenant_id: str
    scenario_id: str
    items: list[ItemData]
    events: list[InteractionData]
    pids: dict[str, int]
    warnings: list[str]


async def set_up(args: argparse.Namespace, serve: ServeProcess, client: httpx.AsyncClient) -> Setup:
    """Wait for serve, create the tenant (CLI) and the scenario (GraphQL), read the dataset."""
    await serve.wait_ready(client)
    keys, complaint = serve.create_tenant("bench")
    api = Api(client, serve.url, keys["keys"]["admin"])
    created = await api.query(CREATE_SCENARIO, {"i": {"name": "bench", "template": "CUSTOM"}})
    scenario_id = created["createScenario"]["id"]
    dataset = read_movielens(args.dataset)
    events = list(islice(rating_events(dataset, scenario_id), args.events))
    if args.shuffle:
        random.Random(7).shuffle(events)
    return Setup(
        api=api, runtime=serve.runtime_info(), database=Settings().mongo.database, tenant_id=keys["tenant_id"],
        scenario_id=scenario_id, items=dataset.items, events=events, pids=serve.pids(),
        warnings=[complaint] if complaint else [],
    )


async def run_comparisons(s: Setup, args: argparse.Namespace) -> tuple[list[tuple[Measured, Measured]], dict[str, Tally], bytes]:
    """Time both pairs; return them, what recograph answered, and the first events batch's body."""
    base = AsyncMongoClient(s.runtime["mongo_url"], tz_aware=True)
    await base.drop_database(BASELINE_DB)
    await init_beanie(database=base[BASELINE_DB], document_models=[Item, Interaction])
    tallies = {"items": Tally(), "events": Tally()}
    now = utcnow()
    item_pairs = [
        ((body(UPSERT_ITEMS, {"s": s.scenario_id, "items": [item_json(i) for i in b]}), len(b)),
         [CatalogueService._upsert_op(i, s.tenant_id, s.scenario_id, now) for i in b])
        for b in batches(s.items)
    ]
    event_pairs = [
        ((body(RECORD, {"events": [event_json(e) for e in b]}), len(b)),
         [Interaction(**_document(e, composite_id(s.tenant_id, e.event_id), e.event_id, s.tenant_id, now)) for e in b])
        for b in batches(s.events)
    ]

    async def post_items(job: tuple[bytes, int]) -> None:
        tallies["items"].add((await s.api.post(job[0]))["upsertItems"], "upserted")

    async def post_events(job: tuple[bytes, int]) -> None:
        tallies["events"].add((await s.api.post(job[0]))["recordInteractions"], "accepted")

    async def bulk_items(ops: list) -> None:
        await base[BASELINE_DB]["items"].bulk_write(ops, ordered=False)

    async def insert_events(docs: list[Interaction]) -> None:
        await Interaction.insert_many(docs)

    c = args.concurrency
    pairs = [
        (Measured(f"upsertItems over HTTP (c={c})"), Measured(f"pymongo bulk_write UpdateOne(upsert=True) (c={c})")),
        (Measured(f"recordInteractions over HTTP (c={c})"), Measured(f"Beanie Interaction.insert_many (c={c})")),
    ]
    try:
        for (ours, theirs), todo, work in zip(pairs, (item_pairs, event_pairs), ((post_items, bulk_items), (post_events, insert_events))):
            await compare(ours, theirs, todo, work, rounds=args.rounds, concurrency=c, pids=s.pids)
    finally:
        await base.close()
    return pairs, tallies, event_pairs[0][0][0]


def breakdown_cases(s: Setup) -> list[Case]:
    """Return the two mutations to break down, each on a fresh copy of its first batch."""
    events, items = s.events[:BATCH], s.items[:BATCH]
    return [
        Case("recordInteractions", RECORD, len(events),
             lambda tag: {"events": [event_json(e) for e in _relabel_events(events, tag)]},
             "domain: EventService.record", "validation + documents (Python)"),
        Case("upsertItems", UPSERT_ITEMS, len(items),
             lambda tag: {"s": s.scenario_id, "items": [item_json(i) for i in _relabel_items(items, tag)]},
             "domain: CatalogueService.upsert", "validation + documents (Python)"),
    ]


async def bench(args: argparse.Namespace, serve: ServeProcess) -> dict[str, Any]:
    """Run everything against a started server; return the results (written before the breakdown runs)."""
    limits = httpx.Limits(max_connections=max(4, args.concurrency), max_keepalive_connections=max(4, args.concurrency))
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        s = await set_up(args, serve, client)
        console.print(f"tenant {s.tenant_id}, scenario {s.scenario_id}: {len(s.items):,} items, {len(s.events):,} events, "
                      f"batches of {BATCH:,}, {args.concurrency} in flight, {args.rounds} rounds, shuffled: {args.shuffle}")
        load_before = os.getloadavg()
        pairs, tallies, first_batch = await run_comparisons(s, args)
        load_after = os.getloadavg()
        rows = rows_of(pairs)
        print_table(rows)
        checks = await verify(s.api, s.runtime, s.tenant_id, s.scenario_id, s.events, len(s.items), first_batch, s.database)
        checks["answered"] = {k: dataclasses.asdict(t) for k, t in tallies.items()}
        checks["ok"] = checks["ok"] and tallies["items"].stored == len(s.items) and tallies["events"].stored == len(s.events) \
            and not tallies["items"].errors and not tallies["events"].errors and not tallies["events"].duplicates
        console.print(f"verification: {'[green]ok[/green]' if checks['ok'] else '[red]FAILED[/red]'} "
                      f"users {json.dumps(checks['users'])}, resend {checks['resend']}")
        results = {
            "when": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(), "loadavg_before": load_before,
            "loadavg_after": load_after, "events": len(s.events), "items": len(s.items), "batch": BATCH,
            "concurrency": args.concurrency, "rounds": args.rounds, "shuffled": args.shuffle, "rows": rows,
            "verification": checks, "breakdown_per_batch": None, "warnings": s.warnings, "markdown": markdown(rows),
        }
        write_results(args.output, results)
        if args.breakdown_reps > 0:
            gc.collect()
            try:
                results["breakdown_per_batch"] = await breakdown(s.api, s.runtime, s.database, s.pids, breakdown_cases(s), args.breakdown_reps)
                print_breakdown(results["breakdown_per_batch"])
            except Exception as exc:  # noqa: BLE001 - the breakdown is diagnostic; keep the comparison
                results["warnings"].append(f"breakdown failed: {exc!r}")
            write_results(args.output, results)
    return results


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write the results as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=50_000, help="ratings to send as RATING events (default 50,000)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests / bulk calls in flight on both sides (default 2)")
    parser.add_argument("--shuffle", action="store_true",
                        help="shuffle the events (fixed seed): batches then hold many users, as live traffic does")
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
    for warning in results["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}")
    console.print(f"\nwrote {args.output}\n")
    print(results["markdown"])
    return 0 if results["verification"]["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
