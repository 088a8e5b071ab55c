"""Serving benchmark: `recommendations(first: 20)` for the demo tenant under a real HTTP load generator.

Starts `recograph serve` as a separate process on a temporary data dir with the embedded servers, loads the
MovieLens demo into it with `recograph demo load` (which attaches to serve's servers through runtime.json), trains
the demo scenario over GraphQL (`trainScenario`, then polls `job`), and then measures, on that one server:

  1. fixed rate (default 50 req/s for 30 s, wrk paced by a Lua script): `recommendations(scenarioId, userId,
     first: 20) { requestId items { item { id title categories } score } }` with the public key.
     "cold": every request is a (user, context) pair never asked before, so the per-user answer cache misses and
     the engine recomputes; "warm": a few users asked again and again (answer cache hits). Target: cold p99 <= 30 ms.
     A short `hey -q 50 -c 1` run of one fixed body cross-checks the wrk pacing and latency figures.
  2. saturation (wrk, default -t2 -c16, 15 s, in alternating rounds) of `{ __typename }`, `items(scenarioId,
     first: 20) { edges { node { id title categories } } }` and recommendations (cold and warm) -> req/s, and the
     ratios recommendations / items (target >= 0.7) and recommendations / __typename.
  3. serve's RSS and peak RSS from /proc (target: under 1.5 GB), and the CPU each process used in each leg.
  4. an A/A experiment of the demo scenario (two variants equal to the scenario, all users): cold saturation rounds
     outside it (PAUSED) and inside it (RUNNING), alternating; target: serving CPU per cold answer inside within
     10% of outside (`--no-experiment-leg` skips it).

It ends with a per-stage breakdown of cold recommendations from `debug: true` answers (engine timings, recall
sources dropped), and optionally (`--py-spy S`) a py-spy profile of serve under cold saturation load.

    .venv/bin/python bench/serve.py [--duration 30] [--rate 50] [--keep] [--skip-load DATA_DIR]

Needs `wrk` and `hey` (Debian: `apt-get install -y hey wrk`). Writes bench/results/serve.json and prints a rich
table and the same as Markdown.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console
from rich.table import Table
from harness import children, cmdline, cpu_seconds, free_port, recograph_command, stop_leftovers

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results" / "serve.json"
DEMO_USERS = [str(u) for u in range(1, 611)]  # MovieLens latest-small user ids
P99_TARGET_MS = 30.0
RATIO_TARGET = 0.7
RSS_TARGET_BYTES = 1.5e9
WRK_TIMEOUT_S = 30  # a request unanswered this long counts as a (socket) error
FALLBACK_SOURCES = {"trending", "popular", "fresh", "affinity"}  # what an untrained scenario still answers from
console = Console(width=None if sys.stdout.isatty() else 200)

SCENARIOS = "{ scenarios(first: 100) { edges { node { id name } } } }"
TRAIN = "mutation($s: ID!) { trainScenario(scenarioId: $s) { id status } }"
JOB = "query($j: ID!) { job(id: $j) { status progress stage error durationSeconds result } }"
TYPENAME = "{ __typename }"
ITEMS = "query($s: ID!) { items(scenarioId: $s, first: 20) { edges { node { id title categories } } } }"
RECOMMEND = (
    "query($s: ID!, $u: ID!, $c: JSON) { recommendations(scenarioId: $s, userId: $u, first: 20, context: $c) "
    "{ requestId items { item { id title categories } score } } }"
)
CHECK = (
    "query($s: ID!, $u: ID!, $c: JSON) { recommendations(scenarioId: $s, userId: $u, first: 20, context: $c) "
    "{ requestId items { item { id title categories } score sources } } }"
)
DEBUG = (
    "query($s: ID!, $u: ID!, $c: JSON) { recommendations(scenarioId: $s, userId: $u, first: 20, context: $c, "
    "debug: true) { debug } }"
)
USER, NONCE = "__BENCH_USER__", "__BENCH_NONCE__"


# ---------------------------------------------------------------- the server under test






class ServeProcess:
    """`recograph serve` on a data dir, in a session of its own so that it and its servers can be stopped."""

    def __init__(self, data_dir: Path, port: int, *, processes: int | None = None) -> None:
        self.data_dir, self.port = data_dir, port
        self.url = f"http://127.0.0.1:{port}"
        # Embedded servers only: URLs from the environment would point the bench at other servers.
        env = {k: v for k, v in os.environ.items() if k not in ("MONGODB_URL", "REDIS_URL", "QDRANT_URL")}
        self.env = {**env, "RECOGRAPH_LOG_LEVEL": "WARNING", "RECOGRAPH_DATA_DIR": str(data_dir),
                    "RECOGRAPH_PORT": str(port)}
        # The schedules would run their jobs in serve itself (the embedded worker) whenever the wall clock says: a
        # SIMILARITY refit at :30 loads the training data on serve's event loop (a warm p99 of 9 s at 10:30 in one
        # run). The bench trains explicitly and measures serving, so no schedule runs.
        self.env["RECOGRAPH_JOBS_CRON"] = "false"
        # Saturation sends more than any one client should: rate limits far above it, still checked on every request.
        self.env.update({f"RECOGRAPH_RATE_{name}": "1000000" for name in (
            "PUBLIC_RATE", "PUBLIC_BURST", "ADMIN_RATE", "ADMIN_BURST", "GATEWAY_RATE", "GATEWAY_BURST",
            "TENANT_RATE", "TENANT_BURST")})
        if processes is not None:
            self.env["RECOGRAPH_PROCESSES"] = str(processes)
        self.log_path = data_dir / "serve.log"
        self.proc: subprocess.Popen | None = None
        self._servers: dict[int, str] = {}  # pid -> command line of the servers serve started

    def start(self) -> None:
        """Spawn the server."""
        argv = [recograph_command(), "serve", "--data-dir", str(self.data_dir), "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def wait_ready(self, client: httpx.Client, timeout_s: float = 240.0) -> None:
        """Poll /health/ready until it answers 200."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"recograph serve exited with {self.proc.returncode}:\n{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{self.url}/health/ready", timeout=5).status_code == 200:
                    return
            time.sleep(0.25)
        raise RuntimeError(f"recograph serve not ready within {timeout_s:.0f} s:\n{self.tail()}")

    def cli(self, *args: str, timeout_s: float = 1800) -> subprocess.CompletedProcess:
        """Run a `recograph` command that attaches to this server through <data_dir>/runtime.json."""
        done = subprocess.run([recograph_command(), *args], env=self.env, capture_output=True, text=True,
                              timeout=timeout_s, cwd=self.data_dir)
        if done.returncode != 0:
            raise RuntimeError(f"`recograph {' '.join(args)}` exited {done.returncode}:\n{done.stdout[-2000:]}\n"
                               f"{done.stderr[-3000:]}")
        return done

    def pids(self) -> dict[str, int]:
        """Return the pids of serve and of the servers it started."""
        out = {"serve": self.proc.pid}
        serving = 1
        for child in sorted(children(self.proc.pid)):
            cmd = self._servers.setdefault(child, cmdline(child))
            if "serve-child" in cmd:
                serving += 1
                out[f"serve-{serving}"] = child
                continue
            kinds = (("secantusd", "mongo"), ("redis-server", "redis"), ("forkserver", "forkserver"),
                     ("resource_tracker", "resource_tracker"), ("graph.cli consumer", "consumer"))
            out[next((n for word, n in kinds if word in cmd), f"child-{child}")] = child
        return out

    def serving_pids(self) -> list[int]:
        """Return the pids of the processes answering requests (serve and its serving children)."""
        return [pid for name, pid in self.pids().items() if is_serving(name)]

    def tail(self, lines: int = 40) -> str:
        """Return the end of the server log."""
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        """SIGTERM serve (it stops its own servers); kill the whole session if it does not go."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.pids()  # remember the servers' command lines for _stop_leftovers
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








def serving_memory(serve: ServeProcess) -> dict[str, int]:
    """Return the largest VmRSS and VmHWM among the serving processes, and their RSS summed (`total_rss`)."""
    each = [memory(pid) for pid in serve.serving_pids()]
    return {"VmRSS": max(m.get("VmRSS", 0) for m in each), "VmHWM": max(m.get("VmHWM", 0) for m in each),
            "total_rss": sum(m.get("VmRSS", 0) for m in each), "processes": len(each)}


def is_serving(name: str) -> bool:
    """Tell whether a process name of `ServeProcess.pids` is one that answers requests."""
    return name == "serve" or name.startswith("serve-")


def serving_cpu(cpu: dict[str, float]) -> float:
    """Return the CPU percent of the serving processes together."""
    return sum(v for k, v in cpu.items() if is_serving(k))


def machine_busy_seconds() -> float:
    """Return the CPU seconds the whole machine has been busy (all processes), from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def settle(pids: dict[str, int], *, quiet_percent: float = 15.0, timeout_s: float = 90.0) -> float:
    """Wait until serve and its servers are idle (requests a stopped generator left queued are done); return seconds."""
    began = time.perf_counter()
    watched = {k: v for k, v in pids.items() if is_serving(k) or k in ("mongo", "redis")}
    while time.perf_counter() - began < timeout_s:
        before = sum(cpu_seconds(watched).values())
        time.sleep(0.5)
        if 100 * (sum(cpu_seconds(watched).values()) - before) / 0.5 < quiet_percent:
            break
    return round(time.perf_counter() - began, 1)


def memory(pid: int) -> dict[str, int]:
    """Return VmRSS and VmHWM (peak RSS) of a process in bytes, from /proc/PID/status."""
    out = {}
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0]) * 1024
    return out


# ---------------------------------------------------------------- GraphQL over HTTP


@dataclass
class Api:
    client: httpx.Client
    url: str

    def query(self, query: str, variables: dict[str, Any] | None, key: str) -> dict[str, Any]:
        """Post a query; return `data`, raising on any error."""
        response = self.client.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                                    headers={"Authorization": f"Bearer {key}"})
        answer = response.json()
        if response.status_code != 200 or answer.get("errors"):
            raise RuntimeError(f"GraphQL failed ({response.status_code}): {str(answer)[:2000]}")
        return answer["data"]


def body(query: str, variables: dict[str, Any] | None = None) -> str:
    """Return a GraphQL request body (compact JSON, as a client sends it)."""
    return json.dumps({"query": query, "variables": variables or {}}, separators=(",", ":"))


@dataclass(frozen=True)
class Load:
    """One request shape: a fixed body, or users rotating (warm), or (user, context nonce) never repeated (cold)."""

    name: str
    template: str  # the JSON body, with USER / NONCE where they vary
    users: tuple[str, ...] = ()
    label: str = ""  # the GraphQL shown in the report

    @property
    def rotating(self) -> bool:
        return USER in self.template


def loads(scenario_id: str, warm_users: int) -> dict[str, Load]:
    """Return the request shapes the bench drives."""
    cold = body(RECOMMEND, {"s": scenario_id, "u": USER, "c": {"bench": NONCE}})
    warm = body(RECOMMEND, {"s": scenario_id, "u": USER, "c": None})
    return {
        "typename": Load("{ __typename }", body(TYPENAME), label="{ __typename }"),
        "items": Load("items(first: 20)", body(ITEMS, {"s": scenario_id}),
                      label="items(scenarioId, first: 20) { edges { node { id title categories } } }"),
        "cold": Load("recommendations, cold", cold, tuple(DEMO_USERS),
                     label="recommendations(first: 20), distinct (user, context) per request: answer cache misses"),
        "warm": Load("recommendations, warm", warm, tuple(DEMO_USERS[:warm_users]),
                     label=f"recommendations(first: 20), {warm_users} users asked again: answer cache hits"),
    }


# ---------------------------------------------------------------- load generators


def check_tools() -> list[str]:
    """Return the missing load generators."""
    return [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]


def _lua_str(text: str) -> str:
    """Return a Lua long-bracket string literal holding text verbatim."""
    level = 0
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def lua_script(load: Load, key: str, out: Path, tag: str, *, rate: float | None, threads: int) -> str:
    """Return a wrk script: rotating bodies, GraphQL error counting, and (with rate) paced requests.

    Paced mode runs one connection per thread: each thread sends rate/threads requests a second on its own
    schedule (offset so that the threads interleave), waiting in `delay()` until the next slot (LuaJIT FFI
    clock_gettime). A slot missed because the previous answer was late is sent at once: like hey, this is a
    closed loop per connection, so the JSON also holds each request's latency from its *scheduled* start, which
    counts the time a late answer made the next request wait (coordinated omission).
    """
    pieces = re.split(f"({USER}|{NONCE})", load.template)
    users = "{" + ",".join(_lua_str(u) for u in load.users) + "}"
    if load.rotating:
        # USER slots take the next user, NONCE slots (cold) a string no request in this run used before.
        expr = " .. ".join({USER: "u", NONCE: "nonce"}.get(p, _lua_str(p)) for p in pieces if p)
        request_fn = f"""
local users = {users}
local counter = 0
function request()
  counter = counter + 1
  local u = users[((counter - 1) * threads_n + thread_id) % #users + 1]
  local nonce = TAG .. "-" .. thread_id .. "-" .. counter
  local payload = {expr}
  return wrk.format(nil, "/graphql", nil, payload)
end
"""
    else:
        request_fn = f"wrk.body = {_lua_str(load.template)}\n"
    pacing = ""
    if rate:
        pacing = f"""
local ffi = require("ffi")
ffi.cdef[[
typedef struct {{ long tv_sec; long tv_nsec; }} bench_timespec;
int clock_gettime(int clk_id, bench_timespec *tp);
]]
local ts = ffi.new("bench_timespec")
local function now_us()
  ffi.C.clock_gettime(1, ts)
  return tonumber(ts.tv_sec) * 1000000 + tonumber(ts.tv_nsec) / 1000
end
local interval = 1000000 * threads_n / {rate}
local next_due = nil
local due = nil
late = {{}}
function delay()
  local now = now_us()
  if next_due == nil then next_due = now + interval * thread_id / threads_n end
  due = next_due
  next_due = next_due + interval
  local wait = (due - now) / 1000
  if wait < 0 then wait = 0 end
  return wait
end
"""
    record = "if due ~= nil then late[#late + 1] = math.floor(now_us() - due) end" if rate else ""
    return f"""-- generated by bench/serve.py: {load.name}
local TAG = {_lua_str(tag)}
threads_n = {threads}
thread_id = 0
local started = 0
local all_threads = {{}}
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer {key}"
{pacing}
{request_fn}
function setup(thread)
  thread:set("thread_id", started)
  started = started + 1
  table.insert(all_threads, thread)
end

gql_errors = 0
bad_status = 0
sample_error = ""
function response(status, headers, body)
  {record}
  if status ~= 200 then
    bad_status = bad_status + 1
    if sample_error == "" then sample_error = status .. " " .. string.sub(body, 1, 300) end
  elseif string.find(body, '"errors"', 1, true) then
    gql_errors = gql_errors + 1
    if sample_error == "" then sample_error = string.sub(body, 1, 300) end
  end
end

function done(summary, latency, requests)
  local gql, status, sample, late_all = 0, 0, "", {{}}
  for _, t in ipairs(all_threads) do
    gql = gql + t:get("gql_errors")
    status = status + t:get("bad_status")
    local s = t:get("sample_error")
    if sample == "" and s ~= nil then sample = s end
    local l = t:get("late")
    if l ~= nil then for _, v in ipairs(l) do late_all[#late_all + 1] = v end end
  end
  local e = summary.errors
  local f = io.open({_lua_str(str(out))}, "w")
  f:write(string.format('{{"requests": %d, "duration_us": %d, "bytes": %d, ', summary.requests, summary.duration, summary.bytes))
  f:write(string.format('"socket_errors": {{"connect": %d, "read": %d, "write": %d, "timeout": %d}}, ',
    e.connect, e.read, e.write, e.timeout))
  f:write(string.format('"http_errors": %d, "graphql_errors": %d, ', status, gql))
  f:write(string.format('"latency_us": {{"mean": %.1f, "max": %d, "p50": %d, "p90": %d, "p99": %d, "p999": %d}}, ',
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
  f:write('"late_us": [' .. table.concat(late_all, ",") .. '], ')
  f:write('"sample_error": "' .. string.gsub(sample, '[%c"\\\\]', ' ') .. '"}}')
  f:close()
end
"""


@dataclass
class Leg:
    """One load generator run and what every process spent in it."""

    load: str
    kind: str  # "fixed" | "saturation" | "hey"
    seconds: float
    requests: int
    errors: int
    latency_ms: dict[str, float]
    late_ms: dict[str, float] = field(default_factory=dict)
    cpu_percent: dict[str, float] = field(default_factory=dict)
    sample_error: str = ""
    command: str = ""
    settle_s: float = 0.0  # waited before the leg for the previous one's queued requests to finish
    loadavg: float = 0.0  # 1-minute load average at the end of the leg
    socket_errors: dict[str, int] = field(default_factory=dict)  # wrk's connect/read/write/timeout counts

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def _run_timed(argv: list[str], pids: dict[str, int], timeout_s: float) -> tuple[subprocess.CompletedProcess, dict[str, float], float]:
    """Run a load generator; return it, CPU % of each process (the generator's own included) and wall seconds."""
    before = cpu_seconds(pids)
    before["generator"] = _children_cpu()
    before["machine"] = machine_busy_seconds()
    began = time.perf_counter()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    wall = time.perf_counter() - began
    after = cpu_seconds(pids)
    after["generator"] = _children_cpu()
    after["machine"] = machine_busy_seconds()
    usage = {k: round(100 * (after[k] - before[k]) / wall, 1) for k in after if k in before}
    # What the rest of the machine used meanwhile (other users of a shared machine): busy minus ours.
    machine = usage.pop("machine")
    usage["others"] = round(max(0.0, machine - sum(usage.values())), 1)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(errors="replace"), err.decode(errors="replace")), usage, wall


def _children_cpu() -> float:
    """Return the CPU seconds of this process's waited-for children (the load generator, during a leg)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    if not values_ms:
        return {}
    ordered = sorted(values_ms)

    def at(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]

    return {"p50": round(at(50), 2), "p90": round(at(90), 2), "p99": round(at(99), 2), "max": round(ordered[-1], 2)}


@dataclass
class Generators:
    url: str
    key: str
    work: Path
    pids: dict[str, int]
    runs: int = 0

    def wrk(self, load: Load, *, seconds: float, threads: int, connections: int, rate: float | None = None) -> Leg:
        """Run wrk over a load: paced at `rate` (one connection per thread) or flat out."""
        self.runs += 1
        settled = settle(self.pids)
        out = self.work / f"wrk-{self.runs}.json"
        script = self.work / f"wrk-{self.runs}.lua"
        if rate:
            threads = connections  # paced: one connection per thread (each thread keeps its own schedule)
        tag = f"r{self.runs}-{time.time_ns()}"
        script.write_text(lua_script(load, self.key, out, tag, rate=rate, threads=threads))
        argv = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "--timeout", f"{WRK_TIMEOUT_S}s",
                "-s", str(script), f"{self.url}/graphql"]
        _, usage, _ = _run_timed(argv, {**self.pids}, timeout_s=seconds + 60)
        r = json.loads(out.read_text())
        lat = {k: round(v / 1000, 2) for k, v in r["latency_us"].items()}
        errors = r["http_errors"] + r["graphql_errors"] + sum(r["socket_errors"].values())
        late = _percentiles([v / 1000 for v in r["late_us"]]) if rate else {}
        return Leg(load=load.name, kind="fixed" if rate else "saturation", seconds=r["duration_us"] / 1e6,
                   requests=r["requests"], errors=errors, latency_ms=lat, late_ms=late, cpu_percent=usage,
                   sample_error=r["sample_error"], command=" ".join(argv[:-3] + [script.name, "URL"]),
                   settle_s=settled, loadavg=os.getloadavg()[0], socket_errors=r["socket_errors"])

    def hey(self, load: Load, *, seconds: float, rate: float) -> Leg:
        """Run `hey -z S -c 1 -q RATE` on one fixed body; latencies from its CSV output."""
        settled = settle(self.pids)
        payload = self.work / "hey-body.json"
        text = load.template.replace(USER, load.users[0] if load.users else "1")
        payload.write_text(text)
        argv = ["hey", "-z", f"{seconds:g}s", "-c", "1", "-q", f"{rate:g}", "-m", "POST", "-T", "application/json",
                "-H", f"Authorization: Bearer {self.key}", "-D", str(payload), "-o", "csv", f"{self.url}/graphql"]
        done, usage, wall = _run_timed(argv, {**self.pids}, timeout_s=seconds + 60)
        rows = list(csv.DictReader(io.StringIO(done.stdout)))
        times = [float(r["response-time"]) * 1000 for r in rows]
        bad = sum(1 for r in rows if r.get("status-code") != "200")
        lat = _percentiles(times)
        lat["mean"] = round(statistics.fmean(times), 2) if times else 0.0
        span = max((float(r["offset"]) for r in rows), default=wall)
        return Leg(load=load.name, kind="hey", seconds=span, requests=len(rows), errors=bad, latency_ms=lat,
                   cpu_percent=usage, command=" ".join(argv[:3] + argv[3:8]) + " ... -o csv URL", settle_s=settled,
                   loadavg=os.getloadavg()[0])


# ---------------------------------------------------------------- the demo


@dataclass
class Demo:
    tenant_id: str
    scenario_id: str
    keys: dict[str, str]
    load_s: float | None = None
    train: dict[str, Any] | None = None


def load_demo(serve: ServeProcess) -> float:
    """Run `recograph demo load` against the running server; return its wall seconds."""
    began = time.perf_counter()
    serve.cli("demo", "load")
    return time.perf_counter() - began


def find_demo(api: Api, data_dir: Path) -> Demo:
    """Read the demo keys and find the scenario `movies`."""
    info = json.loads((data_dir / "demo-keys.json").read_text())
    edges = api.query(SCENARIOS, None, info["keys"]["admin"])["scenarios"]["edges"]
    ids = [e["node"]["id"] for e in edges if e["node"]["name"] == "movies"]
    if not ids:
        raise RuntimeError(f"no scenario 'movies' in the demo tenant: {edges}")
    return Demo(tenant_id=info["tenant_id"], scenario_id=ids[0], keys=info["keys"])


def train(api: Api, demo: Demo, timeout_s: float = 1800) -> dict[str, Any]:
    """Start trainScenario and poll the job until it ends; return the job's last state."""
    admin = demo.keys["admin"]
    began = time.perf_counter()
    job_id = api.query(TRAIN, {"s": demo.scenario_id}, admin)["trainScenario"]["id"]
    shown = None
    while time.perf_counter() - began < timeout_s:
        job = api.query(JOB, {"j": job_id}, admin)["job"]
        if job is None:
            raise RuntimeError(f"job {job_id} vanished")
        if (job["status"], job["stage"]) != shown:
            shown = (job["status"], job["stage"])
            console.print(f"  training: {job['status']} {job['stage'] or ''} {job['progress']:.0%}")
        if job["status"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
            job["wall_s"] = round(time.perf_counter() - began, 1)
            if job["status"] != "SUCCEEDED":
                raise RuntimeError(f"training {job['status']}: {job['error']}")
            return job
        time.sleep(2)
    raise RuntimeError(f"training did not finish within {timeout_s:.0f} s")


def sample(api: Api, demo: Demo) -> dict[str, Any]:
    """Ask one cold list; return what it holds (the bench refuses to time an empty or untrained engine)."""
    got = api.query(CHECK, {"s": demo.scenario_id, "u": "1", "c": {"bench": f"check-{time.time_ns()}"}},
                    demo.keys["public"])["recommendations"]
    sources = Counter(s for r in got["items"] for s in r["sources"])
    return {"items": len(got["items"]), "sources": dict(sources), "first": got["items"][:3]}


def breakdown(api: Api, demo: Demo, users: int) -> dict[str, Any]:
    """Time cold lists one at a time, and summarise the engine's own `debug` timings over as many users."""
    public, ms, stages, sources, dropped = demo.keys["public"], [], defaultdict(list), defaultdict(list), Counter()
    for i, user in enumerate(DEMO_USERS[200 : 200 + users]):
        began = time.perf_counter()
        api.query(RECOMMEND, {"s": demo.scenario_id, "u": user, "c": {"bench": f"seq-{i}-{time.time_ns()}"}}, public)
        ms.append((time.perf_counter() - began) * 1000)
    for i, user in enumerate(DEMO_USERS[400 : 400 + users]):
        # `debug` needs an admin or gateway key.
        debug = api.query(DEBUG, {"s": demo.scenario_id, "u": user, "c": {"bench": f"dbg-{i}"}}, demo.keys["gateway"])
        debug = debug["recommendations"]["debug"] or {}
        for stage, value in (debug.get("timings") or {}).items():
            stages[stage].append(value)
        for name, info in (debug.get("recall") or {}).items():
            if isinstance(info, dict) and "ms" in info:
                sources[name].append(info["ms"])
        for name, why in (debug.get("dropped") or {}).items():
            dropped[f"{name}: {why.split(':')[0]}"] += 1
    med = lambda xs: {"median": round(statistics.median(xs), 2), "max": round(max(xs), 2)}  # noqa: E731
    return {
        "users": users,
        "sequential_http_ms": _percentiles(ms) | {"median": round(statistics.median(ms), 2)} if ms else {},
        "engine_stage_ms": {k: med(v) for k, v in stages.items()},
        "recall_source_ms": {k: med(v) for k, v in sources.items()},
        "dropped": dict(dropped),
    }


# ---------------------------------------------------------------- py-spy


def py_spy(pid: int, seconds: int, work: Path, during, keep_raw: Path | None = None) -> dict[str, Any]:
    """Record serve with py-spy (non-blocking) while `during()` loads it; return own and inclusive hot spots."""
    exe = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if exe is None:
        return {"skipped": "py-spy not found (pip install py-spy into the venv to profile)"}
    raw = work / "py-spy.txt"
    argv = [exe, "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200", "--nonblocking",
            "--format", "raw", "--output", str(raw)]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        time.sleep(1)
        leg = during()
        _, err = proc.communicate(timeout=seconds + 60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if not raw.exists():
        return {"skipped": f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"}
    if keep_raw is not None:  # the raw stacks, for looking further than the summary below
        keep_raw.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(raw, keep_raw)
    own, inclusive, total = Counter(), Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";")]
        frames = [f for f in frames if not f.startswith("process ") and not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        own[frames[-1]] += n
        for f in set(frames):
            inclusive[f] += n
    share = lambda c: [(f, round(100 * n / total, 1)) for f, n in c.most_common(25)]  # noqa: E731
    return {"samples": total, "seconds": seconds, "leg_rate": round(leg.rate, 1), "own_percent": share(own),
            "inclusive_percent": share(Counter({f: n for f, n in inclusive.items() if _ours(f)}))}


def _short(frame: str) -> str:
    name, _, where = frame.partition(" (")
    where = where.rstrip(")")
    for prefix in (str(ROOT / ".venv" / "lib") + "/", str(ROOT) + "/"):
        where = where.replace(prefix, "")
    where = where.split("site-packages/")[-1]
    return f"{name} ({where})"


def _ours(frame: str) -> bool:
    return any(f"({p}" in frame for p in ("domain/", "graph/", "resolvers/", "models/", "strawberry/", "graphql/",
                                          "litestar/", "redis/", "uvicorn/", "pymongo/", "qdrant"))


# ---------------------------------------------------------------- an A/A experiment (issue 11)

EXPERIMENT_TARGET = 1.10  # inside / outside, serving CPU ms per cold answer
EXP_CREATE = "mutation($i: CreateExperimentInput!) { createExperiment(input: $i) { id status } }"
EXP_MOVE = "mutation($id: ID!) {{ {verb}Experiment(id: $id) {{ id status }} }}"
EXP_VARIANT = (
    "query($s: ID!, $u: ID!, $c: JSON) { recommendations(scenarioId: $s, userId: $u, first: 20, context: $c) "
    "{ variant experiment { id } } }"
)


def experiment_leg(api: Api, demo: Demo, gen: Generators, load: Load, args: argparse.Namespace) -> dict[str, Any]:
    """Run cold saturation rounds outside (PAUSED) and inside (RUNNING) an A/A experiment of the demo scenario,
    alternating which state goes first; return the legs of each state and what a check request got in each."""
    admin = demo.keys["admin"]
    design = {"scenarioId": demo.scenario_id, "name": f"bench-aa-{time.time_ns()}", "primaryMetric": "CTR",
              "variants": [{"name": "a"}, {"name": "b"}], "trafficPercent": 100}
    x = api.query(EXP_CREATE, {"i": design}, admin)["createExperiment"]["id"]
    status = "DRAFT"

    def enter(state: str) -> dict[str, Any]:
        nonlocal status
        wanted, verb = ("RUNNING", "start") if state == "inside" else ("PAUSED", "pause")
        if status != wanted:
            status = api.query(EXP_MOVE.format(verb=verb), {"id": x}, admin)[f"{verb}Experiment"]["status"]
        return variant_check(api, demo, x, state)

    legs: dict[str, list[Leg]] = defaultdict(list)
    checks = []
    try:
        checks.append(enter("inside"))
        # Every serving process builds the variants' engines before anything is timed.
        gen.wrk(load, seconds=args.warmup, threads=args.threads, connections=args.connections)
        for round_no in range(args.experiment_rounds):
            for state in ("outside", "inside") if round_no % 2 == 0 else ("inside", "outside"):
                checks.append(enter(state))
                leg = gen.wrk(load, seconds=args.sat_duration, threads=args.threads, connections=args.connections)
                console.print(f"  A/A round {round_no + 1}: {state:7} {leg.rate:8.1f} req/s  p50 "
                              f"{leg.latency_ms['p50']:.1f} ms  errors {leg.errors}  CPU% {leg.cpu_percent}")
                legs[state].append(leg)
    finally:
        for verb in ("stop", "delete"):
            with contextlib.suppress(RuntimeError):
                api.query(EXP_MOVE.format(verb=verb), {"id": x}, admin)
    return {"experiment_id": x, "legs": legs, "checks": checks}


def variant_check(api: Api, demo: Demo, experiment_id: str, state: str) -> dict[str, Any]:
    """Ask one cold list with the admin key; return its variant and experiment, and whether they fit the state."""
    got = api.query(EXP_VARIANT, {"s": demo.scenario_id, "u": "1", "c": {"bench": f"x-{time.time_ns()}"}},
                    demo.keys["admin"])["recommendations"]
    seen = {"variant": got["variant"], "experiment": (got["experiment"] or {}).get("id")}
    inside = seen["variant"] in ("a", "b") and seen["experiment"] == experiment_id
    outside = seen == {"variant": None, "experiment": None}
    return {**seen, "state": state, "ok": inside if state == "inside" else outside}


def experiment_rows(leg: dict[str, Any]) -> list[dict[str, Any]]:
    """Return one row per state (outside, inside), the inside row with the ratios to outside and the target.

    The target compares the median round of each state: a round that other work on the machine slowed (the
    `others` CPU) moves a mean of three rounds, not their median. The ratio of the means is kept beside it.
    """
    rows = {}
    for state, ls in leg["legs"].items():
        rate = sum(l.requests for l in ls) / sum(l.seconds for l in ls)
        cpu = {k: round(statistics.fmean(l.cpu_percent.get(k, 0.0) for l in ls), 1) for k in ls[0].cpu_percent}
        per_round = [10 * serving_cpu(l.cpu_percent) / l.rate for l in ls if l.rate]
        rows[state] = {
            "leg": f"recommendations, cold, {state} an A/A experiment", "kind": "experiment", "state": state,
            "requests": sum(l.requests for l in ls), "seconds": round(sum(l.seconds for l in ls), 1),
            "req_per_s": round(rate, 1), "per_round": [round(l.rate, 1) for l in ls],
            "errors": sum(l.errors for l in ls),
            "latency_ms": {k: round(statistics.fmean(l.latency_ms[k] for l in ls), 2) for k in ("p50", "p99", "max")},
            "cpu_percent": cpu, "serve_cpu_ms_per_request": round(10 * serving_cpu(cpu) / rate, 3) if rate else None,
            "ms_per_round": [round(v, 3) for v in per_round],
            "median_ms_per_request": round(statistics.median(per_round), 3) if per_round else None,
            "median_req_per_s": round(statistics.median(l.rate for l in ls), 1),
            "sample_error": next((l.sample_error for l in ls if l.sample_error), ""),
            "checks": [c for c in leg["checks"] if c["state"] == state], "target": "", "pass": None,
        }
    inside, outside = rows.get("inside"), rows.get("outside")
    if inside and outside and outside["median_ms_per_request"] and outside["serve_cpu_ms_per_request"]:
        ratio = inside["median_ms_per_request"] / outside["median_ms_per_request"]
        checked = all(c["ok"] for c in leg["checks"])
        inside.update(cpu_ratio=round(ratio, 3), rate_ratio=round(inside["median_req_per_s"] /
                                                                   outside["median_req_per_s"], 3),
                      cpu_ratio_of_means=round(inside["serve_cpu_ms_per_request"] /
                                               outside["serve_cpu_ms_per_request"], 3),
                      target=f"CPU ms/req inside / outside (medians) <= {EXPERIMENT_TARGET:.2f}",
                      experiment_id=leg["experiment_id"])
        inside["pass"] = ratio <= EXPERIMENT_TARGET and checked and not inside["errors"] + outside["errors"]
    return [r for r in (outside, inside) if r]


# ---------------------------------------------------------------- the run


def saturation(gen: Generators, order: list[Load], args: argparse.Namespace, before: dict[str, Any]) -> dict[str, list[Leg]]:
    """Run each load flat out, in rounds that alternate the order (before[name]() first); return the legs of each."""
    legs: dict[str, list[Leg]] = defaultdict(list)
    for round_no in range(args.rounds):
        for load in order if round_no % 2 == 0 else order[::-1]:
            if load.name in before:
                before[load.name]()
            leg = gen.wrk(load, seconds=args.sat_duration, threads=args.threads, connections=args.connections)
            console.print(f"  saturation round {round_no + 1}: {load.name:24} {leg.rate:8.1f} req/s  "
                          f"p50 {leg.latency_ms['p50']:.1f} ms  errors {leg.errors}  CPU% {leg.cpu_percent}")
            legs[load.name].append(leg)
    return legs


def warm_up(gen: Generators, shapes: dict[str, Load], args: argparse.Namespace) -> None:
    """Run each shape briefly (imports, caches, JIT-less first calls, the engine's first load)."""
    for name in ("typename", "items", "cold"):
        gen.wrk(shapes[name], seconds=args.warmup, threads=1, connections=2)


def prime_warm(api: Api, demo: Demo, load: Load) -> None:
    """Ask every warm user once, 4 at a time, so that the warm leg that follows hits the answer cache (60 s)."""
    def ask(user: str) -> None:
        api.query(RECOMMEND, {"s": demo.scenario_id, "u": user, "c": None}, demo.keys["public"])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(ask, load.users))


def fixed_row(leg: Leg, *, target: bool) -> dict[str, Any]:
    p99 = leg.latency_ms.get("p99", 0.0)
    return {
        "leg": f"{leg.load} @ fixed rate" if leg.kind == "fixed" else f"{leg.load} (hey cross-check)",
        "kind": leg.kind, "requests": leg.requests, "seconds": round(leg.seconds, 1), "req_per_s": round(leg.rate, 1),
        "errors": leg.errors, "latency_ms": leg.latency_ms, "from_schedule_ms": leg.late_ms,
        "target": f"p99 <= {P99_TARGET_MS:g} ms" if target else "", "pass": (p99 <= P99_TARGET_MS and leg.errors == 0) if target else None,
        "cpu_percent": leg.cpu_percent, "sample_error": leg.sample_error, "command": leg.command,
        "settle_s": leg.settle_s, "loadavg": leg.loadavg, "socket_errors": leg.socket_errors,
    }


def saturation_rows(legs: dict[str, list[Leg]], shapes: dict[str, Load]) -> list[dict[str, Any]]:
    rate = {name: sum(l.requests for l in ls) / sum(l.seconds for l in ls) for name, ls in legs.items()}
    items, typename = rate[shapes["items"].name], rate[shapes["typename"].name]
    rows = []
    for key in ("typename", "items", "cold", "warm"):
        name = shapes[key].name
        if name not in legs:
            continue
        ls = legs[name]
        is_rec = key in ("cold", "warm")
        cpu = {k: round(statistics.fmean(l.cpu_percent.get(k, 0.0) for l in ls), 1) for k in ls[0].cpu_percent}
        rows.append({
            "leg": f"{name} @ saturation", "kind": "saturation", "query": shapes[key].label,
            "requests": sum(l.requests for l in ls), "seconds": round(sum(l.seconds for l in ls), 1),
            "req_per_s": round(rate[name], 1), "per_round": [round(l.rate, 1) for l in ls],
            "errors": sum(l.errors for l in ls),
            "latency_ms": {k: round(statistics.fmean(l.latency_ms[k] for l in ls), 2) for k in ("p50", "p99", "max")},
            "ratio_to_items": round(rate[name] / items, 3) if is_rec and items else None,
            "ratio_to_typename": round(rate[name] / typename, 3) if is_rec and typename else None,
            "target": f"/ items >= {RATIO_TARGET}" if key == "cold" else "",
            "pass": (rate[name] / items >= RATIO_TARGET and not sum(l.errors for l in ls)) if key == "cold" and items else None,
            "cpu_percent": cpu, "sample_error": next((l.sample_error for l in ls if l.sample_error), ""),
            # the serving processes' CPU per answered request: what decides how far each event loop goes
            "serve_cpu_ms_per_request": round(10 * serving_cpu(cpu) / rate[name], 2) if rate[name] else None,
            "settle_s": [l.settle_s for l in ls], "loadavg": [round(l.loadavg, 2) for l in ls],
            "socket_errors": dict(sum((Counter(l.socket_errors) for l in ls), Counter())),
            "command": ls[0].command,
        })
    return rows


def bench(args: argparse.Namespace, serve: ServeProcess, work: Path) -> dict[str, Any]:
    """Run everything against a started server; return the results."""
    warnings: list[str] = []
    with httpx.Client(timeout=120) as client:
        serve.wait_ready(client)
        api = Api(client, serve.url)
        mem: dict[str, dict[str, int]] = {"ready": serving_memory(serve)}
        load_s = None
        if args.skip_load is None:
            console.print("loading the demo (`recograph demo load`) ...")
            load_s = load_demo(serve)
            console.print(f"  loaded in {load_s:.0f} s")
        demo = find_demo(api, serve.data_dir)
        demo.load_s = load_s
        check = sample(api, demo)
        trained = bool(set(check["sources"]) - FALLBACK_SOURCES)
        if args.train == "always" or (args.train == "auto" and not trained):
            console.print("training the demo scenario (trainScenario) ...")
            demo.train = train(api, demo)
            console.print(f"  trained in {demo.train['wall_s']} s: {demo.train['result']}")
            check = sample(api, demo)
        mem["trained"] = serving_memory(serve)
        if check["items"] < 20:
            warnings.append(f"a cold list held {check['items']} items, not 20: {check}")
        if not set(check["sources"]) - FALLBACK_SOURCES:
            warnings.append(f"user 1's list has only fallback sources (untrained?): {check['sources']}")
        pids = serve.pids()
        shapes = loads(demo.scenario_id, args.warm_users)
        gen = Generators(serve.url, demo.keys["public"], work, pids)
        console.print(f"tenant {demo.tenant_id}, scenario {demo.scenario_id}; user 1's list: {check['sources']}; "
                      f"processes {pids}")
        console.print("warming up ...")
        warm_up(gen, shapes, args)
        mem["warmed"] = serving_memory(serve)
        load_before = os.getloadavg()

        console.print(f"fixed rate: {args.rate:g} req/s for {args.duration:g} s ...")
        fixed = [gen.wrk(shapes["cold"], seconds=args.duration, threads=1, connections=args.fixed_connections, rate=args.rate)]
        prime_warm(api, demo, shapes["warm"])
        fixed.append(gen.wrk(shapes["warm"], seconds=args.duration, threads=1, connections=args.fixed_connections, rate=args.rate))
        if args.hey_seconds > 0:
            fixed.append(gen.hey(shapes["warm"], seconds=args.hey_seconds, rate=args.rate))
        for leg in fixed:
            console.print(f"  {leg.kind:5} {leg.load:24} {leg.rate:6.1f} req/s  {leg.latency_ms}  from schedule "
                          f"{leg.late_ms}  errors {leg.errors}")
        mem["after_fixed"] = serving_memory(serve)

        console.print(f"saturation: wrk -t{args.threads} -c{args.connections}, {args.sat_duration:g} s x {args.rounds} rounds ...")
        order = [shapes["typename"], shapes["items"], shapes["cold"], shapes["warm"]]
        sat = saturation(gen, order, args, {shapes["warm"].name: lambda: prime_warm(api, demo, shapes["warm"])})
        load_after = os.getloadavg()
        mem["after_saturation"] = serving_memory(serve)
        aa = None
        if args.experiment_leg:
            console.print(f"A/A experiment: cold saturation outside (PAUSED) and inside (RUNNING), "
                          f"{args.experiment_rounds} rounds each ...")
            aa = experiment_leg(api, demo, gen, shapes["cold"], args)
            mem["after_experiment"] = serving_memory(serve)

        rows = [fixed_row(leg, target=(leg.kind == "fixed" and leg.load == shapes["cold"].name)) for leg in fixed]
        rows += saturation_rows(sat, shapes)
        rows += experiment_rows(aa) if aa else []
        peak = max(m.get("VmHWM", 0) for m in mem.values())
        rss = max(m.get("VmRSS", 0) for m in mem.values())
        memory_row = {
            "leg": "serve RSS (demo tenant)", "kind": "memory", "rss_bytes": mem["after_saturation"].get("VmRSS"),
            "max_rss_bytes_sampled": rss, "peak_rss_bytes": peak, "samples": mem,
            "servers_rss_bytes": {k: memory(p).get("VmRSS") for k, p in pids.items() if not is_serving(k)},
            "serving_processes": mem["after_saturation"].get("processes", 1),
            "serving_total_rss_bytes": mem["after_saturation"].get("total_rss"),
            "target": "< 1.5 GB", "pass": rss < RSS_TARGET_BYTES,
            "note": "per serving process (the largest); peak (VmHWM) includes training when it ran in serve itself",
        }
        rows.append(memory_row)
        console.print("breakdown (sequential cold lists and the engine's debug timings) ...")
        parts = breakdown(api, demo, args.breakdown_users)
        profile = None
        if args.py_spy > 0:
            settle(pids)
            console.print(f"py-spy: {args.py_spy} s of cold saturation ...")
            profile = py_spy(serve.pids()[args.py_spy_process], args.py_spy, work, lambda: gen.wrk(
                shapes["cold"], seconds=args.py_spy, threads=args.threads, connections=args.connections),
                keep_raw=args.output.with_suffix(".py-spy.txt"))
        for row in rows:
            if row.get("sample_error"):
                warnings.append(f"{row['leg']}: first error: {row['sample_error']}")
        return {
            "when": datetime.now(UTC).isoformat(), "cpus": os.cpu_count(), "loadavg_before": load_before,
            "loadavg_after": load_after, "tenant_id": demo.tenant_id, "scenario_id": demo.scenario_id,
            "demo_load_s": demo.load_s, "training": demo.train, "check": check,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "queries": {k: s.label for k, s in shapes.items()}, "rows": rows, "breakdown": parts, "py_spy": profile,
            "warnings": warnings, "markdown": markdown(rows, args),
        }


# ---------------------------------------------------------------- report


def _gb(n: int | None) -> str:
    return "" if n is None else f"{n / 1e9:.2f} GB"


def _verdict(row: dict[str, Any]) -> str:
    return "" if row.get("pass") is None else ("pass" if row["pass"] else "FAIL")


def print_table(results: dict[str, Any]) -> None:
    """Print the results as rich tables."""
    rows = results["rows"]
    table = Table(title="serve: fixed rate")
    for column in ("leg", "req/s", "requests", "errors", "p50 ms", "p90 ms", "p99 ms", "max ms", "p99 from schedule",
                   "target", ""):
        table.add_column(column, justify="left" if column in ("leg", "target", "") else "right")
    for r in (r for r in rows if r["kind"] in ("fixed", "hey")):
        lat, late = r["latency_ms"], r["from_schedule_ms"]
        verdict = _verdict(r)
        table.add_row(r["leg"], f"{r['req_per_s']:.1f}", f"{r['requests']:,}", str(r["errors"]),
                      *(f"{lat.get(k, 0):.1f}" for k in ("p50", "p90", "p99", "max")),
                      f"{late['p99']:.1f}" if late else "", r["target"],
                      f"[{'green' if verdict == 'pass' else 'red'}]{verdict}[/]" if verdict else "")
    console.print(table)
    table = Table(title="serve: saturation, same server, same run")
    for column in ("leg", "req/s", "per round", "errors", "p50 ms", "p99 ms", "/ items", "/ __typename", "target", "",
                   "CPU %"):
        table.add_column(column, justify="left" if column in ("leg", "target", "", "per round", "CPU %") else "right")
    for r in (r for r in rows if r["kind"] == "saturation"):
        verdict = _verdict(r)
        table.add_row(r["leg"], f"{r['req_per_s']:,.1f}", " ".join(f"{v:,.0f}" for v in r["per_round"]), str(r["errors"]),
                      f"{r['latency_ms']['p50']:.1f}", f"{r['latency_ms']['p99']:.1f}",
                      "" if r["ratio_to_items"] is None else f"{r['ratio_to_items']:.2f}",
                      "" if r["ratio_to_typename"] is None else f"{r['ratio_to_typename']:.3f}", r["target"],
                      f"[{'green' if verdict == 'pass' else 'red'}]{verdict}[/]" if verdict else "",
                      " ".join(f"{k} {v:.0f}" for k, v in r["cpu_percent"].items()))
    console.print(table)
    print_experiment(rows)
    m = next(r for r in rows if r["kind"] == "memory")
    console.print(f"serve RSS after load {_gb(m['rss_bytes'])}, largest sampled {_gb(m['max_rss_bytes_sampled'])}, "
                  f"peak (VmHWM) {_gb(m['peak_rss_bytes'])}; target < 1.5 GB: {_verdict(m)}; "
                  f"servers {', '.join(f'{k} {_gb(v)}' for k, v in m['servers_rss_bytes'].items())}")
    parts = results["breakdown"]
    table = Table(title=f"cold recommendations, one at a time ({parts['users']} users): engine debug timings, ms")
    table.add_column("step")
    table.add_column("median", justify="right")
    table.add_column("max", justify="right")
    seq = parts["sequential_http_ms"]
    if seq:
        table.add_row("HTTP round trip (client)", f"{seq['median']:.1f}", f"{seq['max']:.1f}")
    for stage, v in parts["engine_stage_ms"].items():
        table.add_row(f"engine: {stage}", f"{v['median']:.1f}", f"{v['max']:.1f}")
    for source, v in parts["recall_source_ms"].items():
        table.add_row(f"  recall source {source}", f"{v['median']:.1f}", f"{v['max']:.1f}")
    console.print(table)
    if parts["dropped"]:
        console.print(f"recall sources dropped (of {parts['users']} lists): {parts['dropped']}")
    profile = results.get("py_spy")
    if profile and "own_percent" in profile:
        console.print(f"py-spy, serve under cold saturation ({profile['samples']} samples, {profile['leg_rate']} req/s):")
        for title in ("own_percent", "inclusive_percent"):
            console.print(f"  {title.replace('_', ' ')}:")
            for frame, pct in profile[title][:18]:
                console.print(f"    {pct:5.1f}%  {frame}", highlight=False, markup=False)
    elif profile:
        console.print(f"py-spy: {profile['skipped']}")


def experiment_cells(r: dict[str, Any]) -> list[str]:
    """Return the A/A leg's cells of one state, as the rich table and the Markdown show them."""
    ratio = lambda key: f"{r[key]:.3f}" if key in r else ""  # noqa: E731
    return [r["state"], f"{r['req_per_s']:,.1f}", " ".join(f"{v:,.0f}" for v in r["per_round"]), str(r["errors"]),
            f"{r['latency_ms']['p50']:.1f}", f"{r['latency_ms']['p99']:.1f}", f"{r['serve_cpu_ms_per_request']:.2f}",
            " ".join(f"{v:.2f}" for v in r["ms_per_round"]), f"{r['median_ms_per_request']:.2f}",
            ratio("cpu_ratio"), ratio("cpu_ratio_of_means"), ratio("rate_ratio"),
            f"{r['cpu_percent'].get('consumer', 0):.0f}", f"{r['cpu_percent'].get('others', 0):.0f}", r["target"],
            _verdict(r)]


EXPERIMENT_COLUMNS = ("state", "req/s", "per round", "errors", "p50 ms", "p99 ms", "serving CPU ms/req",
                      "per round ms/req", "median round", "inside / outside (medians)", "inside / outside (means)",
                      "inside / outside req/s (medians)", "consumer CPU %", "others' CPU %", "target", "")


def print_experiment(rows: list[dict[str, Any]]) -> None:
    """Print the A/A experiment leg's rows, when it ran."""
    legs = [r for r in rows if r["kind"] == "experiment"]
    if not legs:
        return
    table = Table(title="serve: cold recommendations outside (PAUSED) and inside (RUNNING) an A/A experiment")
    for column in EXPERIMENT_COLUMNS:
        left = column in ("state", "per round", "per round ms/req", "target", "")
        table.add_column(column, justify="left" if left else "right")
    for r in legs:
        cells = experiment_cells(r)
        color = "green" if cells[-1] == "pass" else "red"
        table.add_row(*cells[:-1], f"[{color}]{cells[-1]}[/]" if cells[-1] else "")
    console.print(table)
    checks = [c for r in legs for c in r["checks"]]
    console.print(f"variant checks: {sum(c['ok'] for c in checks)} of {len(checks)} as expected "
                  f"(inside: variant a or b; outside: null)")


def experiment_markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> list[str]:
    """Return the A/A experiment leg as Markdown lines (none when it did not run)."""
    legs = [r for r in rows if r["kind"] == "experiment"]
    if not legs:
        return []
    checks = [c for r in legs for c in r["checks"]]
    lines = ["", f"A/A experiment, cold recommendations (wrk -t{args.threads} -c{args.connections}, "
             f"{args.sat_duration:g} s x {args.experiment_rounds} rounds per state, alternating; variant checks "
             f"{sum(c['ok'] for c in checks)}/{len(checks)} as expected):", "",
             "| " + " | ".join(EXPERIMENT_COLUMNS) + " |",
             "|" + "|".join("---" if c in ("state", "per round", "per round ms/req", "target", "") else "---:"
                            for c in EXPERIMENT_COLUMNS) + "|"]
    return lines + ["| " + " | ".join(experiment_cells(r)) + " |" for r in legs]


def markdown(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    """Return the results as Markdown tables."""
    lines = [f"Fixed rate ({args.rate:g} req/s offered, {args.fixed_connections} paced wrk connections; hey: -c 1):", "",
             "| leg | req/s | requests | errors | p50 ms | p90 ms | p99 ms | max ms | p99 from schedule ms | target | |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in (r for r in rows if r["kind"] in ("fixed", "hey")):
        lat, late = r["latency_ms"], r["from_schedule_ms"]
        cells = [r["leg"], f"{r['req_per_s']:.1f}", f"{r['requests']:,}", str(r["errors"]),
                 *(f"{lat.get(k, 0):.1f}" for k in ("p50", "p90", "p99", "max")),
                 f"{late['p99']:.1f}" if late else "", r["target"], _verdict(r)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Saturation (wrk -t{args.threads} -c{args.connections}, {args.sat_duration:g} s x {args.rounds} rounds):", "",
              "| leg | req/s | per round | errors | p50 ms | p99 ms | / items | / __typename | target | | serving CPU % "
              "| serving CPU ms/req | mongo CPU % | others' CPU % |",
              "|---|---:|---|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|"]
    for r in (r for r in rows if r["kind"] == "saturation"):
        lines.append(
            f"| {r['leg']} | {r['req_per_s']:,.1f} | {' '.join(f'{v:,.0f}' for v in r['per_round'])} | {r['errors']} | "
            f"{r['latency_ms']['p50']:.1f} | {r['latency_ms']['p99']:.1f} | "
            f"{'' if r['ratio_to_items'] is None else format(r['ratio_to_items'], '.2f')} | "
            f"{'' if r['ratio_to_typename'] is None else format(r['ratio_to_typename'], '.3f')} | {r['target']} | "
            f"{_verdict(r)} | {serving_cpu(r['cpu_percent']):.0f} | {r.get('serve_cpu_ms_per_request') or 0:.1f} | "
            f"{r['cpu_percent'].get('mongo', 0):.0f} | "
            f"{r['cpu_percent'].get('others', 0):.0f} |")
    lines += experiment_markdown(rows, args)
    m = next(r for r in rows if r["kind"] == "memory")
    lines += ["", "| memory (largest serving process) | after load | largest sampled | peak (VmHWM) | target | |",
              "|---|---:|---:|---:|---|---|",
              f"| serve RSS ({m.get('serving_processes', 1)} serving processes, "
              f"{_gb(m.get('serving_total_rss_bytes') or 0)} together) | {_gb(m['rss_bytes'])} | "
              f"{_gb(m['max_rss_bytes_sampled'])} | {_gb(m['peak_rss_bytes'])} | {m['target']} | {_verdict(m)} |"]
    return "\n".join(lines)


def write_results(path: Path, results: dict[str, Any]) -> None:
    """Write the results as JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, default=str))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=30, help="seconds of each fixed-rate leg (default 30)")
    parser.add_argument("--rate", type=float, default=50, help="requests a second offered at fixed rate (default 50)")
    parser.add_argument("--fixed-connections", type=int, default=4,
                        help="paced wrk connections sharing the fixed rate (default 4; each keeps its own schedule)")
    parser.add_argument("--sat-duration", type=float, default=15, help="seconds of each saturation leg (default 15)")
    parser.add_argument("--rounds", type=int, default=2, help="saturation rounds, alternating the order (default 2)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads at saturation (default 2)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections at saturation (default 16)")
    parser.add_argument("--warm-users", type=int, default=100, help="users asked again in the warm legs (default 100)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of warm-up per query shape (default 5)")
    parser.add_argument("--hey-seconds", type=float, default=10,
                        help="seconds of the hey -c 1 -q RATE cross-check on one warm body (default 10; 0 skips)")
    parser.add_argument("--breakdown-users", type=int, default=40, help="cold lists timed one at a time (default 40)")
    parser.add_argument("--py-spy", type=int, default=0, metavar="SECONDS",
                        help="profile serve with py-spy for SECONDS of cold saturation (needs py-spy; default 0: off)")
    parser.add_argument("--py-spy-process", default="serve", metavar="NAME",
                        help="which process py-spy records: serve (default), serve-2, consumer, ...")
    parser.add_argument("--train", choices=("auto", "always", "never"), default="auto",
                        help="train the demo scenario: auto = when user 1's list has only fallback sources")
    parser.add_argument("--skip-load", type=Path, metavar="DATA_DIR",
                        help="reuse a data dir holding the loaded (and trained) demo, e.g. one kept with --keep")
    parser.add_argument("--processes", type=int, default=None,
                        help="serving processes (RECOGRAPH_PROCESSES; default: serve's own, one per core up to 4)")
    parser.add_argument("--no-experiment-leg", dest="experiment_leg", action="store_false",
                        help="skip the A/A experiment leg (cold saturation outside and inside an experiment)")
    parser.add_argument("--experiment-rounds", type=int, default=3,
                        help="rounds of the A/A leg, each one leg outside and one inside, alternating (default 3)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data dir (reuse it with --skip-load)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a target is missed, 2 when a load generator is missing."""
    args = parse_args(argv)
    if missing := check_tools():
        console.print(f"[red]missing load generator(s): {', '.join(missing)}[/red]; install them with\n"
                      f"  sudo apt-get install -y hey wrk")
        return 2
    if args.skip_load is not None:
        data_dir = args.skip_load.resolve()
        if not (data_dir / "demo-keys.json").exists():
            console.print(f"[red]{data_dir} holds no demo-keys.json: not a loaded demo data dir[/red]")
            return 2
        if (data_dir / "runtime.json").exists():
            console.print(f"[red]{data_dir}/runtime.json exists: is a server still running on it?[/red]")
            return 2
    else:
        data_dir = Path(tempfile.mkdtemp(prefix="recograph-bench-serve-"))
    work = Path(tempfile.mkdtemp(prefix="recograph-bench-serve-work-"))
    serve = ServeProcess(data_dir, free_port(), processes=args.processes)
    try:
        serve.start()
        results = bench(args, serve, work)
    except BaseException:
        console.print(f"[red]bench failed; server log tail:[/red]\n{serve.tail()}", markup=True, highlight=False)
        raise
    finally:
        serve.stop()
        shutil.rmtree(work, ignore_errors=True)
        if args.skip_load is not None or args.keep:
            console.print(f"kept {data_dir}" + ("" if args.skip_load else f" (reuse: --skip-load {data_dir})"))
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    write_results(args.output, results)
    print_table(results)
    for warning in results["warnings"]:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False)
    console.print(f"\nwrote {args.output}\n")
    print(results["markdown"])
    passed = [r["pass"] for r in results["rows"] if r.get("pass") is not None]
    return 0 if passed and all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
