"""Freshness: from `recordInteractions` returning to the next `recommendations` no longer containing the item AND
`profile` showing it, under a background load of events.

`recograph serve` runs as its own process (embedded servers; the consumer in its child process). A probe user asks for
recommendations, clicks the first item, and from the moment the mutation returns polls both queries until the item
is gone from the list and first in the profile's recent items. Probes run once with no other traffic (baseline) and
once while `--workers` background tasks record `--rate` events/s in all for other users, in batches of `--batch`.

With `--sasrec` the scenario recalls from `sasrec` alone, trained first on synthetic chains (each user walks the
catalogue i0 -> i1 -> i2 ..., from a random start, so the next item is learnable). A probe clicks an item b the user
has not seen and waits until b's successor is in the first five of the list as well: the new event has reached the
sequence model's input and changed its candidates.

    .venv/bin/python bench/freshness.py [--probes 200] [--rate 1000] [--batch 100] [--sasrec]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import free_port  # noqa: E402
from ingest import ServeProcess  # noqa: E402

CREATE = "mutation($i: CreateScenarioInput!) { createScenario(input: $i) { id } }"
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
RECORD = "mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted errors { message } } }"
RECOMMEND = "query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 20) { items { item { id } } } }"
PROFILE = "query($u: ID!) { profile(userId: $u) { recent { itemId } } }"
ITEMS = 1000
TARGET_P99_S = 1.0
TRAIN = "mutation($s: ID!) { trainScenario(scenarioId: $s) { id } }"
JOB = "query($id: ID!) { job(id: $id) { status progress stage error } }"
CHAIN_USERS, CHAIN_LENGTH = 400, 30  # synthetic training for --sasrec: 12,000 events, SASRec trains in seconds
SUCCESSOR_TOP = 5  # with --sasrec, the clicked item's successor must be among the first five


class Api:
    """GraphQL over HTTP with the admin key."""

    def __init__(self, client: httpx.AsyncClient, url: str, key: str) -> None:
        self.client, self.url, self.headers = client, f"{url}/graphql", {"Authorization": f"Bearer {key}"}

    async def __call__(self, query: str, variables: dict) -> dict:
        response = await self.client.post(self.url, json={"query": query, "variables": variables}, headers=self.headers)
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(body["errors"])
        return body["data"]


async def set_up(api: Api, name: str = "fresh") -> str:
    """Create a scenario of fresh items (no training needed) and return its id."""
    config = {"recall": [{"source": "fresh", "weight": 1, "limit": 200}]}
    sid = (await api(CREATE, {"i": {"name": name, "template": "NEWS", "config": config}}))["createScenario"]["id"]
    now = datetime.now(UTC)
    items = [{"id": f"i{k}", "categories": [f"c{k % 10}"], "publishedAt": (now - timedelta(minutes=k)).isoformat()}
             for k in range(ITEMS)]
    for start in range(0, ITEMS, 500):
        await api(UPSERT, {"s": sid, "items": items[start : start + 500]})
    return sid


async def set_up_sasrec(api: Api, name: str = "fresh-sasrec") -> str:
    """Create a scenario that recalls from `sasrec` alone, record synthetic chains and train it; return its id."""
    config = {"recall": [{"source": "sasrec", "weight": 1, "limit": 200,
                          "params": {"timeBudgetSeconds": 60, "minItemUsers": 1, "targetSpan": 1}}],
              "rerank": [], "models": {"tune": False}}
    sid = (await api(CREATE, {"i": {"name": name, "template": "VLOG", "config": config}}))["createScenario"]["id"]
    items = [{"id": f"i{k}", "categories": [f"c{k % 10}"]} for k in range(ITEMS)]
    for start in range(0, ITEMS, 500):
        await api(UPSERT, {"s": sid, "items": items[start : start + 500]})
    rng = random.Random(11)
    began = datetime.now(UTC) - timedelta(days=10)
    events = []
    for u in range(CHAIN_USERS):
        first = rng.randrange(ITEMS - CHAIN_LENGTH)
        events += [{"scenarioId": sid, "userId": f"chain{u}", "itemId": f"i{first + k}", "type": "CLICK",
                    "timestamp": (began + timedelta(minutes=u * CHAIN_LENGTH + k)).isoformat()}
                   for k in range(CHAIN_LENGTH)]
    for start in range(0, len(events), 500):
        await api(RECORD, {"e": events[start : start + 500]})
    job = (await api(TRAIN, {"s": sid}))["trainScenario"]["id"]
    deadline = time.perf_counter() + 600
    while (state := (await api(JOB, {"id": job}))["job"])["status"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
        if time.perf_counter() > deadline:
            raise RuntimeError(f"training still {state['status']} after 600 s ({state['stage']})")
        await asyncio.sleep(1.0)
    if state["status"] != "SUCCEEDED":
        raise RuntimeError(f"training {state['status']}: {state['error']}")
    return sid


def successor(item: str) -> str | None:
    """Return the item after `item` in the synthetic chains (None for the last)."""
    k = int(item[1:]) + 1
    return f"i{k}" if k < ITEMS else None


async def probe(api: Api, sid: str, user: str, sasrec: bool = False) -> float:
    """Return seconds from the click's mutation returning to both reads reflecting it (with sasrec, also the
    clicked item's successor among the first SUCCESSOR_TOP of the list)."""
    listed = [r["item"]["id"] for r in (await api(RECOMMEND, {"s": sid, "u": user}))["recommendations"]["items"]]
    item = listed[0]
    if sasrec:  # an item whose successor is not listed yet, so that only the click can bring it in; away from the
        # catalogue's ends, where few chains pass and the model has seen the pair a handful of times
        middle = range(CHAIN_LENGTH, ITEMS - CHAIN_LENGTH)
        item = next(f"i{k}" for k in random.Random(user).sample(middle, len(middle))
                    if f"i{k + 1}" not in listed[:SUCCESSOR_TOP] and f"i{k}" not in listed)
    expected = successor(item) if sasrec else None
    await api(RECORD, {"e": [{"scenarioId": sid, "userId": user, "itemId": item, "type": "CLICK"}]})
    returned = time.perf_counter()
    gone = shown = False
    while not (gone and shown):
        if not gone:
            ids = [r["item"]["id"] for r in (await api(RECOMMEND, {"s": sid, "u": user}))["recommendations"]["items"]]
            gone = item not in ids and (expected is None or expected in ids[:SUCCESSOR_TOP])
        if not shown:
            profile = (await api(PROFILE, {"u": user}))["profile"]
            shown = bool(profile and profile["recent"] and profile["recent"][0]["itemId"] == item)
        if time.perf_counter() - returned > 10:
            raise RuntimeError(f"{user}: {item} still not reflected after 10 s")
    return time.perf_counter() - returned


async def background(api: Api, sid: str, rate: float, batch: int, stop: asyncio.Event, sent: list[int],
                     seed: int) -> None:
    """Record `rate` events/s for background users until stopped."""
    rng = random.Random(seed)
    interval = batch / rate
    next_at = time.perf_counter()
    while not stop.is_set():
        events = [{"scenarioId": sid, "userId": f"bg{rng.randrange(20_000)}", "itemId": f"i{rng.randrange(ITEMS)}",
                   "type": rng.choice(["VIEW", "VIEW", "CLICK", "LIKE"])} for _ in range(batch)]
        await api(RECORD, {"e": events})
        sent[0] += batch
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


async def run_probes(api: Api, sid: str, n: int, tag: str, sasrec: bool = False) -> list[float]:
    return [await probe(api, sid, f"{tag}{k}", sasrec) for k in range(n)]


def summary(name: str, samples: list[float], extra: str = "") -> str:
    ordered = sorted(samples)
    p99 = ordered[min(len(ordered) - 1, int(round(0.99 * (len(ordered) - 1))))]
    return (f"| {name} | {len(samples)} | {statistics.median(samples) * 1000:.0f} | {p99 * 1000:.0f} | "
            f"{max(samples) * 1000:.0f} | {extra} |")


def report(idle: list[float], loaded: list[float], achieved: float, rate: int, target_s: float) -> int:
    """Print both legs as a Markdown table and the verdict; return the exit status (0: target met)."""
    p99 = sorted(loaded)[min(len(loaded) - 1, int(round(0.99 * (len(loaded) - 1))))]
    print("\n| leg | probes | p50 ms | p99 ms | max ms | background |\n|---|---:|---:|---:|---:|---|")
    print(summary("no other traffic (baseline)", idle, "none"))
    print(summary("under load", loaded, f"{achieved:,.0f} events/s recorded (asked {rate:,})"))
    print(f"\ntarget: p99 under load < {target_s * 1000:.0f} ms: {'met' if p99 < target_s else 'NOT met'}")
    return 0 if p99 < target_s else 1


async def main(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="recograph-freshness-"))
    serve = ServeProcess(data_dir, free_port())
    serve.start()
    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as client:
            await serve.wait_ready(client)
            keys, _ = serve.create_tenant("freshness")
            api = Api(client, serve.url, keys["keys"]["admin"])
            sid = await (set_up_sasrec(api) if args.sasrec else set_up(api))
            await run_probes(api, sid, 5, "warm", args.sasrec)
            idle = await run_probes(api, sid, args.probes, "idle", args.sasrec)
            stop, sent = asyncio.Event(), [0]
            load = asyncio.gather(*(background(api, sid, args.rate / args.workers, args.batch, stop, sent, seed)
                                    for seed in range(args.workers)))
            await asyncio.sleep(2.0)  # let the load settle
            began, before = time.perf_counter(), sent[0]
            loaded = await run_probes(api, sid, args.probes, "load", args.sasrec)
            achieved = (sent[0] - before) / (time.perf_counter() - began)
            stop.set()
            await load
    finally:
        serve.stop()
    return report(idle, loaded, achieved, args.rate, TARGET_P99_S)


def load_arguments(parser: argparse.ArgumentParser, *, probes: int) -> argparse.ArgumentParser:
    """Add the probe count and the background load's options (shared with bench/metrics.py)."""
    parser.add_argument("--probes", type=int, default=probes)
    parser.add_argument("--rate", type=int, default=1000, help="background events per second")
    parser.add_argument("--batch", type=int, default=100, help="events per background recordInteractions call")
    parser.add_argument("--workers", type=int, default=8,
                        help="background calls in flight, each paced to rate/workers (a 100-event call takes "
                             "about 0.4 s under this load: 4 in flight cannot offer 1,000 events/s)")
    return parser


if __name__ == "__main__":
    parser = load_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), probes=200)
    parser.add_argument("--sasrec", action="store_true",
                        help="recall from a trained sasrec alone and wait for the click to change its candidates")
    sys.exit(asyncio.run(main(parser.parse_args())))
