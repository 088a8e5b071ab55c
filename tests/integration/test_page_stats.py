"""Served pages' quality per scenario on a real redis-server: several serving processes note their pages and flush
them to minute buckets; a window sums the counters and counts the union of the served items (HyperLogLog), so the
cache hit rate, diversity and coverage are those of every process together, per tenant and scenario."""

from __future__ import annotations

import time

import numpy as np
import pytest
from redis import asyncio as aioredis

from domain.errors import Unavailable
from domain.realtime.pagestats import (
    DIVERSITY_SAMPLE, KEEP_S, MEASURED_PER_FLUSH, PageStats, items_key, page_diversity, stats_key,
)
from domain.realtime.snapshots import MetricsWindow, SnapshotRequest
from domain.recommend.base import CatalogueView

NOW = 1_800_000_000.0  # a fixed wall clock, mid-minute


def catalogue(categories: dict[str, tuple[str, ...]], inactive: tuple[str, ...] = ()) -> CatalogueView:
    ids = list(categories)
    return CatalogueView(
        item_ids=ids, titles=[None] * len(ids), categories=[categories[i] for i in ids], tags=[()] * len(ids),
        attributes=[{}] * len(ids), published_at=np.full(len(ids), np.nan),
        active=np.array([i not in inactive for i in ids]),
    )


class Catalogues:
    def __init__(self, **views: CatalogueView) -> None:
        self.views = views

    def catalogue(self, tenant_id: str, scenario_id: str) -> CatalogueView | None:
        return self.views.get(f"{tenant_id}_{scenario_id}")


SHOP = catalogue({"a": ("x",), "b": ("x",), "c": ("y",), "d": ("x", "y"), "e": (), "f": ("z",), "g": ("z",),
                  "h": ("z",)}, inactive=("h",))


def test_page_stats_diversity_is_the_mean_pairwise_jaccard_distance_of_categorised_items():
    assert page_diversity(SHOP, ["a", "b"]) == pytest.approx(0.0)  # the same category
    assert page_diversity(SHOP, ["a", "c"]) == pytest.approx(1.0)  # nothing shared
    # a-b 0, a-c 1, b-c 1: mean 2/3; with d: a-d and b-d 1/2, c-d 1/2 -> (0+1+1+.5+.5+.5)/6
    assert page_diversity(SHOP, ["a", "b", "c"]) == pytest.approx(2 / 3)
    assert page_diversity(SHOP, ["a", "b", "c", "d"]) == pytest.approx(3.5 / 6)
    # an item without categories, or unknown to the view, says nothing: fewer than two left is no measure
    assert page_diversity(SHOP, ["a", "c", "e", "zz"]) == pytest.approx(1.0)
    assert page_diversity(SHOP, ["a", "e", "zz"]) is None


async def test_page_stats_windows_pool_every_process_per_tenant_and_scenario(redis):
    views = Catalogues(t1_shop=SHOP, t2_shop=catalogue({"a": ("x",), "b": ("y",)}))
    api_1, api_2 = PageStats(redis, views), PageStats(redis, views)
    # process 1: two first pages computed, one from the cache; process 2: a cached first page and a later page
    api_1.note(tenant_id="t1", scenario_id="shop", item_ids=["a", "b", "c"], first=True, cached=False, at=NOW)
    api_1.note(tenant_id="t1", scenario_id="shop", item_ids=["a", "c"], first=True, cached=False, at=NOW)
    api_1.note(tenant_id="t1", scenario_id="shop", item_ids=["a", "c"], first=True, cached=True, at=NOW)
    api_2.note(tenant_id="t1", scenario_id="shop", item_ids=["a", "b", "c"], first=True, cached=True, at=NOW)
    api_2.note(tenant_id="t1", scenario_id="shop", item_ids=["d", "f"], first=False, cached=False, at=NOW)
    # another tenant's scenario of the same id, and a page of t1 served 10 minutes earlier
    api_2.note(tenant_id="t2", scenario_id="shop", item_ids=["a", "b"], first=True, cached=False, at=NOW)
    api_1.note(tenant_id="t1", scenario_id="shop", item_ids=["f", "g"], first=True, cached=False, at=NOW - 600)
    assert await api_1.flush() == 2 and await api_2.flush() == 2
    assert await api_1.flush() == 0  # nothing noted since

    reader = PageStats(redis)
    minute, hour, other = await reader.read_many([
        SnapshotRequest("t1", "shop", MetricsWindow.MINUTE), SnapshotRequest("t1", "shop", MetricsWindow.HOUR),
        SnapshotRequest("t2", "shop", MetricsWindow.HOUR)], now=NOW)
    assert (minute.pages, minute.first_pages, minute.cache_hits) == (5, 4, 2)
    assert minute.cache_hit_rate == pytest.approx(0.5)
    # diversity per page: 2/3, 1, 1, 2/3, and d-f: {x,y} vs {z}: 1
    assert minute.diversity == pytest.approx((2 / 3 + 1 + 1 + 2 / 3 + 1) / 5)
    # a, b, c, d, f of 7 active items (h is not)
    assert (minute.distinct_items, minute.active_items) == (5, 7)
    assert minute.coverage == pytest.approx(5 / 7)
    assert (hour.pages, hour.first_pages, hour.cache_hits, hour.distinct_items) == (6, 5, 2, 6)  # and g
    assert hour.cache_hit_rate == pytest.approx(0.4) and hour.coverage == pytest.approx(6 / 7)
    assert (other.pages, other.distinct_items, other.active_items) == (1, 2, 2)
    assert other.coverage == pytest.approx(1.0) and other.diversity == pytest.approx(1.0)


async def test_page_stats_keys_expire_and_name_no_user(redis):
    stats = PageStats(redis, Catalogues(t1_feed=SHOP))
    stats.note(tenant_id="t1", scenario_id="feed", item_ids=["a", "b"], first=True, cached=False, at=NOW)
    await stats.flush()
    minute = int(NOW) // 60
    keys = {k.decode() for k in await redis.keys("*")}
    assert keys == {stats_key("t1", "feed", minute), items_key("t1", "feed", minute)}
    assert all(k.startswith("t:{t1}:") for k in keys)  # in the tenant's hash slot
    for key in keys:
        assert 0 < await redis.ttl(key) <= KEEP_S


async def test_page_stats_without_a_catalogue_still_count_pages_and_items(redis):
    stats = PageStats(redis)  # a process that holds no item view of the scenario
    stats.note(tenant_id="t1", scenario_id="feed", item_ids=["a", "b"], first=True, cached=False, at=time.time())
    await stats.flush()
    [quality] = await stats.read_many([SnapshotRequest("t1", "feed", MetricsWindow.MINUTE)])
    assert (quality.pages, quality.distinct_items, quality.active_items) == (1, 2, 0)
    assert quality.coverage == 0.0 and quality.diversity == 0.0


async def test_page_stats_a_failed_flush_drops_its_counts_and_a_failed_read_is_unavailable(redis, tmp_path):
    gone = aioredis.Redis(unix_socket_path=str(tmp_path / "nothing.sock"))
    stats = PageStats(gone)
    stats.note(tenant_id="t1", scenario_id="feed", item_ids=["a"], first=True, cached=False)
    assert await stats.flush() == 0  # logged, never raised: serving goes on
    with pytest.raises(Unavailable):
        await stats.read_many([SnapshotRequest("t1", "feed", MetricsWindow.HOUR)])
    with pytest.raises(ValueError, match="up to an hour"):
        await PageStats(redis).read_many([SnapshotRequest("t1", "feed", MetricsWindow.DAY)])


async def test_page_stats_measure_a_bounded_sample_of_diversity_per_flush(redis):
    scenarios = [f"s{n}" for n in range(40)]
    stats = PageStats(redis, Catalogues(**{f"t1_{s}": SHOP for s in scenarios}))
    for scenario in scenarios:
        for _ in range(DIVERSITY_SAMPLE + 5):
            stats.note(tenant_id="t1", scenario_id=scenario, item_ids=["a", "c"], first=True, cached=False, at=NOW)
    assert await stats.flush() == 40
    minute = int(NOW) // 60
    measured = [int(await redis.hget(stats_key("t1", s, minute), "div_pages")) for s in scenarios]
    assert measured == [MEASURED_PER_FLUSH // 40] * 40  # shared evenly: 5 each, 200 in all
    [quality] = await stats.read_many([SnapshotRequest("t1", "s0", MetricsWindow.MINUTE)], now=NOW)
    assert quality.pages == DIVERSITY_SAMPLE + 5 and quality.diversity == pytest.approx(1.0)
