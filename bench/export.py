"""Export benchmark: stream a million interactions as NDJSON and watch the memory of every process involved.

`recograph serve` runs as its own process (one serving process, embedded servers, a data dir on disk). The bench
creates a tenant and a scenario through the CLI and GraphQL, then writes `--events` synthetic interactions of that
scenario straight into serve's MongoDB (the documents `recordInteractions` stores, spread over the last `--days`
days; the interaction indexes are dropped for the bulk insert and built again after, which is ~8x faster on the
embedded server). Then:

  1. HTTP: `GET /export/interactions?scenarioId=...` with the admin key, read as it streams (lines counted, never
     kept), while a thread samples the RSS of serve and of the embedded MongoDB every 0.2 s;
  2. CLI: `recograph export interactions --tenant ... --scenario ... --output FILE` attached to serve's servers,
     sampling the CLI's RSS the same way (`--no-cli` skips it).

It reports events/s, each process's RSS before and its peak growth during the export, and checks that every event
came out once. Target (issue 13): the serving process's RSS grows by less than 50 MB for 1M events.

    .venv/bin/python bench/export.py [--events 1000000] [--days 90] [--no-cli] [--keep]

Writes bench/results/export.json and prints the table as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import children, cmdline, free_port, recograph_command  # noqa: E402
from ingest import ServeProcess  # noqa: E402
from models.documents import Interaction  # noqa: E402

TARGET_GROWTH_MB = 50
INSERT_BATCH = 20_000
TYPES = ("VIEW", "CLICK", "LIKE", "WATCH", "PURCHASE")
MB = 2**20


def rss(pid: int) -> int:
    """Return a process's resident set size in bytes (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Sampler:
    """Sample the RSS of some processes every `every_s` in a thread; keep each one's first value and peak."""

    def __init__(self, pids: dict[str, int], every_s: float = 0.2) -> None:
        self.pids, self.every_s = pids, every_s
        self.first = {name: rss(pid) for name, pid in pids.items()}
        self.peak = dict(self.first)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss(pid))

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def growth_mb(self) -> dict[str, float]:
        return {name: round((self.peak[name] - self.first[name]) / MB, 1) for name in self.pids}


def mongo_pid(serve: ServeProcess) -> int:
    """Return the pid of serve's embedded MongoDB."""
    found = [pid for pid in children(serve.proc.pid) if "secantusd" in cmdline(pid)]
    if not found:
        raise RuntimeError("serve started no embedded MongoDB")
    return found[0]


def insert_events(url: str, database: str, tenant_id: str, scenario_id: str, n: int, days: float) -> float:
    """Write n interactions of the scenario straight into MongoDB; return the seconds taken (indexes included)."""
    rng = random.Random(13)
    now = datetime.now(UTC).replace(microsecond=0)
    began = time.perf_counter()
    with MongoClient(url, tz_aware=True) as client:
        collection = client[database][Interaction.Settings.name]
        collection.drop_indexes()  # the embedded server inserts ~8x faster without them; built again below
        for start in range(0, n, INSERT_BATCH):
            docs = []
            for k in range(start, min(n, start + INSERT_BATCH)):
                kind = rng.choice(TYPES)
                docs.append({
                    "_id": f"{tenant_id}/e{k:08d}", "tenant_id": tenant_id, "scenario_id": scenario_id,
                    "user_id": f"u{rng.randrange(20_000)}", "item_id": f"i{rng.randrange(5_000)}", "type": kind,
                    "value": float(rng.randrange(1, 600)) if kind == "WATCH" else None,
                    "ts": now - timedelta(milliseconds=rng.randrange(int(days * 86_400_000))),
                    "context": {"page": "home"} if k % 10 == 0 else None, "request_id": None,
                    "event_id": f"e{k:08d}", "received_at": now,
                })
            collection.insert_many(docs, ordered=False)
            print(f"  inserted {min(n, start + INSERT_BATCH):,}", end="\r", flush=True)
        collection.create_indexes(Interaction.Settings.indexes)
    return time.perf_counter() - began


async def http_export(url: str, key: str, scenario_id: str, pids: dict[str, int]) -> dict[str, Any]:
    """Stream the scenario's interactions over HTTP, counting lines; sample the processes' memory meanwhile."""
    lines, first, last = 0, None, b""
    with Sampler(pids) as sampler:
        began = time.perf_counter()
        async with httpx.AsyncClient(timeout=None) as client:
            async with client.stream("GET", f"{url}/export/interactions", params={"scenarioId": scenario_id},
                                     headers={"Authorization": f"Bearer {key}"}) as response:
                response.raise_for_status()
                async for chunk in response.aiter_bytes(1 << 16):
                    lines += chunk.count(b"\n")
                    first = first or chunk.split(b"\n", 1)[0]
                    last = (last + chunk)[-4096:]
        seconds = time.perf_counter() - began
    newest = json.loads(first)
    oldest = json.loads(last.rstrip(b"\n").rsplit(b"\n", 1)[-1])
    return {"lines": lines, "seconds": round(seconds, 1), "events_per_s": round(lines / seconds),
            "rss_before_mb": {k: round(v / MB) for k, v in sampler.first.items()}, "growth_mb": sampler.growth_mb(),
            "newest_first": newest["timestamp"] >= oldest["timestamp"]}


def cli_export(serve: ServeProcess, tenant_id: str, scenario_id: str, out: Path, mongo: int) -> dict[str, Any]:
    """Run `recograph export interactions` attached to serve; sample its memory and the embedded MongoDB's."""
    argv = [recograph_command(), "export", "interactions", "--tenant", tenant_id, "--scenario", scenario_id,
            "--output", str(out)]
    began = time.perf_counter()
    proc = subprocess.Popen(argv, env=serve.env, cwd=serve.data_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    started = _when(lambda: rss(proc.pid) > 100 * MB or proc.poll() is not None)  # past its imports
    with Sampler({"cli": proc.pid, "mongo": mongo}) as sampler:
        _, err = proc.communicate(timeout=3600)
    seconds = time.perf_counter() - began
    if proc.returncode != 0:
        raise RuntimeError(f"recograph export failed ({proc.returncode}):\n{err.decode()[-3000:]}")
    lines = sum(chunk.count(b"\n") for chunk in _chunks(out))
    return {"lines": lines, "seconds": round(seconds, 1), "events_per_s": round(lines / seconds),
            "cli_peak_mb": round(sampler.peak["cli"] / MB), "cli_started_after_s": round(started, 1),
            "mongo_growth_mb": sampler.growth_mb()["mongo"]}


def _when(ready: Callable[[], bool], timeout_s: float = 60.0) -> float:
    began = time.perf_counter()
    while not ready() and time.perf_counter() - began < timeout_s:
        time.sleep(0.05)
    return time.perf_counter() - began


def _chunks(path: Path):
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk


def markdown(result: dict[str, Any]) -> str:
    http = result["http"]
    rows = [
        "| path | events | seconds | events/s | serve RSS before | serve RSS growth (peak) | MongoDB RSS growth |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| GET /export/interactions | {http['lines']:,} | {http['seconds']} | {http['events_per_s']:,} | "
        f"{http['rss_before_mb']['serve']} MB | {http['growth_mb']['serve']} MB | {http['growth_mb']['mongo']} MB |",
    ]
    if (cli := result.get("cli")) is not None:
        rows.append(f"| recograph export interactions | {cli['lines']:,} | {cli['seconds']} | {cli['events_per_s']:,}"
                    f" | | CLI peak RSS {cli['cli_peak_mb']} MB | {cli['mongo_growth_mb']} MB |")
    return "\n".join(rows)


async def main(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="recograph-export-"))
    serve = ServeProcess(data_dir, free_port())
    serve.env.update(RECOGRAPH_PROCESSES="1", RECOGRAPH_JOBS_CRON="false")  # one process to watch; no schedules
    serve.start()
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            await serve.wait_ready(client)
            tenant, _ = serve.create_tenant("export")
            key = tenant["keys"]["admin"]
            made = await client.post(f"{serve.url}/graphql", headers={"Authorization": f"Bearer {key}"}, json={
                "query": 'mutation { createScenario(input: {name: "feed", template: VLOG}) { id } }'})
            scenario_id = made.json()["data"]["createScenario"]["id"]
        info = serve.runtime_info()
        print(f"inserting {args.events:,} interactions over {args.days:g} days ...")
        inserted_s = insert_events(info["mongo_url"], "recograph", tenant["tenant_id"], scenario_id, args.events,
                                   args.days)
        print(f"\ninserted in {inserted_s:.0f} s; exporting over HTTP ...")
        pids = {"serve": serve.proc.pid, "mongo": mongo_pid(serve)}
        time.sleep(2.0)  # let serve settle after the insert (its consumer and registry idle)
        result: dict[str, Any] = {"events": args.events, "days": args.days, "inserted_s": round(inserted_s, 1),
                                  "http": await http_export(serve.url, key, scenario_id, pids)}
        if args.cli:
            print("exporting with the CLI ...")
            result["cli"] = cli_export(serve, tenant["tenant_id"], scenario_id, data_dir / "events.ndjson",
                                       pids["mongo"])
    finally:
        serve.stop()
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    out = Path(__file__).resolve().parent / "results" / "export.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(markdown(result))
    checks = [result["http"]["lines"] == args.events, result["http"]["newest_first"],
              result["http"]["growth_mb"]["serve"] < TARGET_GROWTH_MB]
    if "cli" in result:
        checks.append(result["cli"]["lines"] == args.events)
    print("target met" if all(checks) else f"FAILED checks: {checks}")
    return 0 if all(checks) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--days", type=float, default=90.0)
    parser.add_argument("--no-cli", dest="cli", action="store_false", help="Skip the CLI export.")
    parser.add_argument("--keep", action="store_true", help="Keep the temporary data dir.")
    sys.exit(asyncio.run(main(parser.parse_args())))
