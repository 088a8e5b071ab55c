"""Experiment outcomes kept by the stream consumer on the real servers: per-user components, each variant's sums
and products equal to those computed from the users directly, covariates from before the start, idempotent
replays, attribution only to the page's own user, and erasure subtracting a user's share."""

from __future__ import annotations

import asyncio
import json
import random
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from domain.catalogue import ItemData
from domain.experiments.metrics import ALL_COMPONENTS, PAIRS
from domain.experiments.moments import Moments
from domain.experiments.outcomes import ExperimentOutcomes, pre_key, user_key
from domain.events import InteractionData
from domain.realtime.impressions import impression_sink
from domain.recommend.base import Recommendation
from models.documents import Experiment, Impression, Interaction
from tests.conftest import new_tenant

NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture
async def shop(served):
    services = served.runtime.services
    keys = await new_tenant(served, "xout")
    scenario = await services.scenarios.create(name="feed", template="CUSTOM", config=None, tenant_id=keys.tenant_id)
    items = [ItemData(f"v{i}", attributes={"durationSeconds": 100}) for i in range(6)]
    assert not (await services.catalogue.upsert(items, tenant_id=keys.tenant_id, scenario_id=scenario.id)).errors
    experiment = Experiment(
        _id=f"exp_{keys.tenant_id}", tenant_id=keys.tenant_id, scenario_id=scenario.id, name="x", status="RUNNING",
        variants=[{"name": "A", "weight": 1}, {"name": "B", "weight": 1}], created_at=NOW, started_at=NOW,
    )
    return services, keys.tenant_id, scenario.id, experiment


def event(sid: str, user: str, item: str, kind: str, rid: str | None, eid: str, value: float | None = None):
    return InteractionData(scenario_id=sid, user_id=user, item_id=item, type=kind, value=value, request_id=rid,
                           event_id=eid, timestamp=NOW - timedelta(seconds=5))


async def drained(services, tenant: str) -> None:
    assert await services.realtime.wait_drained(tenant_id=tenant, timeout_s=10)


def expected_moments(rows: dict[str, dict[str, float]]) -> Moments:
    columns = {name: np.array([r.get(name, 0.0) for r in rows.values()], dtype=float) for name in ALL_COMPONENTS}
    return Moments.from_arrays(columns, PAIRS)


async def test_sums_and_products_match_the_users(served, shop):
    services, tenant, sid, experiment = shop
    redis = served.runtime.cache.client
    sink = impression_sink(redis)
    outcomes = ExperimentOutcomes(redis)
    rng = random.Random(7)
    truth: dict[str, dict[str, dict[str, float]]] = {"A": {}, "B": {}}
    await redis.hset(pre_key(tenant, experiment.id), "u0", "[4, 1, 1, 30, 0.5, 1, 2]")
    events = []
    for u in range(12):
        user, variant = f"u{u}", "AB"[u % 2]
        row = truth[variant].setdefault(user, {name: 0.0 for name in ALL_COMPONENTS})
        if user == "u0":
            row.update(pre_impressions=4, pre_clicks=1, pre_converted=1, pre_watch_seconds=30,
                       pre_completion_sum=0.5, pre_completions=1, pre_interactions=2)
        for page in range(rng.randint(1, 3)):
            rid = f"r-{u}-{page}"
            n = rng.randint(0, 4)
            items = [Recommendation(f"v{i}", 1.0, ("popular",)) for i in range(n)]
            await sink.record(tenant_id=tenant, scenario_id=sid, user_id=user, request_id=rid, variant=variant,
                              items=items, experiment=experiment.id, latency_ms=2.5)
            row["impressions"] += n
            row["lists"] += 1
            row["latency_ms"] += 2.5
            row["empty_lists"] += n == 0
            for i in range(n):
                kind = rng.choice(["CLICK", "CLICK", "PURCHASE", "WATCH", "VIEW"])
                value = 50.0 if kind == "WATCH" else None
                events.append(event(sid, user, f"v{i}", kind, rid, f"e-{rid}-{i}", value))
                row["interactions"] += 1
                row["clicks"] += kind == "CLICK"
                row["conversions"] += kind == "PURCHASE"
                if kind == "WATCH":
                    row["watch_seconds"] += 50
                    row["completion_sum"] += 0.5
                    row["completions"] += 1
        row["converted"] = float(row["conversions"] > 0)
    # Events that count for nobody: no request, or another user citing someone's page.
    events.append(event(sid, "u1", "v0", "CLICK", None, "stray-1"))
    events.append(event(sid, "intruder", "v0", "CLICK", "r-1-0", "stray-2"))
    await drained(services, tenant)
    await services.events.record(events, tenant_id=tenant)
    await drained(services, tenant)

    got = await outcomes.moments(experiment)
    for variant in "AB":
        want = expected_moments(truth[variant])
        assert got[variant].n == want.n == 6
        for name in ALL_COMPONENTS:
            assert got[variant].sum(name) == pytest.approx(want.sum(name)), (variant, name)
        for a, b in PAIRS:
            assert got[variant].product(a, b) == pytest.approx(want.product(a, b)), (variant, a, b)

    # Applying the same entries again (a replay) changes nothing.
    await services.events.record(events[:5], tenant_id=tenant)
    await drained(services, tenant)
    assert (await outcomes.moments(experiment))["A"].sums == got["A"].sums

    # Erasing a user subtracts exactly their share.
    removed = await outcomes.erase_user("u0", [experiment], tenant_id=tenant)
    assert removed >= 2
    after = (await outcomes.moments(experiment))["A"]
    del truth["A"]["u0"]
    want = expected_moments(truth["A"])
    assert after.n == 5
    for name in ALL_COMPONENTS:
        assert after.sum(name) == pytest.approx(want.sum(name), abs=1e-9)
    for a, b in PAIRS:
        assert after.product(a, b) == pytest.approx(want.product(a, b), abs=1e-9)
    assert await redis.hget(user_key(tenant, experiment.id), "u0") is None
    assert await redis.hget(pre_key(tenant, experiment.id), "u0") is None


async def test_covariates_are_the_same_components_over_the_fortnight_before_the_start(served, shop):
    services, tenant, sid, experiment = shop
    redis = served.runtime.cache.client
    start = NOW
    day = timedelta(days=1)
    await Impression.get_pymongo_collection().insert_many([
        {"_id": f"{tenant}/p{i}", "tenant_id": tenant, "scenario_id": sid, "user_id": user, "request_id": f"p{i}",
         "items": [{"i": "v1", "s": []}] * n, "served_at": at}
        for i, (user, n, at) in enumerate([("old", 5, start - 2 * day), ("old", 3, start - 13 * day),
                                           ("old", 7, start - 20 * day), ("late", 4, start + day)])
    ])
    rows = [("CLICK", None, start - day), ("CLICK", None, start - 2 * day), ("PURCHASE", None, start - 3 * day),
            ("WATCH", 50.0, start - 4 * day), ("CLICK", None, start - 15 * day)]
    await Interaction.get_pymongo_collection().insert_many([
        {"_id": f"{tenant}/e{i}", "tenant_id": tenant, "scenario_id": sid, "user_id": "old", "item_id": "v1",
         "type": kind, "value": value, "ts": at, "request_id": "p0", "event_id": f"e{i}", "received_at": at}
        for i, (kind, value, at) in enumerate(rows)
    ] + [{"_id": f"{tenant}/n", "tenant_id": tenant, "scenario_id": sid, "user_id": "old", "item_id": "v1",
          "type": "CLICK", "ts": start - day, "request_id": None, "event_id": "n", "received_at": start}])
    await ExperimentOutcomes(redis).prepare(experiment)
    pre = json.loads(await redis.hget(pre_key(tenant, experiment.id), "old"))
    # impressions 5 + 3 (not the one 20 days back), clicks 2, converted, watch 50 s at half of a 100 s item, and
    # 4 attributed interactions in the window (the unattributed click and the one 15 days back do not count)
    assert pre == [8, 2, 1, 50, 0.5, 1, 4]
    assert await redis.hget(pre_key(tenant, experiment.id), "late") is None


async def test_a_slow_covariate_read_finishes_in_the_background(served, shop, monkeypatch):
    services, tenant, sid, experiment = shop
    redis = served.runtime.cache.client
    release = asyncio.Event()
    from domain.experiments import outcomes as module

    async def slow(exp):
        await release.wait()
        return {"early": [1, 0, 0, 0, 0, 0, 1]}

    monkeypatch.setattr(module, "_pre_period", slow)
    store = ExperimentOutcomes(redis)
    started = time.monotonic()
    await store.prepare(experiment, wait_s=0.1)  # returns: the experiment may start
    assert time.monotonic() - started < 1 and await redis.hget(pre_key(tenant, experiment.id), "early") is None
    release.set()
    for _ in range(50):
        if await redis.hget(pre_key(tenant, experiment.id), "early") is not None:
            break
        await asyncio.sleep(0.02)
    assert json.loads(await redis.hget(pre_key(tenant, experiment.id), "early")) == [1, 0, 0, 0, 0, 0, 1]
