"""Experiments benchmark: A/B results end to end through the API, results at 100,000 users, and assignment cost.

Starts `recograph serve` like bench/serve.py (a temporary data dir with the embedded servers, the MovieLens demo
loaded with `recograph demo load`; no training needed, the fallback sources serve) and, on the demo scenario:

  a) end to end: simulated users (ids new to every run) are each served one `recommendations(first: 20)` page (15
     users per request as aliases, 4 requests in flight), click each item shown with their variant's probability
     (numpy, fixed seeds), and `recordInteractions` posts the clicks citing the page's requestId. Once every
     exposure and click is counted, the results must find a 10% -> 12% CTR lift with an interval covering the true
     +0.02 (sequential, the default, and fixed-horizon), find nothing in an A/A run, and flag SRM when a fifth of
     one variant's users never load their page.
  b) speed: 100,000 users exposed straight through the tenant's event stream in serve's Redis (served pages with
     the variant serving would give, plus clicks citing them); then `experiment(id) { results {...} }` over HTTP
     (calls spaced past the 1 s results cache) and `ResultsService.compute` in this process. Target: < 1 s.
  c) assignment: `ExperimentRouter.route` in this process over distinct users, with the scenario's running
     experiments already in its cache: outside any experiment, USER_HASH, and THOMPSON (new users, then the same
     users again). Target: <= 0.3 ms per call (bench/serve.py's A/A leg is the end-to-end check).

    .venv/bin/python bench/experiments.py [--users 5000] [--keep] [--skip-load DATA_DIR] [--train]

Writes bench/results/experiments.json, prints rich tables and the same as Markdown; exits 1 when a target or a
check is missed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import uvloop
from redis import asyncio as aioredis
from rich.table import Table
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness import cpu_seconds, free_port  # noqa: E402
from serve import Api, Demo, ServeProcess, console, find_demo, load_demo, train  # noqa: E402

from domain.experiments.assignment import span, variant_index  # noqa: E402
from domain.experiments.outcomes import ExperimentOutcomes  # noqa: E402
from domain.experiments.results import ResultsService, results_of  # noqa: E402
from domain.experiments.routing import ExperimentRouter  # noqa: E402
from domain.realtime.stream import EventStream, StreamEvent, StreamImpression  # noqa: E402
from models.documents import Experiment  # noqa: E402
from models.mongo import connect_mongo  # noqa: E402
from models.settings import MongoSettings  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "experiments.json"
RESULTS_TARGET_MS = 1000.0
ASSIGN_TARGET_US = 300.0
PAGE = 20
TRUE_LIFT = 0.02

CREATE = "mutation($i: CreateExperimentInput!) { createExperiment(input: $i) { id status } }"
MOVE = "mutation($id: ID!) {{ {verb}Experiment(id: $id) {{ id status }} }}"
LISTED = "query($s: ID!) { experiments(scenarioId: $s, first: 100) { edges { node { id name status } } } }"
ID_ONLY = "query($id: ID!) { experiment(id: $id) { id } }"
RECORD = "mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted } }"
ITEM_IDS = "query($s: ID!) { items(scenarioId: $s, first: 200) { edges { node { id } } } }"
COUNTS = """query($id: ID!) { experiment(id: $id) { results { exposures { variant users }
  statistics { variant n sums { component value } } } } }"""
RESULTS_QUERY = """query($id: ID!) { experiment(id: $id) { results { computedAt frozen
  exposures { variant users } srm { pValue mismatch }
  metrics { metric variant role users value controlValue difference differenceLower differenceUpper
            relativeDifference relativeLower relativeUpper pValue adjustedPValue significant method cuped
            varianceReduction }
  guardrails { metric variant margin pValue passed method }
  arms { variant mean lower upper probabilityBest weight }
  preference { controlWins treatmentWins ties share lower upper pValue method }
  statistics { variant n sums { component value } products { a b value } } } } }"""


class Gql:
    """GraphQL over HTTP from asyncio, one key."""

    def __init__(self, client: httpx.AsyncClient, url: str, key: str) -> None:
        self.client, self.url, self.headers = client, f"{url}/graphql", {"Authorization": f"Bearer {key}"}

    async def __call__(self, query: str, variables: dict[str, Any] | None = None) -> dict[str, Any]:
        """Post a query; return `data`, raising on any error."""
        response = await self.client.post(self.url, json={"query": query, "variables": variables or {}},
                                          headers=self.headers)
        body = response.json()
        if response.status_code != 200 or body.get("errors"):
            raise RuntimeError(f"GraphQL failed ({response.status_code}): {str(body)[:2000]}")
        return body["data"]

    async def move(self, verb: str, experiment_id: str) -> str:
        """Run start/pause/stop/delete on an experiment; return its status."""
        return (await self(MOVE.format(verb=verb), {"id": experiment_id}))[f"{verb}Experiment"]["status"]


def aliases(field: str, users: Sequence[str], selection: str = "") -> str:
    """Return one operation asking `field` (with $s, $x variables in scope) once per user, as u0, u1, ..."""
    return " ".join(f'u{i}: {field.replace("USER", json.dumps(u))} {selection}' for i, u in enumerate(users))


# ---------------------------------------------------------------- a) end to end through the API


async def assignments(gql: Gql, experiment_id: str, users: Sequence[str]) -> list[str | None]:
    """Return the variant each user has (experimentAssignment only reads), 30 aliases per request."""
    out: list[str | None] = []
    for s in range(0, len(users), 30):
        part = users[s:s + 30]
        fields = aliases("experimentAssignment(experimentId: $x, userId: USER)", part)
        data = await gql(f"query($x: ID!) {{ {fields} }}", {"x": experiment_id})
        out += [data[f"u{i}"] for i in range(len(part))]
    return out


async def serve_batch(gql: Gql, demo: Demo, experiment_id: str, users: list[str], click: dict[str, float],
                      rng: np.random.Generator, skip: dict[str, float] | None) -> tuple[dict[str, int], int]:
    """Serve one page to each user (those a skip drops never load it) and post their clicks; return users per
    variant and clicks sent."""
    if skip:
        given = await assignments(gql, experiment_id, users)
        users = [u for u, v in zip(users, given, strict=True) if rng.random() >= skip.get(v, 0.0)]
        if not users:
            return {}, 0
    field = f"recommendations(scenarioId: $s, userId: USER, first: {PAGE})"
    query = f"query($s: ID!) {{ {aliases(field, users, '{ requestId variant items { item { id } } }')} }}"
    # The first alias also names its experiment (one MongoDB read per request, not per user).
    query = query.replace("{ requestId", "{ experiment { id } requestId", 1)
    data = await gql(query, {"s": demo.scenario_id})
    if (data["u0"]["experiment"] or {}).get("id") != experiment_id:
        raise RuntimeError(f"a page was not served under {experiment_id}: {data['u0']}")
    served: dict[str, int] = {}
    events = []
    for i, user in enumerate(users):
        page = data[f"u{i}"]
        served[page["variant"]] = served.get(page["variant"], 0) + 1
        hits = rng.random(len(page["items"])) < click[page["variant"]]
        events += [{"scenarioId": demo.scenario_id, "userId": user, "itemId": r["item"]["id"], "type": "CLICK",
                    "requestId": page["requestId"]} for r, hit in zip(page["items"], hits, strict=True) if hit]
    if events:
        accepted = (await gql(RECORD, {"e": events}))["recordInteractions"]["accepted"]
        if accepted != len(events):
            raise RuntimeError(f"recordInteractions accepted {accepted} of {len(events)}")
    return served, len(events)


async def simulate(gql: Gql, demo: Demo, experiment_id: str, users: list[str], click: dict[str, float], *,
                   seed: int, args: argparse.Namespace, skip: dict[str, float] | None = None) -> dict[str, Any]:
    """Serve and click for every user, `args.inflight` requests at a time; each batch has its own seeded rng, so
    the clicks do not depend on the order the batches finish in."""
    batches = iter(enumerate(range(0, len(users), args.batch)))
    served: dict[str, int] = {}
    clicks = 0

    async def worker() -> None:
        nonlocal clicks
        for b, start in batches:
            got, n = await serve_batch(gql, demo, experiment_id, users[start:start + args.batch], click,
                                       np.random.default_rng([seed, b]), skip)
            clicks += n
            for variant, k in got.items():
                served[variant] = served.get(variant, 0) + k

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(args.inflight)))
    return {"served": served, "clicks": clicks, "seconds": round(time.perf_counter() - began, 1)}


async def counted(gql: Gql, experiment_id: str, users: int, clicks: int, timeout_s: float) -> dict[str, Any]:
    """Wait until the results count `users` exposures and `clicks` clicks, or timeout_s; return what they count.

    A page whose impression serve could not write (Redis unreachable: the answer still goes out) never counts, so
    a shortfall is reported rather than waited for."""
    began = time.perf_counter()
    while True:
        results = (await gql(COUNTS, {"id": experiment_id}))["experiment"]["results"]
        exposed = sum(e["users"] for e in results["exposures"])
        seen = round(sum(s["value"] for v in results["statistics"] for s in v["sums"] if s["component"] == "clicks"))
        waited = round(time.perf_counter() - began, 1)
        if (exposed, seen) == (users, clicks) or waited > timeout_s:
            if (exposed, seen) != (users, clicks):
                console.print(f"    [yellow]after {waited:.0f} s the results count {exposed:,} of {users:,} users "
                              f"and {seen:,} of {clicks:,} clicks[/yellow]")
            return {"counted_after_s": waited, "counted_users": exposed, "counted_clicks": seen}
        await asyncio.sleep(0.5)


async def create(gql: Gql, demo: Demo, tag: str, name: str, **design: Any) -> str:
    """Create a two-variant experiment (control, treatment) of the demo scenario and start it; return its id."""
    spec = {"scenarioId": demo.scenario_id, "name": f"bench-{name}-{tag}", "primaryMetric": "CTR",
            "variants": [{"name": "control"}, {"name": "treatment"}], **design}
    experiment_id = (await gql(CREATE, {"i": spec}))["createExperiment"]["id"]
    if await gql.move("start", experiment_id) != "RUNNING":
        raise RuntimeError(f"experiment {name} did not start")
    return experiment_id


async def api_run(gql: Gql, demo: Demo, tag: str, name: str, users: int, click: dict[str, float], *, seed: int,
                  args: argparse.Namespace, created: list[str], skip: dict[str, float] | None = None,
                  **design: Any) -> dict[str, Any]:
    """Run one experiment through the API; return its row (figures, checks) and the whole results."""
    experiment_id = await create(gql, demo, tag, name, **design)
    created.append(experiment_id)
    ids = [f"{tag}-{name}-{u}" for u in range(users)]
    sim = await simulate(gql, demo, experiment_id, ids, click, seed=seed, args=args, skip=skip)
    sim |= await counted(gql, experiment_id, sum(sim["served"].values()), sim["clicks"], 60)
    results = (await gql(RESULTS_QUERY, {"id": experiment_id}))["experiment"]["results"]
    await gql.move("stop", experiment_id)
    (ctr,) = [m for m in results["metrics"] if m["metric"] == "CTR" and m["variant"] == "treatment"]
    exposures = {e["variant"]: e["users"] for e in results["exposures"]}
    checks = {"exposures = users served": exposures == sim["served"],
              "clicks counted": sim["counted_clicks"] == sim["clicks"]}
    if click["treatment"] > click["control"]:
        checks["significant"] = ctr["significant"] is True
        checks["interval covers +0.02"] = (ctr["differenceLower"] or 0) < TRUE_LIFT < (ctr["differenceUpper"] or 0)
    else:
        checks["not significant"] = ctr["significant"] is False
    checks["SRM flagged" if skip else "no SRM"] = bool(results["srm"]["mismatch"]) == bool(skip)
    return {"kind": "api", "experiment": name, "experiment_id": experiment_id, "users": users,
            "click": click, "skip": skip, "design": design, **sim, "exposures": exposures, "srm": results["srm"],
            "ctr": ctr, "checks": checks, "pass": all(checks.values()), "results": results}


async def end_to_end(gql: Gql, demo: Demo, tag: str, args: argparse.Namespace, created: list[str]) -> list[dict]:
    """Run the lift (sequential and fixed horizon), A/A and SRM experiments one after the other (one layer)."""
    lift, flat = {"control": 0.10, "treatment": 0.12}, {"control": 0.10, "treatment": 0.10}
    runs = [("lift-sequential", args.users, lift, {}, {}), ("lift-fixed", args.users, lift, {}, {"sequential": False}),
            ("aa", args.aa_users, flat, {}, {}), ("srm", args.aa_users, flat, {"treatment": 0.2}, {})]
    rows = []
    for seed, (name, users, click, skip, design) in enumerate(runs, start=args.seed):
        console.print(f"  {name}: {users:,} users, click {click}{f', skip {skip}' if skip else ''} ...")
        row = await api_run(gql, demo, tag, name, users, click, seed=seed, args=args, created=created,
                            skip=skip or None, **design)
        c = row["ctr"]
        console.print(f"    served {row['served']} in {row['seconds']} s, clicks {row['clicks']:,}, counted after "
                      f"{row['counted_after_s']} s: diff {c['difference']:+.4f} [{c['differenceLower']:+.4f}, "
                      f"{c['differenceUpper']:+.4f}] p {_g(c['pValue'])} ({c['method']}), SRM p "
                      f"{_g(row['srm']['pValue'])}; {_yes(row['pass'])} {row['checks']}")
        rows.append(row)
    return rows


# ---------------------------------------------------------------- b) results at 100,000 exposed users


async def expose(stream: EventStream, doc: Experiment, item_ids: list[str], users: int, args: argparse.Namespace,
                 tag: str) -> dict[str, Any]:
    """Append a served page for each of `users` new users (the variant serving would give) and clicks citing the
    pages to the tenant's stream, in pipelined batches; return what was sent."""
    rng = np.random.default_rng(args.seed + 100)
    click = {"control": 0.10, "treatment": 0.12}
    weights = [float(v.get("weight", 1.0)) for v in doc.variants]
    traffic = span(doc.traffic_offset, doc.traffic_percent)
    served, clicks, began = {v["name"]: 0 for v in doc.variants}, 0, time.perf_counter()
    for start in range(0, users, args.append_batch):
        pages, events, now = [], [], int(time.time() * 1000)
        for u in range(start, min(users, start + args.append_batch)):
            user = f"{tag}-speed-{u}"
            variant = doc.variants[variant_index(doc.salt, doc.layer, user, traffic=traffic, weights=weights)]["name"]
            served[variant] += 1
            shown = [item_ids[i] for i in rng.choice(len(item_ids), args.speed_items, replace=False)]
            request_id = uuid.uuid4().hex
            pages.append(StreamImpression(request_id, doc.scenario_id, user, variant, now,
                                          tuple((i, ("trending",)) for i in shown), experiment=doc.id,
                                          latency_ms=float(rng.lognormal(2.0, 0.4))))
            for item in (i for i in shown if rng.random() < click[variant]):
                clicks += 1
                events.append(StreamEvent(f"{request_id}-{item}", doc.scenario_id, user, item, "CLICK", None, now,
                                          now, request_id))
        await stream.append(pages + events, tenant_id=doc.tenant_id)  # pages first: the clicks cite them
    return {"served": served, "clicks": clicks, "append_s": round(time.perf_counter() - began, 1)}


async def checked_assignment(gql: Gql, doc: Experiment, tag: str) -> bool:
    """Return whether variant_index gives 60 users the variant `experimentAssignment` answers."""
    users = [f"{tag}-speed-{u}" for u in range(60)]
    weights = [float(v.get("weight", 1.0)) for v in doc.variants]
    ours = [doc.variants[variant_index(doc.salt, doc.layer, u, traffic=span(doc.traffic_offset, doc.traffic_percent),
                                       weights=weights)]["name"] for u in users]
    return ours == await assignments(gql, doc.id, users)


def quiet(pids: dict[str, int], percent: float = 30.0, timeout_s: float = 60.0) -> float:
    """Wait until serve's processes and servers together use under `percent` CPU; return the seconds waited."""
    began = time.perf_counter()
    while time.perf_counter() - began < timeout_s:
        before = sum(cpu_seconds(pids).values())
        time.sleep(1.0)
        if 100 * (sum(cpu_seconds(pids).values()) - before) < percent:
            break
    return round(time.perf_counter() - began, 1)


def spread(values_ms: list[float]) -> dict[str, float]:
    """Return the median, p99 and max of timings."""
    ordered = sorted(values_ms)
    p99 = ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]
    return {"n": len(ordered), "median": round(statistics.median(ordered), 3), "p99": round(p99, 3),
            "max": round(ordered[-1], 3)}


async def timed(call, n: int) -> list[float]:  # noqa: ANN001 - any awaitable factory
    """Return the milliseconds each of n awaited calls took."""
    out = []
    for _ in range(n):
        began = time.perf_counter()
        await call()
        out.append((time.perf_counter() - began) * 1000)
    return out


async def speed(gql: Gql, demo: Demo, tag: str, args: argparse.Namespace, redis: aioredis.Redis,
                serve: ServeProcess, created: list[str]) -> tuple[list[dict], Experiment]:
    """Expose args.speed_users users, then time the results over HTTP and in this process."""
    experiment_id = await create(gql, demo, tag, "speed", secondaryMetrics=[
        "USER_CONVERSION", "WATCH_SECONDS", "INTERACTIONS_PER_USER", "LATENCY_MS", "EMPTY_RATE"],
        guardrails=[{"metric": "LATENCY_MS", "margin": 0.1}])
    created.append(experiment_id)
    doc = await Experiment.get(experiment_id)
    same = await checked_assignment(gql, doc, tag)
    edges = (await gql(ITEM_IDS, {"s": demo.scenario_id}))["items"]["edges"]
    sent = await expose(EventStream(redis), doc, [e["node"]["id"] for e in edges], args.speed_users, args, tag)
    console.print(f"  appended {args.speed_users:,} pages and {sent['clicks']:,} clicks in {sent['append_s']} s ...")
    sent |= await counted(gql, experiment_id, args.speed_users, sent["clicks"], 900)
    sent["quiet_after_s"] = quiet(serve.pids())
    console.print(f"  counted after {sent['counted_after_s']} s; quiet after {sent['quiet_after_s']} s")
    rows, exposed = await over_http(gql, experiment_id, serve.pids(), args.http_calls)
    rows[1] |= {"exposed": sorted(exposed), **sent, "variant_index_matches_api": same}
    console.print(f"  results over HTTP: median {rows[1]['median']:.1f} ms (control {rows[0]['median']:.1f} ms); "
                  f"CPU ms per call {rows[1]['cpu_ms_per_call']}")
    service, outcomes = ResultsService(ExperimentOutcomes(redis)), ExperimentOutcomes(redis)
    moments = await outcomes.moments(doc)
    parts = {"ResultsService.compute (Redis read + statistics)": lambda: service.compute(doc),
             "  ExperimentOutcomes.moments (one HGETALL)": lambda: outcomes.moments(doc)}
    for name, call in parts.items():
        rows.append({"kind": "speed", "path": name, **spread(await timed(call, args.inprocess_calls))})
    stats_ms = spread(await timed(_sync(lambda: results_of(doc, moments)), args.inprocess_calls))
    rows.append({"kind": "speed", "path": "  results_of (statistics only)", **stats_ms})
    for row in rows:
        row["target"], row["pass"] = f"max < {RESULTS_TARGET_MS:g} ms", row["max"] < RESULTS_TARGET_MS
    complete = exposed == {args.speed_users} and sent["counted_clicks"] == sent["clicks"]
    rows[1]["pass"] = rows[1]["pass"] and complete and same
    return rows, doc


async def over_http(gql: Gql, experiment_id: str, pids: dict[str, int], n: int) -> tuple[list[dict], set[int]]:
    """Time `experiment(id) { id }`, then the whole results, n times 1.2 s apart (past the 1 s results cache);
    return both rows (the results row with the CPU each of serve's processes spent per call) and the exposures
    the answers counted."""
    control, full, cpu, exposed = [], [], [], set()
    for _ in range(n):
        await asyncio.sleep(1.2)
        began = time.perf_counter()
        await gql(ID_ONLY, {"id": experiment_id})
        control.append((time.perf_counter() - began) * 1000)
        before, began = cpu_seconds(pids), time.perf_counter()
        results = (await gql(RESULTS_QUERY, {"id": experiment_id}))["experiment"]["results"]
        full.append((time.perf_counter() - began) * 1000)
        after = cpu_seconds(pids)
        cpu.append({k: after[k] - before[k] for k in after if k in before})
        exposed.add(sum(e["users"] for e in results["exposures"]))
    cpu_ms = {k: round(1000 * statistics.fmean(c.get(k, 0.0) for c in cpu), 1) for k in pids}
    return [{"kind": "speed", "path": "experiment(id) { id } over HTTP (no results: the control)", **spread(control)},
            {"kind": "speed", "path": "experiment(id) { results {...every field} } over HTTP", **spread(full),
             "spaced_s": 1.2, "cpu_ms_per_call": cpu_ms, "each_ms": [round(v, 1) for v in full]}], exposed


def _sync(fn):  # noqa: ANN001, ANN202 - adapts a plain call to `timed`
    async def call() -> None:
        fn()
    return call


# ---------------------------------------------------------------- c) assignment cost


async def route_cost(router: ExperimentRouter, tenant_id: str, scenario_id: str, users: list[str]) -> dict[str, Any]:
    """Time route() for each user once (the scenario's running experiments already cached); return microseconds."""
    await router.route(tenant_id=tenant_id, scenario_id=scenario_id, user_id="warm-up")
    each, arms = [], {}
    began = time.perf_counter()
    for user in users:
        t = time.perf_counter_ns()
        arm = await router.route(tenant_id=tenant_id, scenario_id=scenario_id, user_id=user)
        each.append((time.perf_counter_ns() - t) / 1000)
        name = arm.variant if arm else None
        arms[name] = arms.get(name, 0) + 1
    mean = (time.perf_counter() - began) * 1e6 / len(users)
    row = {"kind": "assign", "calls": len(users), "mean_us": round(mean, 2), **{f"{k}_us": v for k, v in
                                                                                spread(each).items() if k != "n"}}
    return row | {"arms": arms, "target": f"mean <= {ASSIGN_TARGET_US:g} us", "pass": mean <= ASSIGN_TARGET_US}


async def assignment_cost(gql: Gql, demo: Demo, tag: str, args: argparse.Namespace, redis: aioredis.Redis,
                          running: Experiment, created: list[str]) -> list[dict[str, Any]]:
    """Time routing outside any experiment, in the running USER_HASH one, then in a THOMPSON one."""
    t, s = demo.tenant_id, demo.scenario_id
    # A long TTL: the once-a-second background re-read of serving is off the request path.
    router = ExperimentRouter(ExperimentOutcomes(redis), ttl_s=3600)
    users = [f"{tag}-assign-{u}" for u in range(args.assign_users)]
    rows = [{"allocation": "none (no running experiment)", **await route_cost(router, t, f"{s}-none", users)},
            {"allocation": "USER_HASH", **await route_cost(router, t, s, users)}]
    rows[1]["pass"] = rows[1]["pass"] and None not in rows[1]["arms"]
    await gql.move("stop", running.id)
    experiment_id = await create(gql, demo, tag, "thompson", allocation="THOMPSON")
    created.append(experiment_id)
    bandit = ExperimentRouter(ExperimentOutcomes(redis), ttl_s=3600)
    few = users[:args.thompson_users]
    rows.append({"allocation": "THOMPSON, new users (arm given)", **await route_cost(bandit, t, s, few)})
    rows.append({"allocation": "THOMPSON, the same users again (arm kept)", **await route_cost(bandit, t, s, few)})
    await gql.move("stop", experiment_id)
    return rows


# ---------------------------------------------------------------- the run


async def run_all(args: argparse.Namespace, serve: ServeProcess, demo: Demo) -> dict[str, Any]:
    """Run the three parts against a started server with the demo loaded; return the results."""
    runtime = json.loads((serve.data_dir / "runtime.json").read_text())
    mongo, _ = await connect_mongo(runtime["mongo_url"], MongoSettings().database)
    redis = aioredis.from_url(runtime["redis_url"])
    tag = f"b{int(time.time()) % 10**8}"  # new user ids every run: no history, no covariates
    created: list[str] = []
    async with httpx.AsyncClient(timeout=120) as client:
        gql = Gql(client, serve.url, demo.keys["admin"])
        try:
            await stop_leftovers(gql, demo)
            console.print("a) end to end through the API ...")
            api_rows = await end_to_end(gql, demo, tag, args, created)
            console.print(f"b) results at {args.speed_users:,} exposed users ...")
            speed_rows, running = await speed(gql, demo, tag, args, redis, serve, created)
            console.print(f"c) assignment cost over {args.assign_users:,} users ...")
            assign_rows = await assignment_cost(gql, demo, tag, args, redis, running, created)
        finally:
            for experiment_id in created:
                for verb in ("stop", "delete"):
                    with contextlib.suppress(RuntimeError):  # stopped already
                        await gql.move(verb, experiment_id)
            await redis.aclose()
            await mongo.close()
    return {"when": datetime.now(UTC).isoformat(), "tenant_id": demo.tenant_id, "scenario_id": demo.scenario_id,
            "demo_load_s": demo.load_s, "training": demo.train, "user_tag": tag,
            "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "api": api_rows, "speed": speed_rows, "assignment": assign_rows}


async def stop_leftovers(gql: Gql, demo: Demo) -> None:
    """Stop experiments an interrupted run left live on the scenario (they would hold its layer)."""
    for edge in (await gql(LISTED, {"s": demo.scenario_id}))["experiments"]["edges"]:
        node = edge["node"]
        if node["name"].startswith("bench-") and node["status"] in ("RUNNING", "PAUSED"):
            console.print(f"  stopping {node['name']} ({node['status']}), left by an earlier run")
            await gql.move("stop", node["id"])


def prepare(args: argparse.Namespace, serve: ServeProcess) -> Demo:
    """Wait for serve, load the demo unless reused, and train when asked."""
    with httpx.Client(timeout=120) as client:
        serve.wait_ready(client)
        api = Api(client, serve.url)
        load_s = None
        if args.skip_load is None:
            console.print("loading the demo (`recograph demo load`) ...")
            load_s = load_demo(serve)
        demo = find_demo(api, serve.data_dir)
        demo.load_s = load_s
        if args.train:
            console.print("training the demo scenario (trainScenario) ...")
            demo.train = train(api, demo)
    return demo


# ---------------------------------------------------------------- report


def _yes(ok: bool | None) -> str:
    return "" if ok is None else ("pass" if ok else "FAIL")


def _g(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2g}"


def _ci(value: float | None, lower: float | None, upper: float | None, fmt: str) -> str:
    if value is None:
        return "n/a"
    return f"{value:{fmt}} [{lower:{fmt}}, {upper:{fmt}}]" if lower is not None else f"{value:{fmt}}"


def tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    """Return the report as (title, header, rows) tables, shared by the rich and Markdown output."""
    api = [[r["experiment"], f"{r['users']:,}", " / ".join(f"{v:,}" for v in r["exposures"].values()),
            f"{r['ctr']['controlValue']:.4f}", f"{r['ctr']['value']:.4f}",
            _ci(r["ctr"]["difference"], r["ctr"]["differenceLower"], r["ctr"]["differenceUpper"], "+.4f"),
            _ci(r["ctr"]["relativeDifference"], r["ctr"]["relativeLower"], r["ctr"]["relativeUpper"], "+.1%"),
            _g(r["ctr"]["pValue"]), str(r["ctr"]["significant"]).lower(), r["ctr"]["method"], _g(r["srm"]["pValue"]),
            str(r["srm"]["mismatch"]).lower(), f"{r['seconds']:.0f}",
            "all" if r["pass"] else "failed: " + ", ".join(k for k, ok in r["checks"].items() if not ok),
            _yes(r["pass"])] for r in results["api"]]
    speed = [[r["path"], str(r["n"]), f"{r['median']:.2f}", f"{r['p99']:.2f}", f"{r['max']:.2f}", r["target"],
              _yes(r["pass"])] for r in results["speed"]]
    assign = [[r["allocation"], f"{r['calls']:,}", f"{r['mean_us']:.1f}", f"{r['median_us']:.1f}",
               f"{r['p99_us']:.1f}", r["target"], _yes(r["pass"])] for r in results["assignment"]]
    return [
        ("End to end through the API (CTR of treatment against control)",
         ["experiment", "users", "exposures (control / treatment)", "CTR control", "CTR treatment",
          "difference [interval]", "relative [interval]", "p-value", "significant", "method", "SRM p", "SRM",
          "seconds", "checks", ""], api),
        (f"Results at {results['settings']['speed_users']:,} exposed users (ms)",
         ["path", "calls", "median", "p99", "max", "target", ""], speed),
        ("Assignment: ExperimentRouter.route per call (us), running experiments cached",
         ["allocation", "calls", "mean", "median", "p99", "target", ""], assign),
    ]


def print_tables(results: dict[str, Any]) -> None:
    """Print the report as rich tables."""
    for title, header, rows in tables(results):
        table = Table(title=title)
        for column in header:
            table.add_column(column, justify="left" if column in ("experiment", "path", "allocation", "method",
                                                                  "target", "checks", "") else "right")
        for row in rows:
            table.add_row(*row)
        console.print(table)


def markdown(results: dict[str, Any]) -> str:
    """Return the report as Markdown tables."""
    lines: list[str] = []
    for title, header, rows in tables(results):
        lines += [f"{title}:", "", "| " + " | ".join(header) + " |",
                  "|" + "|".join("---" if h in ("experiment", "path", "allocation", "method", "target", "checks", "")
                                 else "---:" for h in header) + "|"]
        lines += ["| " + " | ".join(row) + " |" for row in rows] + [""]
    return "\n".join(lines)


def passed(results: dict[str, Any]) -> bool:
    """Return whether every check and target held."""
    return all(r["pass"] for part in ("api", "speed", "assignment") for r in results[part])


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Read the command line."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add = parser.add_argument
    add("--users", type=int, default=5000, help="users of each lift experiment (default 5,000)")
    add("--aa-users", type=int, default=4000, help="users of the A/A and SRM experiments (default 4,000)")
    add("--batch", type=int, default=15, help="users per recommendations request, as aliases (default 15)")
    add("--inflight", type=int, default=4, help="requests in flight in the API runs (default 4)")
    add("--seed", type=int, default=11, help="first seed of the simulated clicks (default 11)")
    add("--speed-users", type=int, default=100_000, help="users exposed through the stream (default 100,000)")
    add("--speed-items", type=int, default=10, help="items per page exposed through the stream (default 10)")
    add("--append-batch", type=int, default=2000, help="pages per stream append (default 2,000)")
    add("--http-calls", type=int, default=12, help="results calls over HTTP, 1.2 s apart (default 12)")
    add("--inprocess-calls", type=int, default=50, help="results computations in this process (default 50)")
    add("--assign-users", type=int, default=100_000, help="users routed per allocation (default 100,000)")
    add("--thompson-users", type=int, default=20_000, help="users routed under THOMPSON (default 20,000)")
    add("--train", action="store_true", help="train the demo scenario first (not needed: fallback sources serve)")
    add("--skip-load", type=Path, metavar="DATA_DIR", help="reuse a data dir holding the loaded demo (see --keep)")
    add("--output", type=Path, default=RESULTS, help="where to write the JSON results")
    add("--keep", action="store_true", help="keep the temporary data dir (reuse it with --skip-load)")
    return parser.parse_args(argv)


def data_dir_of(args: argparse.Namespace) -> Path | None:
    """Return the data dir to serve (a new temporary one unless --skip-load), or None when it cannot be used."""
    if args.skip_load is None:
        return Path(tempfile.mkdtemp(prefix="recograph-bench-experiments-"))
    data_dir = args.skip_load.resolve()
    if not (data_dir / "demo-keys.json").exists():
        console.print(f"[red]{data_dir} holds no demo-keys.json: not a loaded demo data dir[/red]")
        return None
    if (data_dir / "runtime.json").exists():
        console.print(f"[red]{data_dir}/runtime.json exists: is a server still running on it?[/red]")
        return None
    return data_dir


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; exit 1 when a target or check is missed, 2 when the data dir cannot be used."""
    args = parse_args(argv)
    data_dir = data_dir_of(args)
    if data_dir is None:
        return 2
    serve = ServeProcess(data_dir, free_port())
    began = time.perf_counter()
    try:
        serve.start()
        demo = prepare(args, serve)
        # Like serve: uvloop, and one BLAS thread (graph/app.py), so in-process timings are what serve would see.
        threadpool_limits(limits=1)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            results = runner.run(run_all(args, serve, demo))
    except BaseException:
        console.print(f"[red]bench failed; server log tail:[/red]\n{serve.tail()}", markup=True, highlight=False)
        raise
    finally:
        serve.stop()
        if args.skip_load is not None or args.keep:
            console.print(f"kept {data_dir}" + ("" if args.skip_load else f" (reuse: --skip-load {data_dir})"))
        else:
            shutil.rmtree(data_dir, ignore_errors=True)
    results["wall_s"] = round(time.perf_counter() - began, 1)
    results["markdown"] = markdown(results)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=2, default=str))
    print_tables(results)
    console.print(f"\nwrote {args.output} ({results['wall_s']:.0f} s in all)\n")
    print(results["markdown"])
    return 0 if passed(results) else 1


if __name__ == "__main__":
    sys.exit(main())
