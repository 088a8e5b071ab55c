"""Live popularity in recall: live counts reorder popular and trending, the request path reads a kept snapshot
(refreshed in the background, at most once per ttl), and a slow or failing Redis falls back to trained counts."""

from __future__ import annotations

import asyncio
from contextlib import asynccontextmanager

import numpy as np
import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from domain.realtime.keys import bucket_key, newest_key
from domain.realtime.popularity import BUCKET_S, LiveLists, LivePopularity
from domain.recommend.engine import Engine
from domain.recommend.recall.popular import LIVE_PRIOR, live_view, trained_view
from tests.unit.test_engine import ask, ids, scenario
from tests.unit.test_engine import model as engine_model  # noqa: F401 - the fixture
from tests.unit.test_recall import context, model, recall  # noqa: F401 - model is a fixture

POPULAR_ONLY = [{"source": "popular", "weight": 1.0, "limit": 50, "params": {}}]


def newest_ms(trained) -> int:  # noqa: ANN001
    return int(trained.newest_event.timestamp() * 1000)


def with_live(trained, lists: LiveLists | None):  # noqa: ANN001, ANN201
    ctx = context(trained)
    base = trained_view(ctx.index, trained)
    ctx.popularity = live_view(base, ctx.index, trained, lists, window_hours=1.0)
    return ctx


async def test_live_counts_lift_an_item_in_popular(model):  # noqa: F811
    trained = await recall("popular", context(model), limit=30)
    tail = trained[-1]
    assert await recall("popular", with_live(model, None), limit=30) == trained  # no snapshot: trained order
    busy = LiveLists(popular=[(tail, 50.0)], trending=[], total=60.0, newest_ms=newest_ms(model))
    lifted = await recall("popular", with_live(model, busy), limit=30)
    assert lifted[0] == tail
    assert [i for i in lifted if i != tail] == [i for i in trained if i != tail]  # the rest keep their order


async def test_one_click_in_a_quiet_hour_does_not_top_popular(model):  # noqa: F811
    trained = await recall("popular", context(model), limit=30)
    quiet = LiveLists(popular=[(trained[-1], 2.0)], trending=[], total=2.0, newest_ms=newest_ms(model))
    found = await recall("popular", with_live(model, quiet), limit=30)
    assert found[:2] == trained[:2]  # the leaders hold (30 items: shares are close)
    assert found.index(trained[-1]) < len(trained) - 1  # but it does move up


async def test_live_rise_leads_trending_and_the_trained_rise_fades(model):  # noqa: F811
    assert (await recall("trending", context(model)))[:1] == ["k5"]
    newest = newest_ms(model) + 3 * 3600 * 1000  # three trending windows past the model
    rising = LiveLists(popular=[("a3", 4.0)], trending=[("a3", 1.0)], total=4.0, newest_ms=newest)
    ctx = with_live(model, rising)
    found = await recall("trending", ctx)
    assert found[:2] == ["a3", "k5"]
    k5 = ctx.catalogue.index["k5"]
    trained = trained_view(ctx.index, model).trending
    faded = ctx.popularity.trending.scores[list(ctx.popularity.trending.idx).index(k5)]
    assert faded == pytest.approx(trained.scores[list(trained.idx).index(k5)] / 8, rel=1e-5)


async def test_unknown_and_excluded_live_items_are_skipped(model):  # noqa: F811
    lists = LiveLists(popular=[("nope", 99.0), ("a1", 30.0)], trending=[], total=129.0, newest_ms=newest_ms(model))
    ctx = with_live(model, lists)
    assert "nope" not in await recall("popular", ctx, limit=50)
    ctx = context(model, exclude={"a1"})
    ctx.popularity = live_view(trained_view(ctx.index, model), ctx.index, model, lists, window_hours=1.0)
    assert "a1" not in await recall("popular", ctx, limit=50)


def test_live_scores_are_posterior_shares(model):  # noqa: F811
    ctx = context(model)
    base = trained_view(ctx.index, model)
    item = int(base.popular.idx[-1])
    lists = LiveLists(popular=[(ctx.catalogue.item_ids[item], 10.0)], trending=[], total=40.0, newest_ms=1)
    view = live_view(base, ctx.index, model, lists, window_hours=1.0)
    share = base.popular.scores / base.popular.scores.sum()
    got = dict(zip(view.popular.idx.tolist(), view.popular.scores.tolist(), strict=True))
    assert got[item] == pytest.approx((10.0 + LIVE_PRIOR * share[-1]) / (40.0 + LIVE_PRIOR), rel=1e-5)
    top = int(base.popular.idx[0])
    assert got[top] == pytest.approx(LIVE_PRIOR * share[0] / (40.0 + LIVE_PRIOR), rel=1e-5)
    assert np.all(np.diff(view.popular.scores) <= 1e-9)


class Feed:
    def __init__(self, lists: LiveLists | None = None, error: Exception | None = None) -> None:
        self.lists, self.error, self.calls = lists, error, 0

    async def current(self, *, wait_s: float = 0.0) -> LiveLists | None:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.lists


async def test_the_engine_serves_live_popularity_and_survives_a_failing_feed(engine_model):  # noqa: F811
    config = scenario(POPULAR_ONLY)
    plain = ids(await Engine(config, engine_model).recommend(ask(engine_model, limit=30)))
    tail = plain[-1]
    feed = Feed(LiveLists(popular=[(tail, 500.0)], trending=[], total=500.0, newest_ms=1))
    engine = Engine(config, engine_model, live=feed)
    assert ids(await engine.recommend(ask(engine_model, limit=5)))[0] == tail
    view = engine._views[1]
    await engine.recommend(ask(engine_model, limit=5))
    assert engine._views[1] is view and feed.calls == 2  # one view per snapshot, not per request
    broken = Engine(config, engine_model, live=Feed(error=RedisConnectionError("down")))
    assert ids(await broken.recommend(ask(engine_model, limit=30))) == plain


async def test_an_engine_without_popularity_sources_never_reads_the_feed(engine_model):  # noqa: F811
    feed = Feed()
    config = scenario([{"source": "item_cf", "weight": 1.0, "limit": 50, "params": {}}],
                      fallback={"sources": ["fresh"], "minItems": 1})
    await Engine(config, engine_model, live=feed).recommend(ask(engine_model, history=["a1"]))
    assert feed.calls == 0


# --- the kept snapshot ----------------------------------------------------------------------------------------


class FakeRedis:
    """What LivePopularity reads: GET and a pipeline of ZRANGE, with a delay and a switch to fail."""

    def __init__(self) -> None:
        self.data: dict[str, object] = {}
        self.reads, self.delay, self.down = 0, 0.0, False

    async def get(self, key: str) -> object:
        self.reads += 1
        await asyncio.sleep(self.delay)
        if self.down:
            raise RedisConnectionError("down")
        return self.data.get(key)

    @asynccontextmanager
    async def pipeline(self, transaction: bool = False):  # noqa: ANN201
        redis, calls = self, []

        class Pipe:
            def zrange(self, key: str, start: int, stop: int, withscores: bool = False) -> None:
                calls.append(key)

            async def execute(self) -> list:
                return [sorted(redis.data.get(k, {}).items(), key=lambda kv: -kv[1]) for k in calls]

        yield Pipe()


def put(redis: FakeRedis, item: str, weight: float, ts_ms: int = 10 * BUCKET_S * 1000) -> None:
    redis.data[newest_key("t", "s")] = str(ts_ms).encode()
    bucket = redis.data.setdefault(bucket_key("t", "s", ts_ms // 1000 // BUCKET_S), {})
    bucket[item] = bucket.get(item, 0.0) + weight


async def test_current_reads_once_per_ttl_and_refreshes_in_the_background():
    redis = FakeRedis()
    put(redis, "a", 3.0)
    live = LivePopularity(redis, ttl_s=0.2)  # type: ignore[arg-type]
    first = await live.current(tenant_id="t", scenario_id="s", wait_s=1.0)
    assert first is not None and first.popular == [("a", 3.0)] and first.total == 3.0
    put(redis, "b", 5.0)
    for _ in range(20):
        assert await live.current(tenant_id="t", scenario_id="s") is first
    assert redis.reads == 1
    await asyncio.sleep(0.25)
    assert await live.current(tenant_id="t", scenario_id="s") is first  # stale: answered, refresh started
    await asyncio.sleep(0.05)
    assert [i for i, _ in (await live.current(tenant_id="t", scenario_id="s")).popular] == ["b", "a"]
    assert redis.reads == 2
    await live.close()


async def test_current_never_waits_longer_than_asked_and_falls_back_when_redis_is_down():
    redis = FakeRedis()
    put(redis, "a", 3.0)
    redis.delay = 0.5
    live = LivePopularity(redis, ttl_s=0.05, max_age_s=0.3)  # type: ignore[arg-type]
    started = asyncio.get_running_loop().time()
    assert await live.current(tenant_id="t", scenario_id="s", wait_s=0.02) is None
    assert await live.current(tenant_id="t", scenario_id="s", wait_s=0.02) is None  # only the first read waits
    assert asyncio.get_running_loop().time() - started < 0.2
    await asyncio.sleep(0.5)
    assert (await live.current(tenant_id="t", scenario_id="s")) is not None  # the background read landed
    redis.delay, redis.down = 0.0, True
    await asyncio.sleep(0.1)
    assert (await live.current(tenant_id="t", scenario_id="s")) is not None  # recent enough: still served
    await asyncio.sleep(0.4)
    for _ in range(3):
        assert await live.current(tenant_id="t", scenario_id="s") is None  # too old: trained counts answer
        await asyncio.sleep(0.02)
    assert redis.reads <= 8  # failed reads are retried at most once per ttl, not per request
    await live.close()
