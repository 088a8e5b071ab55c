"""Consumer throughput: drain a backlog of N events from a tenant stream, profiles and popularity included.

Baseline, same servers, same run: the same backlog read and acknowledged through the same consumer group with no
apply (XREADGROUP + XACK only), i.e. what the stream itself costs. Prints a Markdown table and checks the result:
every event applied once (the profiles' counters sum to N, popularity sums match the weights).

    .venv/bin/python bench/consumer.py [--events 100000] [--users 5000] [--items 2000] [--batch 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from domain.catalogue import ItemData  # noqa: E402
from domain.realtime.keys import GROUP, STREAMS, stream_key  # noqa: E402
from domain.realtime.stream import EventStream, StreamEvent  # noqa: E402
from domain.services import Services  # noqa: E402
from models.cache import RedisCache  # noqa: E402
from models.embedded import EmbeddedServers  # noqa: E402
from models.mongo import connect_mongo  # noqa: E402

TYPES = ["VIEW"] * 6 + ["CLICK"] * 2 + ["LIKE", "WATCH", "PURCHASE", "SHARE"]


def backlog(n: int, users: int, items: int, scenario: str) -> list[StreamEvent]:
    """Return n random events over the last two hours (received now)."""
    rng = random.Random(7)
    now_ms = int(time.time() * 1000)
    out = []
    for k in range(n):
        kind = rng.choice(TYPES)
        out.append(StreamEvent(f"b{k}", scenario, f"u{rng.randrange(users)}", f"i{rng.randrange(items)}", kind,
                               float(rng.randrange(1, 300)) if kind == "WATCH" else None,
                               now_ms - rng.randrange(7_200_000), now_ms))
    return out


async def fill(stream: EventStream, tenant: str, events: list[StreamEvent]) -> None:
    for start in range(0, len(events), 5000):
        await stream.append(events[start : start + 5000], tenant_id=tenant)


async def drain_baseline(redis, tenant: str, n: int) -> float:
    """Read and acknowledge the tenant's backlog without applying it; return seconds."""
    key = stream_key(tenant)
    began, done = time.perf_counter(), 0
    while done < n:
        reply = await redis.xreadgroup(GROUP, "baseline", {key: ">"}, count=1000, block=50)
        for _, messages in reply or []:
            await redis.xack(key, GROUP, *[mid for mid, _ in messages])
            done += len(messages)
    return time.perf_counter() - began


async def redis_cpu(redis) -> float:
    """Return the CPU seconds redis-server has used."""
    info = await redis.info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


async def drain_consumer(services: Services, tenant: str, batch: int) -> tuple[float, float, float, float]:
    """Run a consumer until the backlog is applied; return (seconds to drain, CPU seconds of this process and of
    redis-server while draining, seconds of the MongoDB flush after)."""
    consumer = services.realtime.consumer(name="bench", flush_every_s=3600, batch=batch)  # flush timed separately
    redis = services.realtime._r
    cpu, server_cpu = time.process_time(), await redis_cpu(redis)
    began = time.perf_counter()
    task = asyncio.create_task(consumer.run())
    n = await redis_len(services, tenant)
    while consumer.stats.read < n:
        await asyncio.sleep(0.01)
    while await services.realtime.lag(tenant_id=tenant) != (0, 0):
        await asyncio.sleep(0.01)
    drained = time.perf_counter() - began
    cpu, server_cpu = time.process_time() - cpu, await redis_cpu(redis) - server_cpu
    flush_began = time.perf_counter()
    await consumer.flush()
    flushed = time.perf_counter() - flush_began
    consumer.stop()
    await task
    return drained, cpu, server_cpu, flushed


async def used_memory(redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def keys_memory(redis, pattern: str) -> int:
    """Return the bytes MEMORY USAGE gives for the keys matching pattern."""
    return sum([int(await redis.memory_usage(key, samples=0) or 0) async for key in redis.scan_iter(match=pattern,
                                                                                                    count=1000)])


async def redis_len(services: Services, tenant: str) -> int:
    return await services.realtime._r.xlen(stream_key(tenant))


async def check(redis, tenant: str, events: list[StreamEvent], users: int) -> list[str]:
    """Return what is wrong with the applied state."""
    problems = []
    total = 0
    async with redis.pipeline(transaction=False) as pipe:
        for u in range(users):
            pipe.hget(f"t:{{{tenant}}}:pf:u{u}", "n")
        total = sum(int(v or 0) for v in await pipe.execute())
    if total != len(events):
        problems.append(f"profiles count {total} events, sent {len(events)}")
    return problems


async def main(args: argparse.Namespace) -> int:
    servers = await EmbeddedServers(data_dir=None).start()
    mongo, _ = await connect_mongo(servers.mongo_url, "bench_consumer")
    cache = RedisCache.from_url(servers.redis_url)
    services = Services.build(cache=cache, vectors=None)
    try:
        tenant, _ = await services.tenancy.create_tenant("bench")
        scenario = await services.scenarios.create(name="feed", template="CUSTOM", config=None, tenant_id=tenant.id)
        rng = random.Random(3)
        items = [ItemData(f"i{k}", categories=(f"c{k % 20}",), tags=(f"t{rng.randrange(50)}", f"t{rng.randrange(50)}"),
                          attributes={"durationSeconds": 300}) for k in range(args.items)]
        for start in range(0, len(items), 1000):
            await services.catalogue.upsert(items[start : start + 1000], tenant_id=tenant.id, scenario_id=scenario.id)
        events = backlog(args.events, args.users, args.items, scenario.id)
        stream = EventStream(cache.client)
        redis = cache.client

        # Baseline: the stream alone (a second tenant, the same backlog).
        base_tenant = tenant.id + "-base"
        await redis.xgroup_create(stream_key(base_tenant), GROUP, id="0", mkstream=True)
        await fill(stream, base_tenant, events)
        await redis.srem(STREAMS, base_tenant)  # not the consumer's to read
        baseline_s = await drain_baseline(redis, base_tenant, len(events))

        await redis.delete(stream_key(base_tenant))
        before = await used_memory(redis)
        await fill(stream, tenant.id, events)
        drained_s, cpu_s, server_cpu_s, flush_s = await drain_consumer(services, tenant.id, args.batch)
        problems = await check(redis, tenant.id, events, args.users)
        # What stays once the stream is trimmed (it is, every 5 s, after the MongoDB flush): per-user state, the
        # scenario's popularity buckets and live counters, applied-event markers (3 days) and attribution keys.
        await redis.xtrim(stream_key(tenant.id), maxlen=0)
        kept = await used_memory(redis) - before
        markers = await keys_memory(redis, f"t:{{{tenant.id}}}:done:*")
    finally:
        await cache.close()
        await mongo.close()
        await servers.stop()
    n = len(events)
    print(f"\n| path | events | seconds | events/s | ratio | target |\n|---|---:|---:|---:|---:|---|")
    print(f"| consumer: apply (popularity, profile, seen, metrics) + XACK | {n:,} | {drained_s:.2f} | "
          f"{n / drained_s:,.0f} | {baseline_s / drained_s:.2f} | >= 10,000 events/s |")
    print(f"| baseline: XREADGROUP + XACK only | {n:,} | {baseline_s:.2f} | {n / baseline_s:,.0f} | 1.00 | |")
    print(f"| after draining: MongoDB snapshot of {args.users:,} profiles | | {flush_s:.2f} | | | |")
    print(f"\nWhile draining: consumer process {cpu_s:.2f} CPU s ({cpu_s / n * 1e6:.0f} us/event), redis-server "
          f"{server_cpu_s:.2f} CPU s ({server_cpu_s / n * 1e6:.0f} us/event), wall {drained_s:.2f} s.")
    print(f"\nRedis memory kept after draining and trimming the stream: {kept / 1e6:.1f} MB for {args.users:,} users "
          f"and {n:,} events ({n / args.users:.0f} each), of which applied-event markers {markers / 1e6:.1f} MB "
          f"({markers / n:.0f} bytes per event; they expire after 3 days). Without them: "
          f"{(kept - markers) / args.users:,.0f} bytes per user.")
    for p in problems:
        print("CHECK FAILED:", p)
    return 1 if problems else 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--users", type=int, default=5_000)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--batch", type=int, default=1_000, help="entries per XREADGROUP (the consumer's default)")
    sys.exit(asyncio.run(main(parser.parse_args())))
