"""Analytics benchmark: build the rollups of the demo tenant plus a quarter of synthetic traffic, then time each
analytics query over HTTP.

`recograph serve` runs as its own process (one serving process, embedded servers, a data dir on disk, the periodic
rollup pass off so that the build is timed alone). The bench loads the MovieLens demo with `recograph demo load`
(tenant `demo`, scenario `movies`: 9,742 items, 100,836 ratings dated 1996-2018), then writes straight into serve's
MongoDB `--events` synthetic interactions and `--pages` served pages of 10 items (the documents `recordInteractions`
and the event consumer store) spread over the last `--days` days: `--users` users who arrive over the period and
stay active for an exponential number of days; items drawn by a Zipf law; VIEW/CLICK/WATCH/LIKE/PURCHASE; a share of
the clicks cite a served page (position-biased), so attribution by position and source has data. Indexes are dropped
for the bulk insert and built again after (~8x faster on the embedded server). Then:

  1. build: `refreshAnalytics` over GraphQL until nothing is pending (each call works for at most ~20 s): the
     whole history is rolled up (every day since 1996 with a rating). Reports wall time, hours and days rolled up;
  2. incremental: 1,000 events sent now through `recordInteractions`, then one `refreshAnalytics` timed;
  3. queries: over the last `--days` days, `--calls` sequential calls each (after one warm-up) of
     `analytics(granularity: DAY)`, `analytics(granularity: HOUR)`, `catalogueStats(first: 10)` and
     `audienceStats`, with the admin key -> median, p99 (nearest rank) and max milliseconds. Target: every p99 under
     300 ms.

    .venv/bin/python bench/analytics.py [--events 400000] [--pages 100000] [--days 90] [--calls 20] [--keep]

Writes bench/results/analytics.json and prints the table as Markdown.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from pymongo import MongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness import free_port, recograph_command  # noqa: E402
from ingest import ServeProcess  # noqa: E402
from models.documents import Impression, Interaction, Item  # noqa: E402

TARGET_MS = 300.0
INSERT_BATCH = 20_000
PAGE_SIZE = 10
SOURCES = ("als", "item_cf", "popular", "sasrec", "content")
KINDS = (("VIEW", 0.50), ("CLICK", 0.20), ("WATCH", 0.18), ("LIKE", 0.09), ("PURCHASE", 0.03))
CITING_CLICKS = 0.3  # share of the events that are clicks citing a served page
SCENARIOS = "{ scenarios(first: 50) { edges { node { id name } } } }"
REFRESH = "mutation { refreshAnalytics { hoursRolledUp pendingHours rolledUpTo busy } }"
RECORD = "mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted } }"
QUERIES = {
    "analytics DAY": """query($s: ID!, $f: DateTime!, $t: DateTime!) { analytics(scenarioId: $s, from: $f, to: $t,
      granularity: DAY) { points { start impressions clicks ctr conversions watchSeconds activeUsers newUsers } } }""",
    "analytics HOUR": """query($s: ID!, $f: DateTime!, $t: DateTime!) { analytics(scenarioId: $s, from: $f, to: $t,
      granularity: HOUR) { points { start impressions clicks ctr conversions watchSeconds activeUsers newUsers } } }""",
    "catalogueStats": """query($s: ID!, $f: DateTime!, $t: DateTime!) { catalogueStats(scenarioId: $s, from: $f,
      to: $t, first: 10) { activeItems recommendedItems coverage gini longTailItems longTailShare
      topItemsByImpressions { itemId impressions clicks ctr } topItemsByCtr { itemId impressions clicks ctr }
      topCategoriesByImpressions { category impressions clicks ctr }
      topCategoriesByCtr { category impressions ctr } } }""",
    "audienceStats": """query($s: ID!, $f: DateTime!, $t: DateTime!) { audienceStats(scenarioId: $s, from: $f, to: $t) {
      users meanEventsPerUser medianEventsPerUser eventsPerUser { lower upper users }
      retention { week users retained } ctrByPosition { position impressions clicks ctr }
      ctrBySource { source impressions clicks ctr } } }""",
}


class Api:
    """GraphQL over HTTP with one key."""

    def __init__(self, client: httpx.AsyncClient, url: str, key: str) -> None:
        self.client, self.url, self.key = client, url, key

    async def data(self, query: str, variables: dict | None = None) -> dict:
        response = await self.client.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                                          headers={"Authorization": f"Bearer {self.key}"})
        body = response.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]


class Traffic:
    """Synthetic users, items and times over the last `days` days."""

    def __init__(self, items: list[str], users: int, days: float, seed: int = 13) -> None:
        self.rng = random.Random(seed)
        self.now = datetime.now(UTC).replace(microsecond=0)
        self.span_s = days * 86_400
        ranked = items[:]
        self.rng.shuffle(ranked)
        self.items = ranked
        self.item_weights = list(_cumulative([1.0 / (k + 1) ** 1.05 for k in range(len(ranked))]))
        # each user: (arrival, last active) in seconds before now; activity weight
        self.users = []
        for n in range(users):
            arrival = self.rng.random() * self.span_s
            stay = self.rng.expovariate(1 / (20 * 86_400))
            self.users.append((f"s{n}", arrival, max(0.0, arrival - stay)))
        self.user_weights = list(_cumulative([self.rng.paretovariate(1.5) for _ in range(users)]))

    def item(self) -> str:
        return self.rng.choices(self.items, cum_weights=self.item_weights)[0]

    def user(self) -> tuple[str, datetime]:
        """Return a user and a moment they were active."""
        user, arrival, leave = self.rng.choices(self.users, cum_weights=self.user_weights)[0]
        return user, self.now - timedelta(seconds=self.rng.uniform(leave, arrival))

    def page(self, tenant_id: str, scenario_id: str, n: int) -> dict[str, Any]:
        user, at = self.user()
        shown: list[str] = []
        while len(shown) < PAGE_SIZE:
            item = self.item()
            if item not in shown:
                shown.append(item)
        rid = f"bench-rq-{n:07d}"
        items = [{"i": i, "s": self.rng.sample(SOURCES, self.rng.choice((1, 1, 2)))} for i in shown]
        return {"_id": f"{tenant_id}/{rid}", "tenant_id": tenant_id, "scenario_id": scenario_id, "user_id": user,
                "request_id": rid, "variant": None, "experiment_id": None, "items": items, "served_at": at}

    def event(self, tenant_id: str, scenario_id: str, n: int, pages: list[dict[str, Any]]) -> dict[str, Any]:
        rid = None
        if self.rng.random() < CITING_CLICKS:
            page = self.rng.choice(pages)
            position = min(int(self.rng.expovariate(0.4)), PAGE_SIZE - 1)  # position bias
            kind, user, item, rid = "CLICK", page["user_id"], page["items"][position]["i"], page["request_id"]
            at = min(page["served_at"] + timedelta(seconds=self.rng.uniform(5, 600)), self.now)
        else:
            kind = self.rng.choices([k for k, _ in KINDS], weights=[w for _, w in KINDS])[0]
            (user, at), item = self.user(), self.item()
        event_id = f"bench-ev-{n:08d}"
        return {"_id": f"{tenant_id}/{event_id}", "tenant_id": tenant_id, "scenario_id": scenario_id, "user_id": user,
                "item_id": item, "type": kind, "value": float(self.rng.randrange(5, 900)) if kind == "WATCH" else None,
                "ts": at, "context": None, "request_id": rid, "event_id": event_id, "received_at": self.now}


def _cumulative(weights: list[float]):
    total = 0.0
    for w in weights:
        total += w
        yield total


def insert(url: str, tenant_id: str, scenario_id: str, args: argparse.Namespace) -> dict[str, Any]:
    """Write the synthetic pages and events straight into serve's MongoDB; return counts and seconds."""
    began = time.perf_counter()
    with MongoClient(url, tz_aware=True) as client:
        db = client["recograph"]
        items = [d["item_id"] for d in db[Item.Settings.name].find({"tenant_id": tenant_id}, {"item_id": 1})]
        traffic = Traffic(items, args.users, args.days)
        pages = [traffic.page(tenant_id, scenario_id, n) for n in range(args.pages)]
        for name, docs_of, count, indexes in (
            (Impression.Settings.name, lambda lo, hi: pages[lo:hi], args.pages, Impression.Settings.indexes),
            (Interaction.Settings.name, lambda lo, hi: [traffic.event(tenant_id, scenario_id, k, pages)
                                                        for k in range(lo, hi)], args.events,
             Interaction.Settings.indexes),
        ):
            collection = db[name]
            collection.drop_indexes()
            for lo in range(0, count, INSERT_BATCH):
                collection.insert_many(docs_of(lo, min(count, lo + INSERT_BATCH)), ordered=False)
                print(f"  {name}: {min(count, lo + INSERT_BATCH):,}", end="\r", flush=True)
            collection.create_indexes(indexes)
            print()
    return {"items": len(items), "pages": args.pages, "events": args.events, "impressions": args.pages * PAGE_SIZE,
            "insert_s": round(time.perf_counter() - began, 1)}


async def build(api: Api) -> dict[str, Any]:
    """Call refreshAnalytics until nothing is pending; return the wall time, calls and hours rolled up."""
    began, calls, hours = time.perf_counter(), 0, 0
    while True:
        done = (await api.data(REFRESH))["refreshAnalytics"]
        calls += 1
        hours += done["hoursRolledUp"]
        print(f"  call {calls}: {done}", flush=True)
        if not done["busy"] and done["pendingHours"] == 0:
            return {"seconds": round(time.perf_counter() - began, 1), "calls": calls, "hours": hours,
                    "rolled_up_to": done["rolledUpTo"]}


async def incremental(api: Api, scenario_id: str, items: list[str], n: int = 1000) -> dict[str, Any]:
    """Send n events now, then time one refreshAnalytics."""
    rng = random.Random(7)
    events = [{"scenarioId": scenario_id, "userId": f"live{rng.randrange(500)}", "itemId": rng.choice(items),
               "type": "VIEW"} for _ in range(n)]
    assert (await api.data(RECORD, {"e": events}))["recordInteractions"]["accepted"] == n
    began = time.perf_counter()
    done = (await api.data(REFRESH))["refreshAnalytics"]
    return {"events": n, "seconds": round(time.perf_counter() - began, 2), "hours": done["hoursRolledUp"],
            "pending": done["pendingHours"]}


async def time_queries(api: Api, scenario_id: str, days: float, calls: int) -> dict[str, Any]:
    """Time each query `calls` times (after a warm-up) over the last `days` days."""
    end = datetime.now(UTC)
    variables = {"s": scenario_id, "f": (end - timedelta(days=days)).isoformat(), "t": end.isoformat()}
    out = {}
    for name, query in QUERIES.items():
        sample = await api.data(query, variables)
        ms = []
        for _ in range(calls):
            began = time.perf_counter()
            await api.data(query, variables)
            ms.append((time.perf_counter() - began) * 1000)
        ms.sort()
        p99 = ms[max(0, math.ceil(0.99 * len(ms)) - 1)]
        out[name] = {"median_ms": round(statistics.median(ms), 1), "p99_ms": round(p99, 1), "max_ms": round(ms[-1], 1),
                     "answer_bytes": len(json.dumps(sample)), "sample": _summary(name, sample)}
    return out


def _summary(name: str, data: dict) -> dict[str, Any]:
    if name.startswith("analytics"):
        points = data["analytics"]["points"]
        return {"points": len(points), "impressions": sum(p["impressions"] for p in points),
                "clicks": sum(p["clicks"] for p in points)}
    if name == "catalogueStats":
        c = data["catalogueStats"]
        return {k: c[k] for k in ("activeItems", "recommendedItems", "coverage", "gini", "longTailItems")}
    a = data["audienceStats"]
    return {"users": a["users"], "median": a["medianEventsPerUser"], "cohorts": len(a["retention"]),
            "positions": len(a["ctrByPosition"]), "sources": len(a["ctrBySource"])}


def markdown(result: dict[str, Any]) -> str:
    rows = ["| query (90 days) | median ms | p99 ms | max ms | answer |", "|---|---:|---:|---:|---|"]
    for name, q in result["queries"].items():
        rows.append(f"| {name} | {q['median_ms']} | {q['p99_ms']} | {q['max_ms']} | {q['sample']} |")
    b, i = result["build"], result["incremental"]
    rows.append(f"\nbuild: {b['seconds']} s, {b['hours']:,} hours in {b['calls']} calls; incremental pass after "
                f"{i['events']:,} new events: {i['seconds']} s ({i['hours']} hours)")
    return "\n".join(rows)


async def main(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="recograph-analytics-"))
    serve = ServeProcess(data_dir, free_port())
    # one process to time; no schedules; no periodic rollup: the build is timed alone
    serve.env.update(RECOGRAPH_PROCESSES="1", RECOGRAPH_JOBS_CRON="false", RECOGRAPH_REALTIME_ANALYTICS_EVERY_S="0")
    serve.start()
    try:
        async with httpx.AsyncClient(timeout=900) as client:
            await serve.wait_ready(client)
            began = time.perf_counter()
            done = subprocess.run([recograph_command(), "demo", "load"], env=serve.env, capture_output=True, text=True,
                                  timeout=3600, cwd=data_dir)
            if done.returncode != 0:
                raise RuntimeError(f"demo load failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
            demo_s = round(time.perf_counter() - began, 1)
            info = json.loads((data_dir / "demo-keys.json").read_text())
            api = Api(client, serve.url, info["keys"]["admin"])
            edges = (await api.data(SCENARIOS))["scenarios"]["edges"]
            scenario_id = next(e["node"]["id"] for e in edges if e["node"]["name"] == "movies")
            print(f"demo loaded in {demo_s} s; inserting synthetic traffic ...")
            loaded = insert(serve.runtime_info()["mongo_url"], info["tenant_id"], scenario_id, args)
            print(f"inserted in {loaded['insert_s']} s; building the rollups ...")
            result: dict[str, Any] = {"demo_load_s": demo_s, "loaded": loaded, "build": await build(api)}
            with MongoClient(serve.runtime_info()["mongo_url"]) as mongo:
                items = [d["item_id"] for d in mongo["recograph"][Item.Settings.name].find(
                    {"tenant_id": info["tenant_id"]}, {"item_id": 1}).limit(500)]
            result["incremental"] = await incremental(api, scenario_id, items)
            result["queries"] = await time_queries(api, scenario_id, args.days, args.calls)
    finally:
        serve.stop()
        if not args.keep:
            shutil.rmtree(data_dir, ignore_errors=True)
    out = Path(__file__).resolve().parent / "results" / "analytics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    print(markdown(result))
    met = all(q["p99_ms"] < TARGET_MS for q in result["queries"].values())
    print("target met" if met else f"FAILED: a p99 is over {TARGET_MS:.0f} ms")
    return 0 if met else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=400_000)
    parser.add_argument("--pages", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--days", type=float, default=90.0)
    parser.add_argument("--calls", type=int, default=20)
    parser.add_argument("--keep", action="store_true", help="Keep the temporary data dir.")
    sys.exit(asyncio.run(main(parser.parse_args())))
