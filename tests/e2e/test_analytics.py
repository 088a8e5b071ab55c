"""Admin analytics through GraphQL (issue 13, item 1): events posted with past timestamps and pages served now are
rolled up on demand (`refreshAnalytics`), then `analytics`, `catalogueStats` and `audienceStats` answer from the
rollups with the figures computed here by hand; another tenant's scenario looks missing, non-admin keys are refused,
bad ranges are named, history loaded later moves users' first weeks, and erasure and scenario deletion reach the
rollups."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from domain.analytics import refresh
from domain.analytics.stats import week_start
from models.documents import AnalyticsRollup, AnalyticsState, AnalyticsUser, Impression
from tests.conftest import new_tenant

pytestmark = pytest.mark.slow

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
RECORD = """mutation($events: [InteractionInput!]!) {
  recordInteractions(events: $events) { accepted errors { index message } } }"""
RECOMMEND = """query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 4) {
  requestId items { item { id } } } }"""
REFRESH = """mutation($s: ID, $from: DateTime, $to: DateTime) { refreshAnalytics(scenarioId: $s, from: $from, to: $to) {
  hoursRolledUp pendingHours rolledUpTo busy } }"""
SERIES = """query($s: ID!, $from: DateTime!, $to: DateTime!, $g: AnalyticsGranularity!) {
  analytics(scenarioId: $s, from: $from, to: $to, granularity: $g) { scenarioId from to granularity rolledUpTo
    points { start impressions clicks ctr conversions watchSeconds activeUsers newUsers interactions attributed } } }"""
CATALOGUE = """query($s: ID!, $from: DateTime!, $to: DateTime!, $first: Int! = 10, $min: Int! = 1) {
  catalogueStats(scenarioId: $s, from: $from, to: $to, first: $first, minImpressions: $min) {
    activeItems recommendedItems coverage gini longTailItems longTailShare
    topItemsByImpressions { itemId impressions clicks ctr } topItemsByCtr { itemId impressions clicks ctr }
    topCategoriesByImpressions { category impressions clicks ctr } topCategoriesByCtr { category ctr } } }"""
AUDIENCE = """query($s: ID!, $from: DateTime!, $to: DateTime!) { audienceStats(scenarioId: $s, from: $from, to: $to) {
  users meanEventsPerUser medianEventsPerUser eventsPerUser { lower upper users }
  retention { week users retained } ctrByPosition { position impressions clicks ctr }
  ctrBySource { source impressions clicks ctr } } }"""
ERASE = "mutation($u: ID!) { deleteUserData(userId: $u) }"
DELETE = "mutation($id: ID!) { deleteScenario(id: $id) }"

UA, UB, UC, UD, UE = (f"an-{n}-7c1e" for n in ("ua", "ub", "uc", "ud", "ue"))
NOW = datetime.now(UTC)
W = week_start(NOW) - timedelta(weeks=3)  # three whole weeks of history, all in the past
TODAY = NOW.replace(hour=0, minute=0, second=0, microsecond=0)


def iso(at: datetime) -> str:
    return at.isoformat()


def ev(user: str, item: str, kind: str, at: datetime | None, sid: str, **more) -> dict:
    out = {"scenarioId": sid, "userId": user, "itemId": item, "type": kind, **more}
    if at is not None:
        out["timestamp"] = iso(at)
    return out


def history(sid: str) -> list[dict]:
    """Events of weeks W, W+1 and W+2: first weeks ua, ub -> W; uc -> W+1; ud -> W+2."""
    d = lambda days, hours, minutes=0: W + timedelta(days=days, hours=hours, minutes=minutes)  # noqa: E731
    return [
        ev(UA, "v0", "VIEW", d(0, 10), sid),
        ev(UB, "v0", "VIEW", d(1, 12), sid),
        ev(UB, "v3", "PURCHASE", d(1, 12, 10), sid),
        ev(UC, "v4", "CLICK", d(8, 8), sid),
        ev(UA, "v1", "CLICK", d(9, 11), sid),
        ev(UA, "v2", "WATCH", d(15, 9, 30), sid, value=40.0),
        ev(UC, "v5", "VIEW", d(15, 8), sid),
        ev(UD, "v5", "WATCH", d(16, 20), sid, value=20.0),
    ]


async def until(check, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


async def refreshed(gql, key: str, **variables) -> dict:
    done = (await gql.data(REFRESH, variables, key=key))["refreshAnalytics"]
    while done["busy"] or done["pendingHours"]:  # the periodic pass held the tenant, or the budget ran out
        done = (await gql.data(REFRESH, {}, key=key))["refreshAnalytics"]
    return done


class Shop:
    def __init__(self, keys, sid: str, pages: list[dict]) -> None:
        self.keys, self.sid, self.pages = keys, sid, pages


@pytest.fixture(scope="module")
async def shop(served, gql) -> Shop:
    keys = await new_tenant(served, "analytics")
    created = await gql.data(CREATE, {"input": {"name": "clips", "template": "VLOG"}}, key=keys.admin)
    sid = created["createScenario"]["id"]
    items = [{"id": f"v{i}", "categories": ["drama" if i < 4 else "comedy"],
              "status": "INACTIVE" if i == 7 else "ACTIVE", "attributes": {"durationSeconds": 60}} for i in range(8)]
    assert (await gql.data(UPSERT, {"s": sid, "items": items}, key=keys.admin))["upsertItems"]["upserted"] == 8
    recorded = (await gql.data(RECORD, {"events": history(sid)}, key=keys.admin))["recordInteractions"]
    assert recorded == {"accepted": 8, "errors": []}
    answers = [(await gql.data(RECOMMEND, {"s": sid, "u": user}, key=keys.public))["recommendations"]
               for user in (UA, UE)]
    assert all(a["items"] for a in answers), answers

    async def stored() -> bool:
        return await Impression.find({"tenant_id": keys.tenant_id}).count() == 2

    await until(stored)
    pages = [d async for d in Impression.get_pymongo_collection().find({"tenant_id": keys.tenant_id})]
    first = next(a for a in answers if a["requestId"] == pages[0]["request_id"])
    clicked = first["items"][1]["item"]["id"]  # position 2 of the first page
    now_events = [ev(pages[0]["user_id"], clicked, "CLICK", None, sid, requestId=first["requestId"]),
                  ev(pages[0]["user_id"], first["items"][0]["item"]["id"], "VIEW", None, sid,
                     requestId=first["requestId"])]
    assert (await gql.data(RECORD, {"events": now_events}, key=keys.admin))["recordInteractions"]["accepted"] == 2
    done = await refreshed(gql, keys.admin)
    assert done["pendingHours"] == 0 and done["rolledUpTo"] is not None
    return Shop(keys, sid, pages)


def by_start(points: list[dict]) -> dict[datetime, dict]:
    return {datetime.fromisoformat(p["start"]): p for p in points}


async def test_a_daily_series_counts_history_by_event_time(gql, shop):
    got = (await gql.data(SERIES, {"s": shop.sid, "from": iso(W), "to": iso(TODAY + timedelta(days=1)), "g": "DAY"},
                          key=shop.keys.admin))["analytics"]
    points = by_start(got["points"])
    assert got["granularity"] == "DAY" and got["rolledUpTo"] is not None
    assert list(points) == [W + timedelta(days=k) for k in range(len(points))]  # every day, empty ones too
    assert max(points) == TODAY  # the range reaches today
    day1 = points[W + timedelta(days=1)]
    assert (day1["interactions"], day1["conversions"], day1["activeUsers"], day1["newUsers"]) == (2, 1, 1, 1)
    assert day1["impressions"] == 0 and day1["ctr"] is None
    day8, day9 = points[W + timedelta(days=8)], points[W + timedelta(days=9)]
    assert (day8["clicks"], day8["newUsers"], day9["clicks"], day9["newUsers"]) == (1, 1, 1, 0)  # ua came back
    day15 = points[W + timedelta(days=15)]
    assert (day15["watchSeconds"], day15["activeUsers"], day15["newUsers"]) == (40.0, 2, 0)
    assert points[W + timedelta(days=16)]["watchSeconds"] == 20.0
    today = points[TODAY]
    shown = sum(len(p["items"]) for p in shop.pages)
    assert (today["impressions"], today["clicks"], today["attributed"]) == (shown, 1, 2)
    assert today["ctr"] == pytest.approx(1 / shown)
    assert sum(p["interactions"] for p in got["points"]) == 10


async def test_an_hourly_series_splits_the_day(gql, shop):
    day = W + timedelta(days=1)
    got = (await gql.data(SERIES, {"s": shop.sid, "from": iso(day), "to": iso(day + timedelta(days=1)), "g": "HOUR"},
                          key=shop.keys.admin))["analytics"]
    points = by_start(got["points"])
    assert len(points) == 24
    noon = points[day + timedelta(hours=12)]
    assert (noon["interactions"], noon["conversions"], noon["activeUsers"], noon["newUsers"]) == (2, 1, 1, 1)
    assert sum(p["interactions"] for p in got["points"]) == 2


async def test_catalogue_stats_from_the_pages_served(gql, shop):
    got = (await gql.data(CATALOGUE, {"s": shop.sid, "from": iso(W), "to": iso(NOW + timedelta(hours=1))},
                          key=shop.keys.admin))["catalogueStats"]
    shown: dict[str, int] = {}
    for page in shop.pages:
        for entry in page["items"]:
            shown[entry["i"]] = shown.get(entry["i"], 0) + 1
    active = [f"v{i}" for i in range(7)]  # v7 is INACTIVE
    reached = [i for i in active if i in shown]
    assert (got["activeItems"], got["recommendedItems"]) == (7, len(reached))
    assert got["coverage"] == pytest.approx(len(reached) / 7)
    assert (got["longTailItems"], got["longTailShare"]) == (7 - len(reached), pytest.approx((7 - len(reached)) / 7))
    values = sorted(shown.get(i, 0) for i in active)
    gini = sum((2 * j - 8) * x for j, x in enumerate(values, start=1)) / (6 * sum(values))
    assert got["gini"] == pytest.approx(gini)
    top = got["topItemsByImpressions"]
    assert {t["itemId"]: t["impressions"] for t in top} == shown
    assert [t["impressions"] for t in top] == sorted(shown.values(), reverse=True)
    clicks = {t["itemId"]: t["clicks"] for t in top}  # every CLICK on an item counts, the historic ones too
    assert sum(clicks.values()) == sum(1 for i in ("v1", "v4") if i in shown) + 1
    categories = {c["category"]: c["impressions"] for c in got["topCategoriesByImpressions"]}
    assert categories == {k: v for k, v in {
        "drama": sum(n for i, n in shown.items() if int(i[1:]) < 4),
        "comedy": sum(n for i, n in shown.items() if int(i[1:]) >= 4)}.items() if v}
    assert got["topItemsByCtr"][0]["ctr"] == max(t["ctr"] for t in top)


async def test_audience_stats_cohorts_and_events_per_user(gql, shop):
    got = (await gql.data(AUDIENCE, {"s": shop.sid, "from": iso(W), "to": iso(W + timedelta(weeks=3))},
                          key=shop.keys.admin))["audienceStats"]
    assert got["users"] == 4 and got["meanEventsPerUser"] == 2.0 and got["medianEventsPerUser"] == 2.0
    buckets = {(b["lower"], b["upper"]): b["users"] for b in got["eventsPerUser"]}
    assert (buckets[(1, 1)], buckets[(2, 2)], buckets[(3, 5)], buckets[(101, None)]) == (1, 2, 1, 0)
    cohorts = [(datetime.fromisoformat(c["week"]), c["users"], c["retained"]) for c in got["retention"]]
    assert cohorts == [(W, 2, [1.0, 0.5, 0.5]), (W + timedelta(weeks=1), 1, [1.0, 1.0]),
                       (W + timedelta(weeks=2), 1, [1.0])]
    assert got["ctrByPosition"] == [] and got["ctrBySource"] == []  # no page was served in those weeks


async def test_a_range_from_mid_week_counts_its_days_and_whole_weeks_of_retention(gql, shop):
    got = (await gql.data(AUDIENCE, {"s": shop.sid, "from": iso(W + timedelta(days=2, hours=5)),
                                     "to": iso(W + timedelta(weeks=3))}, key=shop.keys.admin))["audienceStats"]
    assert got["users"] == 3 and got["meanEventsPerUser"] == pytest.approx(5 / 3)  # ua 2, uc 2, ud 1 from W+2d on
    cohorts = [(datetime.fromisoformat(c["week"]), c["users"], c["retained"]) for c in got["retention"]]
    assert cohorts[0] == (W, 2, [1.0, 0.5, 0.5])  # the week holding `from` counts whole


async def test_ctr_by_list_position_and_recall_source(gql, shop):
    got = (await gql.data(AUDIENCE, {"s": shop.sid, "from": iso(TODAY), "to": iso(NOW + timedelta(hours=1))},
                          key=shop.keys.admin))["audienceStats"]
    longest = max(len(p["items"]) for p in shop.pages)
    expected = [{"position": k, "impressions": sum(1 for p in shop.pages if len(p["items"]) >= k),
                 "clicks": int(k == 2)} for k in range(1, longest + 1)]
    assert [{k: row[k] for k in ("position", "impressions", "clicks")} for row in got["ctrByPosition"]] == expected
    sources: dict[str, list[int]] = {}
    clicked_sources = set(shop.pages[0]["items"][1]["s"])
    for page in shop.pages:
        for entry in page["items"]:
            for source in set(entry["s"]):
                sources.setdefault(source, [0, 0])[0] += 1
    for source in clicked_sources:
        sources[source][1] += 1
    assert {s["source"]: [s["impressions"], s["clicks"]] for s in got["ctrBySource"]} == sources


async def test_another_tenants_scenario_looks_missing_and_only_admins_ask(served, gql, shop):
    other = await new_tenant(served, "analytics-other")
    window = {"s": shop.sid, "from": iso(W), "to": iso(NOW)}
    for query in (SERIES, CATALOGUE, AUDIENCE):
        body = await gql(query, {**window, "g": "DAY"} if query is SERIES else window, key=other.admin)
        assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "scenarioId"}, body
        for key in (shop.keys.public, shop.keys.gateway):
            body = await gql(query, {**window, "g": "DAY"} if query is SERIES else window, key=key)
            assert body["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    own = (await gql.data(CREATE, {"input": {"name": "own"}}, key=other.admin))["createScenario"]["id"]
    assert (await refreshed(gql, other.admin))["pendingHours"] == 0
    empty = (await gql.data(SERIES, {**window, "s": own, "g": "DAY"}, key=other.admin))["analytics"]["points"]
    assert empty and all(p["interactions"] == 0 and p["impressions"] == 0 for p in empty)
    body = await gql(REFRESH, {"s": shop.sid}, key=other.admin)
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "scenarioId"}
    assert await AnalyticsRollup.find({"tenant_id": other.tenant_id}).count() == 0  # nothing of A's was copied


@pytest.mark.parametrize(("variables", "field"), [
    ({"from": iso(NOW), "to": iso(NOW - timedelta(days=1))}, "from"),
    ({"from": iso(NOW - timedelta(days=93)), "to": iso(NOW)}, "to"),
    ({"s": "sc_unknown", "from": iso(W), "to": iso(NOW)}, "scenarioId"),
    ({"from": iso(W), "to": iso(NOW), "first": 0}, "first"),
    ({"from": iso(W), "to": iso(NOW), "first": 101}, "first"),
    ({"from": iso(W), "to": iso(NOW), "min": 0}, "minImpressions"),
])
async def test_bad_input_names_the_argument(gql, shop, variables, field):
    body = await gql(CATALOGUE, {"s": shop.sid, **variables}, key=shop.keys.admin)
    assert body["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": field}, body


async def test_history_loaded_later_moves_first_weeks(gql, shop):
    early = W + timedelta(hours=5)  # uc's new first event, in week W
    event = ev(UC, "v6", "VIEW", early, shop.sid, eventId="an-late-uc")
    assert (await gql.data(RECORD, {"events": [event]}, key=shop.keys.admin))["recordInteractions"]["accepted"] == 1
    await refreshed(gql, shop.keys.admin)
    points = by_start((await gql.data(SERIES, {"s": shop.sid, "from": iso(W), "to": iso(W + timedelta(days=9)),
                                              "g": "DAY"}, key=shop.keys.admin))["analytics"]["points"])
    assert (points[W]["newUsers"], points[W]["activeUsers"]) == (2, 2)
    assert points[W + timedelta(days=8)]["newUsers"] == 0  # uc is no longer new then
    got = (await gql.data(AUDIENCE, {"s": shop.sid, "from": iso(W), "to": iso(W + timedelta(weeks=3))},
                          key=shop.keys.admin))["audienceStats"]
    cohorts = [(c["users"], c["retained"]) for c in got["retention"]]
    assert cohorts == [(3, [1.0, 2 / 3, 2 / 3]), (1, [1.0])]  # W: ua, ub, uc; W+2: ud


async def test_erasure_removes_the_user_from_the_rollups(served, gql, shop):
    db = served.runtime.mongo[served.settings.mongo.database]
    names = [AnalyticsRollup.Settings.name, AnalyticsUser.Settings.name, AnalyticsState.Settings.name]
    holding = [doc for name in names async for doc in db[name].find({"tenant_id": shop.keys.tenant_id})
               if UB in repr(doc)]
    assert holding  # the user is in the day's and the hour's maps and has a first event
    assert (await gql.data(ERASE, {"u": UB}, key=shop.keys.admin))["deleteUserData"] > 0
    assert [doc for name in names async for doc in db[name].find({}) if UB in repr(doc)] == []
    await refreshed(gql, shop.keys.admin)
    day = W + timedelta(days=1)
    point = (await gql.data(SERIES, {"s": shop.sid, "from": iso(day), "to": iso(day + timedelta(days=1)), "g": "DAY"},
                            key=shop.keys.admin))["analytics"]["points"][0]
    assert (point["interactions"], point["activeUsers"], point["conversions"]) == (0, 0, 0)


async def test_deleting_a_scenario_deletes_its_rollups(gql, shop):
    sid = (await gql.data(CREATE, {"input": {"name": "short-lived"}}, key=shop.keys.admin))["createScenario"]["id"]
    assert (await gql.data(UPSERT, {"s": sid, "items": [{"id": "x1"}]}, key=shop.keys.admin))["upsertItems"]["upserted"]
    event = ev("an-short-user", "x1", "VIEW", NOW - timedelta(days=2), sid)
    assert (await gql.data(RECORD, {"events": [event]}, key=shop.keys.admin))["recordInteractions"]["accepted"] == 1
    await refreshed(gql, shop.keys.admin)
    where = {"tenant_id": shop.keys.tenant_id, "scenario_id": sid}
    assert await AnalyticsRollup.find(where).count() >= 2 and await AnalyticsUser.find(where).count() == 1
    assert (await gql.data(DELETE, {"id": sid}, key=shop.keys.admin))["deleteScenario"] is True
    assert await AnalyticsRollup.find(where).count() == 0 and await AnalyticsUser.find(where).count() == 0
    assert await AnalyticsRollup.find({"tenant_id": shop.keys.tenant_id, "scenario_id": shop.sid}).count() > 0


async def test_the_periodic_pass_skips_a_tenant_with_nothing_new(gql, shop, monkeypatch):
    monkeypatch.setattr(refresh, "EVENTS_OVERLAP", timedelta(0))  # else this module's events, all recent, count
    await refreshed(gql, shop.keys.admin)
    assert await refresh.quiet(tenant_id=shop.keys.tenant_id, scenario_ids=[shop.sid])
    event = ev(UA, "v1", "VIEW", NOW - timedelta(days=1), shop.sid)
    assert (await gql.data(RECORD, {"events": [event]}, key=shop.keys.admin))["recordInteractions"]["accepted"] == 1
    assert not await refresh.quiet(tenant_id=shop.keys.tenant_id, scenario_ids=[shop.sid])
    await refreshed(gql, shop.keys.admin)
    assert await refresh.quiet(tenant_id=shop.keys.tenant_id, scenario_ids=[shop.sid])


async def test_a_range_can_be_recomputed_on_demand(gql, shop):
    await AnalyticsRollup.get_pymongo_collection().delete_many({"tenant_id": shop.keys.tenant_id,
                                                                "scenario_id": shop.sid})
    done = await refreshed(gql, shop.keys.admin, s=shop.sid, **{"from": iso(W), "to": iso(W + timedelta(days=2))})
    assert done["hoursRolledUp"] >= 1
    points = by_start((await gql.data(SERIES, {"s": shop.sid, "from": iso(W), "to": iso(W + timedelta(days=2)),
                                              "g": "DAY"}, key=shop.keys.admin))["analytics"]["points"])
    assert points[W]["interactions"] == 2  # ua's and uc's late event: rebuilt from the stored events
    assert (points[W]["activeUsers"], points[W]["newUsers"]) == (2, 2)
