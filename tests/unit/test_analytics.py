"""The analytics' maths on hand-computed values: Gini, coverage, event buckets, retention cohorts, bucket ranges,
and the folding of events and served pages into hour and day rollups (domain.analytics)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from graphql import parse as parse_document

from domain.analytics import figures, stats
from domain.analytics.refresh import entry, parse
from domain.analytics.rollup import (
    Bucket, day_from_hours, drop_users, fold_hours, from_documents, merge, pack, page_of, to_documents, unpack,
)
from domain.analytics.figures import Granularity
from domain.analytics.service import bucket_starts, check_range
from domain.errors import BadInput
from graph.cost import estimate_cost
from graph.schema import schema

T = datetime(2024, 5, 1, tzinfo=UTC)  # a Wednesday


def at(hours: float = 0, minutes: float = 0) -> datetime:
    return T + timedelta(hours=hours, minutes=minutes)


@pytest.mark.parametrize(("values", "expected"), [
    ([0, 0, 0, 10], 1.0),  # one item takes every impression
    ([5, 5, 5, 5], 0.0),  # all equal
    ([4, 1, 3, 2], 1 / 3),  # sorted 1..4: (-3*1 - 1*2 + 1*3 + 3*4) / (3 * 10)
    ([1, 3], 0.5),  # (-1*1 + 1*3) / (1 * 4)
    ([0, 1], 1.0),
])
def test_gini_of_hand_computed_values(values, expected):
    assert stats.gini(values) == pytest.approx(expected)


@pytest.mark.parametrize("values", [[], [7], [0, 0, 0]])
def test_gini_is_undefined_without_two_values_or_any_impression(values):
    assert stats.gini(values) is None


def test_coverage_counts_active_items_shown():
    assert stats.coverage({"a", "b", "gone"}, ["a", "b", "c", "d"]) == 0.5
    assert stats.coverage({"a"}, []) == 0.0


def test_ctr_is_none_without_impressions():
    assert stats.ctr(3, 12) == 0.25
    assert stats.ctr(3, 0) is None


def test_events_per_user_buckets_are_inclusive_and_the_last_is_open():
    found = stats.event_buckets([1, 1, 2, 4, 5, 6, 10, 11, 50, 51, 100, 101, 1000])
    assert [(b.lower, b.upper, b.users) for b in found] == [
        (1, 1, 2), (2, 2, 1), (3, 5, 2), (6, 10, 2), (11, 20, 1), (21, 50, 1), (51, 100, 2), (101, None, 2)]
    assert sum(b.users for b in stats.event_buckets([])) == 0


def test_mean_and_median():
    assert stats.mean_median([1, 2, 3, 10]) == (4.0, 2.5)
    assert stats.mean_median([3, 1, 2]) == (2.0, 2.0)
    assert stats.mean_median([]) == (None, None)


def test_weeks_start_on_monday_utc():
    assert stats.week_start(at(15, 30)) == datetime(2024, 4, 29, tzinfo=UTC)
    assert stats.week_start(datetime(2024, 4, 29, tzinfo=UTC)) == datetime(2024, 4, 29, tzinfo=UTC)


def test_retention_cohorts_by_first_week():
    w0, w1, w2 = (datetime(2024, 4, 29, tzinfo=UTC) + timedelta(weeks=k) for k in range(3))
    first = {"a": w0, "b": w0, "c": w0, "d": w1}
    active = {w0: {"a", "b", "c"}, w1: {"a", "b", "d"}, w2: {"a", "d", "stranger"}}
    cohorts = stats.retention(first, active, [w0, w1, w2])
    assert [(c.week, c.users) for c in cohorts] == [(w0, 3), (w1, 1)]  # w2 gained nobody: left out
    assert cohorts[0].retained == pytest.approx((1.0, 2 / 3, 1 / 3))
    assert cohorts[1].retained == (1.0, 1.0)


def test_top_by_impressions_and_by_ctr_with_a_floor():
    rows = [("a", 100, 5), ("b", 10, 5), ("c", 3, 3), ("d", 100, 9), ("e", 0, 4)]
    assert [r[0] for r in stats.top(rows, 3, by_ctr=False)] == ["d", "a", "b"]
    assert [r[0] for r in stats.top(rows, 10, by_ctr=True, min_impressions=10)] == ["b", "d", "a"]
    assert [r[0] for r in stats.top(rows, 1, by_ctr=True)] == ["c"]


def test_bucket_starts_cover_the_range_from_the_bucket_holding_from():
    assert bucket_starts(at(10, 30), at(13), Granularity.HOUR) == [at(10), at(11), at(12)]
    assert bucket_starts(at(10, 30), at(48), Granularity.DAY) == [T, T + timedelta(days=1)]
    assert bucket_starts(at(10, 30), at(48, 1), Granularity.DAY) == [T + timedelta(days=k) for k in range(3)]


def test_ranges_are_checked_naming_the_argument():
    with pytest.raises(BadInput) as refused:
        check_range(at(5), at(5))
    assert refused.value.field == "from"
    with pytest.raises(BadInput) as refused:
        check_range(T, T + timedelta(days=92, seconds=1))
    assert refused.value.field == "to"
    naive = datetime(2024, 5, 1)
    assert check_range(naive, naive + timedelta(days=92)) == (T, T + timedelta(days=92))


def test_pending_entries_round_trip():
    assert parse(entry("sc_1", at(3))) == ("sc_1", at(3))


def page(rid: str, served: datetime, items: list[tuple[str, list[str]]], scenario: str = "s") -> dict:
    return {"request_id": rid, "scenario_id": scenario, "served_at": served,
            "items": [{"i": i, "s": sources} for i, sources in items]}


def event(user: str, item: str, kind: str, ts: datetime, rid: str | None = None, value: float | None = None) -> dict:
    return {"scenario_id": "s", "user_id": user, "item_id": item, "type": kind, "ts": ts, "request_id": rid,
            "value": value}


PAGES = [page("r1", at(10, 5), [("i1", ["als"]), ("i2", ["pop", "als"]), ("i3", ["pop"])]),
         page("r2", at(11, 10), [("i2", ["pop"])])]
OTHER = page("r9", at(10), [("i2", ["als"])], scenario="elsewhere")
EVENTS = [
    event("u1", "i2", "CLICK", at(10, 20), "r1"),  # attributed: position 2, sources pop and als
    event("u1", "i1", "WATCH", at(10, 40), value=30.0),
    event("u2", "i3", "PURCHASE", at(11, 15), "r1"),  # attributed, not a click
    event("u2", "i9", "CLICK", at(11, 30)),  # a click on an item never shown
    event("u3", "i2", "CLICK", at(11, 45), "r9"),  # cites another scenario's page: not attributed
]
FIRST = {"u1": at(10, 20), "u2": at(9), "u3": at(11, 45)}


def folded() -> dict[datetime, Bucket]:
    served = {p["request_id"]: page_of(p) for p in [*PAGES, OTHER]}
    return fold_hours(EVENTS, PAGES, served, FIRST)


def test_events_and_pages_fold_into_hours_by_event_time():
    hours = folded()
    ten, eleven = hours[at(10)], hours[at(11)]
    assert ten.counts == {"impressions": 3, "clicks": 1, "conversions": 0, "watch_seconds": 30.0, "watches": 1,
                          "interactions": 2, "attributed": 1}
    assert (ten.active_users, ten.new_users, dict(ten.users)) == (1, 1, {"u1": 2})
    assert ten.items == {"i1": [1, 0], "i2": [1, 1], "i3": [1, 0]}
    assert ten.positions == [[1, 0], [1, 1], [1, 0]]
    assert ten.sources == {"als": [2, 1], "pop": [2, 1]}
    assert eleven.counts == {"impressions": 1, "clicks": 2, "conversions": 1, "watch_seconds": 0, "watches": 0,
                             "interactions": 3, "attributed": 1}
    assert (eleven.active_users, eleven.new_users) == (2, 1)  # u2 was first seen at 9:00
    assert eleven.items == {"i2": [1, 1], "i9": [0, 1]}  # every CLICK counts for its item
    assert eleven.positions == [[1, 0]] and eleven.sources == {"pop": [1, 0]}


def test_a_day_merges_its_hours():
    day = merge(T, folded().values())
    assert (day.counts["impressions"], day.counts["clicks"], day.active_users, day.new_users) == (4, 3, 3, 2)
    assert day.new == {"u1", "u3"}
    assert day.positions == [[2, 0], [1, 1], [1, 0]]
    assert day.sources == {"als": [2, 1], "pop": [3, 1]}
    assert day.items["i2"] == [2, 2] and dict(day.users) == {"u1": 2, "u2": 2, "u3": 1}


def test_stored_documents_round_trip_with_maps_apart_and_split():
    day = day_from_hours(T, folded().values())
    docs = to_documents(day, tenant_id="t", scenario_id="s", grain="d", chunk=2)
    epoch = int(T.timestamp())
    assert [(d["_id"], d["grain"], d["part"]) for d in docs] == [
        (f"t/s/d/{epoch}/0", "d", 0),  # the head: figures, hourly figures, positions, sources
        (f"t/s/di/{epoch}/0", "di", 0), (f"t/s/di/{epoch}/1", "di", 1),  # 4 items, 2 a part
        (f"t/s/du/{epoch}/0", "du", 0), (f"t/s/du/{epoch}/1", "du", 1)]  # 3 users, and who was new
    head = docs[0]
    assert head["c"]["active_users"] == 3 and head["c"]["new_users"] == 2 and "m" not in head
    assert unpack(docs[1]) == [["i1", "i2"], [1, 2], [0, 2]] and unpack(docs[3]) == [["u1", "u2"], [2, 2], [1, 0]]
    assert head["hc"]["impressions"][10:12] == [3, 1] and head["hc"]["active_users"][10:12] == [1, 2]
    assert sum(head["hc"]["new_users"]) == 2 and sum(head["hc"]["clicks"]) == 3
    back = from_documents(reversed(docs))[T]
    assert (back.counts, back.items, back.users, back.new, back.positions, back.sources, back.hourly) == (
        day.counts, day.items, day.users, {"u1", "u3"}, day.positions, day.sources, day.hourly)


def test_users_are_taken_out_of_a_stored_user_map():
    doc = {"grain": "du", "m": pack(["a", "b", "c"], [3, 1, 2], [1, 0, 0])}
    assert drop_users(doc, {"b", "z"}.__contains__) == {"b"}
    assert unpack(doc) == [["a", "c"], [3, 2], [1, 0]]
    assert drop_users(doc, "z".__eq__) == set() and unpack(doc) == [["a", "c"], [3, 2], [1, 0]]


def test_catalogue_figures_from_day_maps():
    docs = [{"start": T, "m": pack(["a", "b"], [3, 1], [1, 0])},
            {"start": T + timedelta(days=1), "m": pack(["a", "c", "z"], [1, 0, 2], [0, 1, 1])}]
    items = {"a": (True, ("x",)), "b": (True, ("x", "y")), "c": (True, ("y",)), "d": (True, ("y",)),
             "z": (False, ("zz",))}
    got = figures.catalogue(docs, items, first=2, min_impressions=1, scenario_id="s", start=T,
                            end=T + timedelta(days=2), rolled_up_to=None)
    assert (got.active_items, got.recommended_items, got.coverage) == (4, 2, 0.5)
    assert (got.long_tail_items, got.long_tail_share) == (2, 0.5)
    assert got.gini == pytest.approx(13 / 15)  # sorted [0, 0, 1, 4]: (1*1 + 3*4) / (3 * 5)
    assert [(s.name, s.impressions, s.clicks) for s in got.top_items_by_impressions] == [("a", 4, 1), ("z", 2, 1)]
    assert [s.name for s in got.top_items_by_ctr] == ["z", "a"]  # 0.5, 0.25 (b: 0, and only 2 asked)
    assert [(s.name, s.impressions, s.clicks) for s in got.top_categories_by_impressions] == [
        ("x", 5, 1), ("zz", 2, 1)]
    assert [s.name for s in got.top_categories_by_ctr] == ["y", "zz"]  # 1/1, 1/2 (x: 1/5)


def test_audience_figures_from_day_maps():
    w = datetime(2024, 4, 29, tzinfo=UTC)  # a Monday
    users = [{"start": w, "m": pack(["p"], [1], [1])},  # before the range's first day: retention only
             {"start": w + timedelta(days=2), "m": pack(["p", "q"], [2, 1], [0, 1])},  # users, events, new
             {"start": w + timedelta(days=8), "m": pack(["q", "r"], [4, 1], [0, 1])}]
    heads = [{"start": w + timedelta(days=2), "pn": [3, 2], "pc": [1, 0],
              "src": [{"s": "als", "n": 4, "c": 1}, {"s": "pop", "n": 1, "c": 0}]},
             {"start": w + timedelta(days=8), "pn": [1], "pc": [1], "src": [{"s": "als", "n": 1, "c": 1}]}]
    got = figures.audience(heads, users, [w, w + timedelta(weeks=1)], first_day=w + timedelta(days=2),
                           scenario_id="s", start=w + timedelta(days=2), end=w + timedelta(days=14),
                           rolled_up_to=None)
    assert (got.users, got.mean_events_per_user, got.median_events_per_user) == (3, 8 / 3, 2.0)
    assert [b.users for b in got.events_per_user[:3]] == [1, 1, 1]  # r: 1, p: 2, q: 5
    assert [(s.name, s.impressions, s.clicks) for s in got.ctr_by_position] == [("1", 4, 2), ("2", 2, 0)]
    assert [(s.name, s.impressions, s.clicks) for s in got.ctr_by_source] == [("als", 5, 2), ("pop", 1, 0)]
    assert [(c.week, c.users, c.retained) for c in got.retention] == [
        (w, 2, (1.0, 0.5)), (w + timedelta(weeks=1), 1, (1.0,))]


def test_hourly_points_come_from_the_day_heads():
    day = day_from_hours(T, folded().values())
    head = to_documents(day, tenant_id="t", scenario_id="s", grain="d")[0]
    got = figures.hour_points([at(9), at(10), at(11), at(12)], [head])
    assert [(p.impressions, p.clicks, p.active_users, p.new_users) for p in got] == [
        (0, 0, 0, 0), (3, 1, 1, 1), (1, 2, 2, 1), (0, 0, 0, 0)]
    assert got[1].ctr == pytest.approx(1 / 3) and got[0].ctr is None


def test_the_analytics_fields_have_their_query_cost():
    def cost(query: str) -> int:
        return estimate_cost(schema._schema, parse_document(query)).cost

    window = 'scenarioId: "s", from: "2024-05-01T00:00:00Z", to: "2024-06-01T00:00:00Z"'
    assert cost(f"{{ analytics({window}) {{ points {{ start clicks }} }} }}") == 5 + 1  # the points list: 1
    # the rankings are lists under `first`: each object in them counts `first` times
    assert cost(f"{{ catalogueStats({window}, first: 50) {{ topItemsByImpressions {{ itemId }} }} }}") == 10 + 50
    assert cost(f"{{ audienceStats({window}) {{ users retention {{ week }} }} }}") == 10 + 1
    assert cost("mutation { refreshAnalytics { pendingHours } }") == 20
