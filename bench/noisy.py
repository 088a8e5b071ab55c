"""Noisy neighbour: one tenant's public key floods at 10x its rate limit; another tenant's recommendations p99 at
50 req/s must stay within 2x of its p99 without the flood.

`recograph serve` runs as its own process (embedded servers, its default serving processes). Two tenants are made
with `recograph tenants create --json`, each with a scenario of fresh items (no training needed); the noisy tenant's
public limit is set with `recograph tenants limits NOISY --scope public --rate L --burst 2L` (default L = 20/s:
at 100/s the traffic the limit lets through already saturates a 2-core machine, so the flood's own cost would not
show).
The quiet tenant's public key then asks `recommendations(first: 20)` for random users at a fixed rate (open loop,
default 50 req/s) for `--duration` seconds, once alone (baseline) and once while a separate client process floods
the noisy tenant's `recommendations` with its public key at `--flood-factor` x L (default 200 req/s offered).

    .venv/bin/python bench/noisy.py [--duration 30] [--rate 50] [--limit 20] [--flood-factor 10]

Prints both legs (p50, p99, max), the flood's answers by status, and the p99 ratio (target <= 2).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from freshness import Api, set_up  # noqa: E402
from harness import children, cpu_seconds, free_port, recograph_command  # noqa: E402
from ingest import ServeProcess  # noqa: E402

RECOMMEND = ("query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 20) "
             "{ requestId items { item { id } score } } }")
TARGET_RATIO = 2.0
USERS = 5000
FLOOD_CONNECTIONS = 32


async def _paced(rate: float, seconds: float, send) -> None:
    """Start send() `rate` times a second for `seconds`, each in its own task (open loop: a slow answer delays no
    later request), and wait for the last answers."""
    began, tasks, n = time.perf_counter(), set(), 0
    while (due := began + n / rate) < began + seconds and time.perf_counter() < began + seconds:
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        task = asyncio.create_task(send())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
        n += 1
    await asyncio.gather(*tasks)


async def probe_leg(url: str, key: str, sid: str, rate: float, seconds: float) -> tuple[list[float], Counter]:
    """Ask the quiet tenant's recommendations at `rate`; return each answer's seconds and the statuses."""
    latencies: list[float] = []
    statuses: Counter = Counter()
    rng = random.Random(7)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=32)) as client:
        async def send() -> None:
            body = {"query": RECOMMEND, "variables": {"s": sid, "u": f"u{rng.randrange(USERS)}"}}
            began = time.perf_counter()
            answer = await client.post(f"{url}/graphql", json=body, headers=headers)
            latencies.append(time.perf_counter() - began)
            ok = answer.status_code == 200 and not answer.json().get("errors")
            statuses["ok" if ok else f"{answer.status_code} {answer.text[:80]}"] += 1

        await _paced(rate, seconds, send)
    return latencies, statuses


def _request(url: str, key: str, body: dict) -> bytes:
    """Return the bytes of one HTTP/1.1 keep-alive POST to /graphql."""
    host = url.removeprefix("http://")
    payload = json.dumps(body).encode()
    head = (f"POST /graphql HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n")
    return head.encode() + payload


async def _connection(url: str, requests: list[bytes], next_due, statuses: Counter) -> None:
    """Send requests on one keep-alive connection at the times next_due() gives, until it gives None."""
    host, _, port = url.removeprefix("http://").partition(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        while (due := next_due()) is not None:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            writer.write(requests[int(due * 1e6) % len(requests)])
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length:\s*(\d+)", head).group(1))
            await reader.readexactly(length)
            statuses[int(head[9:12])] += 1
    finally:
        writer.close()


def flood(url: str, key: str, sid: str, rate: float, seconds: float, results: mp.Queue) -> None:
    """Send the noisy tenant's recommendations at `rate` for `seconds` from a process of its own, over raw keep-alive
    connections (an HTTP client library would spend more CPU than the server it floods); put the statuses."""
    requests = [_request(url, key, {"query": RECOMMEND, "variables": {"s": sid, "u": f"n{u}"}}) for u in range(USERS)]

    async def run() -> Counter:
        statuses: Counter = Counter()
        began, sent = time.perf_counter(), [0]

        def next_due() -> float | None:
            due = began + sent[0] / rate
            if due >= began + seconds or time.perf_counter() >= began + seconds:
                return None
            sent[0] += 1
            return due

        await asyncio.gather(*(_connection(url, requests, next_due, statuses) for _ in range(FLOOD_CONNECTIONS)))
        return statuses

    began = time.perf_counter()
    statuses = asyncio.run(run())
    results.put((dict(statuses), time.perf_counter() - began))


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@dataclass
class Leg:
    """One measured leg: the quiet tenant's answers, and what the noisy tenant sent meanwhile (if anything)."""

    name: str
    latencies: list[float]
    statuses: Counter
    noisy_rate: float = 0.0
    noisy_statuses: dict = field(default_factory=dict)
    noisy_seconds: float = 1.0
    server_cpu: float = 0.0  # CPU seconds a second that serve and its servers and children used during the leg

    @property
    def p99(self) -> float:
        return percentile(self.latencies, 0.99)

    def row(self) -> str:
        sent = sum(self.noisy_statuses.values()) / self.noisy_seconds
        passed = self.noisy_statuses.get(200, 0) / self.noisy_seconds
        noisy = f"{sent:,.0f} sent, {passed:,.0f} let through" if self.noisy_rate else "none"
        return (f"| {self.name} | {len(self.latencies)} | {statistics.median(self.latencies) * 1000:.1f} | "
                f"{self.p99 * 1000:.1f} | {max(self.latencies) * 1000:.1f} | {dict(self.statuses)} | {noisy} | "
                f"{self.server_cpu:.2f} |")


def set_limit(serve: ServeProcess, tenant_id: str, limit: float) -> None:
    """Set the noisy tenant's public limit through the CLI, as an operator would."""
    argv = [recograph_command(), "tenants", "limits", tenant_id, "--scope", "public", "--rate", f"{limit:g}",
            "--burst", str(int(2 * limit))]
    done = subprocess.run(argv, env=serve.env, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"tenants limits failed: {done.stderr[-2000:]}")


async def measure(name: str, serve: ServeProcess, quiet: tuple[str, str], noisy: tuple[str, str], noisy_rate: float,
                  args: argparse.Namespace) -> Leg:
    """Measure the quiet tenant for `duration` s while the noisy one sends `noisy_rate` req/s (0: nothing)."""
    if not noisy_rate:
        with server_cpu(serve) as cpu:
            leg = Leg(name, *await probe_leg(serve.url, *quiet, args.rate, args.duration))
        leg.server_cpu = cpu[0]
        return leg
    context = mp.get_context("spawn")
    results: mp.Queue = context.Queue()
    sender = context.Process(target=flood, args=(serve.url, *noisy, noisy_rate, args.duration + 4, results))
    sender.start()
    try:
        await asyncio.sleep(2.0)  # let it settle
        with server_cpu(serve) as cpu:
            latencies, statuses = await probe_leg(serve.url, *quiet, args.rate, args.duration)
        noisy_statuses, seconds = results.get(timeout=args.duration + 120)
    finally:
        sender.join(timeout=30)
    return Leg(name, latencies, statuses, noisy_rate, noisy_statuses, seconds, cpu[0])


@contextlib.contextmanager
def server_cpu(serve: ServeProcess) -> Iterator[list[float]]:
    """Yield a list that holds, after the block, the CPU seconds a second serve and its children used in it."""
    pids = {**serve.pids(), **{f"grandchild-{p}": p for child in children(serve.proc.pid) for p in children(child)}}
    before, began, out = cpu_seconds(pids), time.perf_counter(), [0.0]
    yield out
    after, seconds = cpu_seconds(pids), time.perf_counter() - began
    out[0] = sum(after[k] - before[k] for k in after if k in before) / seconds


async def main(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="recograph-noisy-"))
    serve = ServeProcess(data_dir, free_port())
    serve.start()
    try:
        async with httpx.AsyncClient(timeout=60) as client:
            await serve.wait_ready(client)
            quiet, _ = serve.create_tenant("quiet")
            noisy, _ = serve.create_tenant("noisy")
            quiet_sid = await set_up(Api(client, serve.url, quiet["keys"]["admin"]), "quiet")
            noisy_sid = await set_up(Api(client, serve.url, noisy["keys"]["admin"]), "noisy")
        set_limit(serve, noisy["tenant_id"], args.limit)
        q, n = (quiet["keys"]["public"], quiet_sid), (noisy["keys"]["public"], noisy_sid)
        await probe_leg(serve.url, *q, args.rate, 5)  # warm both serving processes
        legs = [
            await measure("quiet alone (baseline)", serve, q, n, 0, args),
            await measure("noisy at its limit", serve, q, n, args.limit, args),
            await measure(f"noisy flooding at {args.flood_factor:g}x its limit", serve, q, n,
                          args.limit * args.flood_factor, args),
        ]
    finally:
        serve.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return report(args, legs)


def report(args: argparse.Namespace, legs: list[Leg]) -> int:
    """Print the legs as Markdown and the verdict; return the exit status (0: target met)."""
    print(f"\nquiet tenant: recommendations(first: 20) at {args.rate:g} req/s for {args.duration:g} s per leg; noisy "
          f"tenant's public key limited to {args.limit:g}/s (burst {int(2 * args.limit)}), asking the same\n")
    print("| leg | requests | p50 ms | p99 ms | max ms | quiet's answers | noisy req/s | server CPU s/s |")
    print("|---|---:|---:|---:|---:|---|---|---:|")
    for leg in legs:
        print(leg.row())
    alone, at_limit, flooded = legs
    ratio = flooded.p99 / alone.p99
    met = ratio <= TARGET_RATIO and all(set(leg.statuses) == {"ok"} for leg in legs)
    print(f"\np99 ratio flood / alone: {ratio:.2f} (target <= {TARGET_RATIO:g}: {'met' if met else 'NOT met'}); "
          f"flood / noisy at its limit: {flooded.p99 / at_limit.p99:.2f} (what the refused excess costs)")
    return 0 if met else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of each measured leg")
    parser.add_argument("--rate", type=float, default=50.0, help="quiet tenant's requests a second")
    parser.add_argument("--limit", type=float, default=20.0, help="noisy tenant's public limit, requests a second")
    parser.add_argument("--flood-factor", type=float, default=10.0, help="flood rate as a multiple of the limit")
    sys.exit(asyncio.run(main(parser.parse_args())))
