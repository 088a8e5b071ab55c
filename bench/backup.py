"""Backup benchmark: cold `recommendations` at a fixed rate without and during `recograph backup` of the demo, in
the same run on the same server; then `recograph restore` of that backup into a new data dir, timed, and served.

  1. Starts `recograph serve` on a temporary data dir (bench/serve.py's ServeProcess: embedded servers, no
     schedules), loads the MovieLens demo with `recograph demo load` and trains it over GraphQL, as bench/serve.py
     does (`--skip-load DATA_DIR` reuses a data dir a `bench/serve.py --keep` run left).
  2. Records what `similarItems` answers for a few demo movies and `profile { interactionCount }` for a few users.
  3. Drives cold recommendations (bench/serve.py's "cold" shape: a (user, context) never asked before, so every
     answer is computed) with wrk paced at --rate for --duration seconds, in legs: "without" (nothing else runs)
     and "during" (`recograph backup` of every tenant running beside serve, attached to its servers; a new backup
     starts as soon as one ends, so the whole leg runs under backups, and the leg starts once the first backup has
     begun writing). --rounds pairs of legs alternate which goes first. Target: p99 during <= 2 x p99 without.
  4. Stops serve, restores the first backup into a data dir that does not exist yet (`recograph restore`), timed
     (target: under 60 s), serves it and asks the same questions as in 2: the answers must be the same.

    .venv/bin/python bench/backup.py [--rate 50] [--duration 30] [--rounds 1] [--keep] [--skip-load DATA_DIR]

Needs `wrk`. Writes bench/results/backup.json and prints the table as Markdown.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from harness import free_port, recograph_command
from serve import (
    Api,
    Demo,
    Generators,
    Leg,
    ServeProcess,
    check_tools,
    console,
    find_demo,
    load_demo,
    loads,
    sample,
    train,
)

RESULTS = Path(__file__).resolve().parent / "results" / "backup.json"
P99_RATIO_TARGET = 2.0
RESTORE_TARGET_S = 60.0
SIMILAR = ("query($s: ID!, $i: ID!) { similarItems(scenarioId: $s, itemId: $i, first: 20) "
           "{ items { item { id } score } } }")
PROFILE = "query($u: ID!) { profile(userId: $u) { interactionCount } }"
ITEMS = ("1", "260", "296", "318", "356", "1196", "2571", "4993")
USERS = tuple(str(u) for u in (1, 2, 7, 19, 68, 111, 249, 414, 448, 600))


@dataclass
class Backups:
    """`recograph backup` run again and again beside serve until stopped; the first backup is kept."""

    serve: ServeProcess
    folder: Path
    runs: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _started: int = 0  # backups started so far, every round together (each writes a new path)
    _failure: BaseException | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 120
        # The leg starts once the first backup writes (past the command's imports and its attaching to serve).
        while not any(self.folder.glob(".*.partial-*")) and not self.runs and time.monotonic() < deadline:
            time.sleep(0.05)

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self._started += 1
                self._backup(self.folder / f"demo-{self._started}")
        except BaseException as exc:  # noqa: BLE001 - raised again by stop(), in the bench's thread
            self._failure = exc

    def _backup(self, path: Path) -> None:
        began = time.perf_counter()
        done = subprocess.run([recograph_command(), "backup", str(path)], env=self.serve.env, capture_output=True,
                              text=True, timeout=1800, cwd=self.serve.data_dir)
        seconds = round(time.perf_counter() - began, 2)
        if done.returncode != 0:
            raise RuntimeError(f"recograph backup exited {done.returncode}:\n{done.stderr[-3000:]}")
        self.runs.append({"path": str(path), "seconds": seconds, "says": done.stderr.strip().splitlines()[-1]})
        if len(self.runs) > 1:
            shutil.rmtree(path, ignore_errors=True)  # the first is the one restored

    def stop(self) -> None:
        """Let the backup in progress finish and start no other (until `start` again); raise what failed."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._stop, self._thread = threading.Event(), None
        if self._failure is not None:
            raise RuntimeError("a backup failed during the leg") from self._failure

    @property
    def first(self) -> Path:
        return Path(self.runs[0]["path"])


def answers(api: Api, demo: Demo) -> dict[str, Any]:
    """Return what similarItems and profile answer for the bench's items and users."""
    similar = {item: [(r["item"]["id"], round(r["score"], 6)) for r in api.query(
        SIMILAR, {"s": demo.scenario_id, "i": item}, demo.keys["public"])["similarItems"]["items"]] for item in ITEMS}
    profiles = {user: (api.query(PROFILE, {"u": user}, demo.keys["admin"])["profile"] or {}).get("interactionCount")
                for user in USERS}
    return {"similar": similar, "profiles": profiles}


def legs(gen: Generators, load: Any, backups: Backups, args: argparse.Namespace) -> dict[str, list[Leg]]:
    """Run the paced cold legs without and during backups, alternating which goes first each round."""
    out: dict[str, list[Leg]] = {"without": [], "during": []}
    for round_no in range(args.rounds):
        for state in ("without", "during") if round_no % 2 == 0 else ("during", "without"):
            if state == "during":
                backups.start()
            try:
                leg = gen.wrk(load, seconds=args.duration, threads=1, connections=args.connections, rate=args.rate)
            finally:
                if state == "during":
                    backups.stop()
            console.print(f"  {state:8} {leg.rate:6.1f} req/s  latency {leg.latency_ms}  from schedule "
                          f"{leg.late_ms}  errors {leg.errors}  CPU% {leg.cpu_percent}")
            out[state].append(leg)
    return out


def row(state: str, ls: list[Leg]) -> dict[str, Any]:
    p99s = [leg.latency_ms["p99"] for leg in ls]
    return {
        "leg": f"recommendations, cold, {args_rate(ls)} req/s, {state} backups", "state": state,
        "requests": sum(leg.requests for leg in ls), "errors": sum(leg.errors for leg in ls),
        "req_per_s": round(sum(leg.requests for leg in ls) / sum(leg.seconds for leg in ls), 1),
        "p50_ms": round(statistics.median(leg.latency_ms["p50"] for leg in ls), 2),
        "p99_ms": round(max(p99s), 2), "p99_per_leg_ms": p99s,
        "p99_from_schedule_ms": round(max(leg.late_ms.get("p99", 0.0) for leg in ls), 2),
        "cpu_percent": ls[0].cpu_percent,
        "sample_error": next((leg.sample_error for leg in ls if leg.sample_error), ""),
    }


def args_rate(ls: list[Leg]) -> str:
    return f"{round(ls[0].requests / ls[0].seconds):g}" if ls and ls[0].seconds else "?"


def restore(backup: Path, before: dict[str, Any], demo: Demo, work: Path) -> dict[str, Any]:
    """Restore the backup into a new data dir, timed; serve it and ask the same questions."""
    target = work / "restored" / "data"  # neither exists yet
    env = ServeProcess(target, free_port()).env  # the environment serve will have there (embedded servers only)
    began = time.perf_counter()
    done = subprocess.run([recograph_command(), "restore", str(backup)], env=env, capture_output=True, text=True,
                          timeout=1800)
    seconds = round(time.perf_counter() - began, 1)
    if done.returncode != 0:
        raise RuntimeError(f"recograph restore exited {done.returncode}:\n{done.stderr[-3000:]}")
    serve = ServeProcess(target, free_port())
    serve.start()
    try:
        with httpx.Client(timeout=120) as client:
            began = time.perf_counter()
            serve.wait_ready(client)
            ready_s = round(time.perf_counter() - began, 1)
            after = answers(Api(client, serve.url), demo)
    finally:
        serve.stop()
    same = after == before
    return {"seconds": seconds, "target": f"< {RESTORE_TARGET_S:g} s", "pass": seconds < RESTORE_TARGET_S and same,
            "serve_ready_after_s": ready_s, "same_answers": same, "says": done.stderr.strip().splitlines()[-1],
            "differences": {k: {"before": before[k], "after": after[k]} for k in before if before[k] != after[k]}}


def markdown(result: dict[str, Any]) -> str:
    rows = ["| leg | req/s | requests | errors | p50 ms | p99 ms | p99 from schedule ms | target | |",
            "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in result["rows"]:
        verdict = "" if r.get("pass") is None else ("pass" if r["pass"] else "FAIL")
        rows.append(f"| {r['leg']} | {r['req_per_s']} | {r['requests']:,} | {r['errors']} | {r['p50_ms']} | "
                    f"{r['p99_ms']} | {r['p99_from_schedule_ms']} | {r.get('target', '')} | {verdict} |")
    runs = result["backups"]
    rows.append("")
    rows.append(f"Backups during the legs: {len(runs)}, {statistics.median(b['seconds'] for b in runs):.1f} s each "
                f"(median; the command's start included).")
    if (r := result.get("restore")) is not None:
        verdict = "pass" if r["pass"] else "FAIL"
        rows.append(f"Restore of the demo into a new data dir: {r['seconds']} s (target {r['target']}: {verdict}); "
                    f"serve ready {r['serve_ready_after_s']} s after start; same similarItems and profiles: "
                    f"{r['same_answers']}.")
    return "\n".join(rows)


def bench(args: argparse.Namespace, serve: ServeProcess, work: Path) -> dict[str, Any]:
    with httpx.Client(timeout=120) as client:
        serve.wait_ready(client)
        api = Api(client, serve.url)
        if args.skip_load is None:
            console.print("loading the demo (`recograph demo load`) ...")
            console.print(f"  loaded in {load_demo(serve):.0f} s")
        demo = find_demo(api, serve.data_dir)
        if not set(sample(api, demo)["sources"]) - {"trending", "popular", "fresh", "affinity"}:
            console.print("training the demo scenario ...")
            demo.train = train(api, demo)
        before = answers(api, demo)
        gen = Generators(serve.url, demo.keys["public"], work, serve.pids())
        cold = loads(demo.scenario_id, 1)["cold"]
        console.print("warming up ...")
        gen.wrk(cold, seconds=args.warmup, threads=1, connections=2)
        folder = work / "backups"
        folder.mkdir()
        backups = Backups(serve, folder)
        console.print(f"cold recommendations at {args.rate:g} req/s, {args.duration:g} s legs, {args.rounds} round(s)")
        measured = legs(gen, cold, backups, args)
    without, during = row("without", measured["without"]), row("during", measured["during"])
    ratio = during["p99_ms"] / without["p99_ms"] if without["p99_ms"] else float("inf")
    during.update(p99_ratio=round(ratio, 2), target=f"p99 <= {P99_RATIO_TARGET:g} x without ({ratio:.2f} x)",
                  **{"pass": ratio <= P99_RATIO_TARGET and not during["errors"]})
    result: dict[str, Any] = {
        "when": datetime.now(UTC).isoformat(), "settings": {k: str(v) for k, v in vars(args).items()},
        "tenant_id": demo.tenant_id, "rows": [without, during], "backups": backups.runs,
        "legs": {state: [asdict(leg) for leg in ls] for state, ls in measured.items()},
    }
    serve.stop()
    if not args.skip_restore:
        console.print("restoring the first backup into a new data dir ...")
        result["restore"] = restore(backups.first, before, demo, work)
        console.print(f"  {result['restore']['says']}")
    return result


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=50, help="cold requests a second (default 50)")
    parser.add_argument("--duration", type=float, default=30, help="seconds of each leg (default 30)")
    parser.add_argument("--rounds", type=int, default=1, help="pairs of legs, alternating which goes first (default 1)")
    parser.add_argument("--connections", type=int, default=4, help="wrk connections of the paced legs (default 4)")
    parser.add_argument("--warmup", type=float, default=5, help="seconds of warm-up (default 5)")
    parser.add_argument("--skip-load", type=Path, metavar="DATA_DIR", help="reuse a loaded (and trained) demo data dir")
    parser.add_argument("--skip-restore", action="store_true", help="measure the legs only")
    parser.add_argument("--output", type=Path, default=RESULTS)
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a target is missed, 2 when wrk is missing."""
    args = parse_args(argv)
    if "wrk" in check_tools():
        console.print("[red]wrk is missing[/red]: sudo apt-get install -y wrk")
        return 2
    data_dir = args.skip_load.resolve() if args.skip_load else Path(tempfile.mkdtemp(prefix="recograph-bench-backup-"))
    work = Path(tempfile.mkdtemp(prefix="recograph-bench-backup-work-"))
    serve = ServeProcess(data_dir, free_port())
    try:
        serve.start()
        result = bench(args, serve, work)
    except BaseException:
        console.print(f"[red]bench failed; server log tail:[/red]\n{serve.tail()}", markup=True, highlight=False)
        raise
    finally:
        serve.stop()
        if args.keep:
            console.print(f"kept {data_dir} and {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
            if args.skip_load is None:
                shutil.rmtree(data_dir, ignore_errors=True)
    result["markdown"] = markdown(result)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2, default=str))
    console.print(f"\nwrote {args.output}\n")
    print(result["markdown"])
    passed = [r["pass"] for r in result["rows"] if r.get("pass") is not None]
    passed += [result["restore"]["pass"]] if "restore" in result else []
    return 0 if passed and all(passed) else 1


if __name__ == "__main__":
    sys.exit(main())
