"""Metrics latency: from recording an event to the `metrics` subscription snapshot that counts it.

`recograph serve` runs as its own process (embedded servers; the consumer in its child process). A subscriber with
a third-party client (`gql`, graphql-transport-ws) follows `metrics(scenarioId: probe, window: HOUR)`; probes
record one CLICK each on the probe scenario and time from sending the mutation until a snapshot's `clicks` reaches
the number sent, at random moments of the one-second push interval. Probes run once with no other traffic and once while background tasks record `--rate` events/s
on another scenario of the same tenant (same stream, same consumer).

    .venv/bin/python bench/metrics.py [--probes 100] [--rate 1000] [--batch 100]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import tempfile
import time
from pathlib import Path

import httpx
from gql import Client, gql
from gql.transport.websockets import WebsocketsTransport

sys.path.insert(0, str(Path(__file__).resolve().parent))

from freshness import ITEMS, RECORD, Api, background, load_arguments, report, set_up  # noqa: E402
from harness import free_port  # noqa: E402
from ingest import ServeProcess  # noqa: E402

SUBSCRIBE = "subscription($s: ID!) { metrics(scenarioId: $s, window: HOUR) { clicks } }"
TARGET_P99_S = 2.0


class Follower:
    """Follows the probe scenario's snapshots and wakes whoever waits for a click count."""

    def __init__(self) -> None:
        self.clicks = 0
        self.changed = asyncio.Condition()

    async def follow(self, url: str, key: str, sid: str) -> None:
        transport = WebsocketsTransport(url=url, init_payload={"Authorization": f"Bearer {key}"},
                                        subprotocols=[WebsocketsTransport.GRAPHQLWS_SUBPROTOCOL])
        async with Client(transport=transport, fetch_schema_from_transport=False) as session:
            async for result in session.subscribe(gql(SUBSCRIBE), variable_values={"s": sid}):
                async with self.changed:
                    self.clicks = result["metrics"]["clicks"]
                    self.changed.notify_all()

    async def reach(self, clicks: int, timeout_s: float = 15.0) -> None:
        async with self.changed:
            await asyncio.wait_for(self.changed.wait_for(lambda: self.clicks >= clicks), timeout_s)


async def run_probes(api: Api, sid: str, follower: Follower, n: int, tag: str) -> list[float]:
    samples, rng = [], random.Random(n)
    for k in range(n):
        expected = follower.clicks + 1
        began = time.perf_counter()
        await api(RECORD, {"e": [{"scenarioId": sid, "userId": f"{tag}{k}", "itemId": f"i{k % ITEMS}", "type": "CLICK"}]})
        await follower.reach(expected)
        samples.append(time.perf_counter() - began)
        await asyncio.sleep(rng.uniform(0.0, 1.5))  # events land anywhere in the push interval, not just after a push
    return samples


async def main(args: argparse.Namespace) -> int:
    data_dir = Path(tempfile.mkdtemp(prefix="recograph-metrics-"))
    serve = ServeProcess(data_dir, free_port())
    serve.start()
    try:
        async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=20)) as client:
            await serve.wait_ready(client)
            keys, _ = serve.create_tenant("metrics")
            key = keys["keys"]["admin"]
            api = Api(client, serve.url, key)
            probe_sid, load_sid = await set_up(api, "probes"), await set_up(api, "load")
            follower = Follower()
            following = asyncio.create_task(follower.follow(serve.url.replace("http", "ws", 1) + "/graphql", key,
                                                            probe_sid))
            await asyncio.sleep(1.0)  # the snapshot sent on subscribe
            idle = await run_probes(api, probe_sid, follower, args.probes, "idle")
            stop, sent = asyncio.Event(), [0]
            load = asyncio.gather(*(background(api, load_sid, args.rate / args.workers, args.batch, stop, sent, seed)
                                    for seed in range(args.workers)))
            await asyncio.sleep(2.0)
            began, before = time.perf_counter(), sent[0]
            loaded = await run_probes(api, probe_sid, follower, args.probes, "load")
            achieved = (sent[0] - before) / (time.perf_counter() - began)
            stop.set()
            await load
            following.cancel()
            await asyncio.gather(following, return_exceptions=True)
    finally:
        serve.stop()
    return report(idle, loaded, achieved, args.rate, TARGET_P99_S)


if __name__ == "__main__":
    parser = load_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]), probes=100)
    sys.exit(asyncio.run(main(parser.parse_args())))
