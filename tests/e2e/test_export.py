"""Exports over HTTP (issue 13, item 1): `GET /export/interactions|items|profiles` stream a tenant's data as NDJSON
with the API's field names, filtered by scenario and time; an admin key of the tenant only; bad parameters named."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from domain import export as export_module
from domain.export import ExportService
from domain.ratelimit import Limit
from domain.tenancy import Scope
from tests.conftest import Served, TenantKeys, new_tenant

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
UPSERT = """mutation($s: ID!, $items: [ItemInput!]!) {
  upsertItems(scenarioId: $s, items: $items) { upserted errors { index field message } } }"""
RECORD = """mutation($events: [InteractionInput!]!) {
  recordInteractions(events: $events) { accepted errors { index field message } } }"""
T0 = datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
BIN = Path(sys.executable).parent / "recograph"


def at(**delta: float) -> str:
    return (T0 + timedelta(**delta)).isoformat()


class Shop:
    def __init__(self, keys: TenantKeys, s1: str, s2: str, events: list[dict]) -> None:
        self.keys, self.s1, self.s2, self.events = keys, s1, s2, events

    def lines(self, scenario: str) -> list[dict]:
        """The scenario's events as export lines (InteractionInput, every field), newest first."""
        full = [{"value": None, "context": None, "requestId": None, **e}
                for e in self.events if e["scenarioId"] == scenario]
        return sorted(full, key=lambda e: e["timestamp"], reverse=True)


async def _shop(served: Served, gql, name: str, prefix: str) -> Shop:
    keys = await new_tenant(served, name)
    s1 = (await gql.data(CREATE, {"input": {"name": "feed"}}, key=keys.admin))["createScenario"]["id"]
    s2 = (await gql.data(CREATE, {"input": {"name": "shop"}}, key=keys.admin))["createScenario"]["id"]
    items1 = [{"id": f"{prefix}i{n}", "title": f"Item {n}", "categories": ["c"], "attributes": {"n": n}}
              for n in range(3)]
    for sid, items in ((s1, items1), (s2, [{"id": f"{prefix}i0"}, {"id": f"{prefix}j1", "tags": ["t"]}])):
        assert (await gql.data(UPSERT, {"s": sid, "items": items}, key=keys.admin))["upsertItems"]["errors"] == []
    events = [
        {"scenarioId": s1, "userId": f"{prefix}u1", "itemId": f"{prefix}i0", "type": "CLICK", "timestamp": at(),
         "eventId": f"{prefix}e1"},
        {"scenarioId": s1, "userId": f"{prefix}u1", "itemId": f"{prefix}i1", "type": "WATCH", "value": 30.0,
         "timestamp": at(hours=1), "context": {"page": "home"}, "requestId": "r1", "eventId": f"{prefix}e2"},
        {"scenarioId": s1, "userId": f"{prefix}u2", "itemId": f"{prefix}i2", "type": "RATING", "value": 4.5,
         "timestamp": at(days=2), "eventId": f"{prefix}e3"},
        {"scenarioId": s2, "userId": f"{prefix}u2", "itemId": f"{prefix}j1", "type": "PURCHASE",
         "timestamp": at(days=1), "eventId": f"{prefix}e4"},
    ]
    recorded = (await gql.data(RECORD, {"events": events}, key=keys.admin))["recordInteractions"]
    assert recorded == {"accepted": 4, "errors": []}
    return Shop(keys, s1, s2, events)


@pytest.fixture(scope="module")
async def shop(served, gql) -> Shop:
    return await _shop(served, gql, "export", "a-")


@pytest.fixture(scope="module")
async def other(served, gql) -> Shop:
    return await _shop(served, gql, "export-other", "b-")


@pytest.fixture
async def http(served) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=served.url, timeout=60) as client:
        yield client


async def export(http: httpx.AsyncClient, path: str, key: str | None, **params: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return await http.get(f"/export/{path}", params=params, headers=headers)


def lines(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-ndjson")
    assert response.text == "" or response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    errors = response.json()["errors"]
    assert len(errors) == 1 and errors[0]["message"]
    return errors[0]["extensions"]


async def test_export_interactions_are_interaction_inputs_newest_first(http, shop):
    got = lines(await export(http, "interactions", shop.keys.admin, scenarioId=shop.s1))
    assert got == shop.lines(shop.s1)
    assert all(datetime.fromisoformat(e["timestamp"]).utcoffset() == timedelta(0) for e in got)
    # Every scenario, one after the other by id (ids sort by creation): the first, then the second.
    assert lines(await export(http, "interactions", shop.keys.admin)) == shop.lines(shop.s1) + shop.lines(shop.s2)


async def test_export_interactions_from_inclusive_to_exclusive_in_any_offset(http, shop):
    admin = shop.keys.admin
    since = lines(await export(http, "interactions", admin, scenarioId=shop.s1, **{"from": at(hours=1)}))
    assert [e["eventId"] for e in since] == ["a-e3", "a-e2"]
    until = lines(await export(http, "interactions", admin, scenarioId=shop.s1, to=at(hours=1)))
    assert [e["eventId"] for e in until] == ["a-e1"]
    # 12:30+02:00 is 10:30 UTC: between the first two events; no offset means UTC.
    both = await export(http, "interactions", admin, **{"from": "2024-05-01T12:30:00+02:00", "to": "2024-05-02T23:00"})
    assert [e["eventId"] for e in lines(both)] == ["a-e2", "a-e4"]
    assert lines(await export(http, "interactions", admin, **{"from": at(days=3)})) == []


async def test_export_reads_through_many_small_windows(http, shop, monkeypatch):
    # A window of ~1 event and a first one of a minute: the export walks many windows and gaps, missing nothing.
    monkeypatch.setattr(export_module, "TARGET", 1)
    monkeypatch.setattr(export_module, "FIRST_SPAN", timedelta(minutes=1))
    found: list[int] = []
    real_next_span = export_module.next_span

    def next_span(span: timedelta, count: int, **kwargs) -> timedelta:
        if kwargs.get("target") == 1:  # the export's walk, not the analytics refresh's running beside it
            found.append(count)
        return real_next_span(span, count, **kwargs)

    monkeypatch.setattr(export_module, "next_span", next_span)
    got = lines(await export(http, "interactions", shop.keys.admin))
    assert got == shop.lines(shop.s1) + shop.lines(shop.s2)
    assert len(found) > 40 and sum(found) == 4  # many windows, each event read in one of them


async def test_export_items_by_id_with_the_item_fields(http, shop):
    admin = shop.keys.admin
    everything = lines(await export(http, "items", admin))
    assert [i["id"] for i in everything] == ["a-i0", "a-i1", "a-i2", "a-j1"]
    one = everything[1]
    assert set(one) == {"id", "title", "categories", "tags", "attributes", "publishedAt", "status", "scenarioIds",
                        "createdAt", "updatedAt"}
    assert one["title"] == "Item 1" and one["attributes"] == {"n": 1} and one["categories"] == ["c"]
    assert one["status"] == "ACTIVE" and one["scenarioIds"] == [shop.s1] and one["publishedAt"] is None
    assert datetime.fromisoformat(one["createdAt"]).utcoffset() == timedelta(0)
    assert sorted(everything[0]["scenarioIds"]) == sorted([shop.s1, shop.s2])  # upserted under both
    assert [i["id"] for i in lines(await export(http, "items", admin, scenarioId=shop.s2))] == ["a-i0", "a-j1"]


async def test_export_profiles_as_the_profile_query_reads_them(http, shop, gql):
    query = """query($u: ID!) { profile(userId: $u) { userId interactionCount countsByType { type count }
      recent { itemId scenarioId type timestamp } firstSeen lastSeen } }"""
    for _ in range(100):  # the consumer snapshots profiles to MongoDB about once a second
        got = {p["userId"]: p for p in lines(await export(http, "profiles", shop.keys.admin))}
        if set(got) == {"a-u1", "a-u2"}:
            break
        await asyncio.sleep(0.1)
    assert list(got) == ["a-u1", "a-u2"]
    u2 = got["a-u2"]
    assert set(u2) == {"userId", "interactionCount", "countsByType", "topCategories", "topTags", "recent", "firstSeen",
                       "lastSeen", "activeHours"}
    expected = (await gql.data(query, {"u": "a-u2"}, key=shop.keys.admin))["profile"]
    assert {k: u2[k] for k in expected} == expected
    assert u2["interactionCount"] == 2 and [r["itemId"] for r in u2["recent"]] == ["a-i2", "a-j1"]


async def test_export_counts_what_it_will_hold_for_a_progress_bar(served, shop):
    exports = ExportService(served.runtime.services.scenarios, served.runtime.services.profiles)
    tenant_id = shop.keys.tenant_id
    since = datetime.fromisoformat(at(hours=1))
    recent = await exports.interactions(tenant_id=tenant_id, scenario_id=shop.s1, start=since, end=None)
    assert await recent.count() == 2
    assert await (await exports.interactions(tenant_id=tenant_id, scenario_id=None, start=None, end=None)).count() == 4
    assert await (await exports.items(tenant_id=tenant_id, scenario_id=shop.s2)).count() == 2
    # Where counting means holding every match (the embedded server), the bar goes without a total.
    uncounted = ExportService(served.runtime.services.scenarios, served.runtime.services.profiles, counts=False)
    assert await (await uncounted.profiles(tenant_id=tenant_id)).count() is None


async def test_export_needs_an_admin_key_of_the_tenant(http, shop, other):
    for path in ("interactions", "items", "profiles"):
        assert error(await export(http, path, None), 401) == {"code": "UNAUTHENTICATED"}
        assert (await export(http, path, None)).headers["www-authenticate"] == "Bearer"
        assert error(await export(http, path, "rg_admin_" + "x" * 32), 401)["code"] == "UNAUTHENTICATED"
        assert error(await export(http, path, shop.keys.public), 403) == {"code": "FORBIDDEN"}
        assert error(await export(http, path, shop.keys.gateway), 403) == {"code": "FORBIDDEN"}
    # Without access nothing is said about the parameters.
    refused = await export(http, "interactions", shop.keys.public, **{"from": "yesterday"})
    assert error(refused, 403)["code"] == "FORBIDDEN"
    # Another tenant's export holds none of this one's data, and its scenarios are not found.
    theirs = [(await export(http, path, other.keys.admin)).text for path in ("interactions", "items", "profiles")]
    assert theirs[0] and theirs[1] and not any("a-" in text or shop.keys.tenant_id in text for text in theirs)
    for path in ("interactions", "items"):
        missing = await export(http, path, other.keys.admin, scenarioId=shop.s1)
        assert error(missing, 404) == {"code": "NOT_FOUND", "field": "scenarioId"}


@pytest.mark.parametrize(("path", "params", "field"), [
    ("interactions", {"from": "yesterday"}, "from"),
    ("interactions", {"to": "2024-13-01"}, "to"),
    ("interactions", {"from": "2024-05-02", "to": "2024-05-01"}, "to"),
    ("interactions", {"from": "2024-05-02", "to": "2024-05-02T00:00:00Z"}, "to"),
    ("interactions", {"scenarioID": "sc_x"}, "scenarioID"),
    ("interactions", {"scenarioId": " "}, "scenarioId"),
    ("items", {"from": "2024-05-01"}, "from"),
    ("profiles", {"scenarioId": "sc_x"}, "scenarioId"),
])
async def test_export_bad_parameters_are_400_naming_the_parameter(http, shop, path, params, field):
    extensions = error(await export(http, path, shop.keys.admin, **params), 400)
    assert extensions == {"code": "BAD_USER_INPUT", "field": field}


async def test_export_repeated_parameter_is_refused(http, shop):
    response = await http.get(f"/export/interactions?scenarioId={shop.s1}&scenarioId={shop.s2}",
                              headers={"Authorization": f"Bearer {shop.keys.admin}"})
    assert error(response, 400) == {"code": "BAD_USER_INPUT", "field": "scenarioId"}


async def test_export_takes_a_token_of_the_admin_rate_limit(http, served):
    keys = await new_tenant(served, f"export-limited-{uuid.uuid4().hex[:8]}")
    await served.runtime.services.rate_limits.set_override(keys.tenant_id, Scope.ADMIN, Limit(0.5, 2))
    answers = [await export(http, "items", keys.admin) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[0].headers["RateLimit-Limit"] == "2" and answers[2].headers["Retry-After"]
    assert error(answers[2], 429)["code"] == "RATE_LIMITED"


@pytest.mark.slow
async def test_cli_export_writes_the_same_ndjson_to_a_file(http, served, shop, tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in {"QDRANT_URL"}}
    env.update(MONGODB_URL=served.runtime.servers.mongo_url, REDIS_URL=served.runtime.servers.redis_url,
               MONGODB_DATABASE=served.settings.mongo.database, RECOGRAPH_DATA_DIR=str(tmp_path / "data"),
               RECOGRAPH_LOG_LEVEL="WARNING")
    out = tmp_path / "events.ndjson"
    args = [str(BIN), "export", "interactions", "--tenant", shop.keys.tenant_id, "--scenario", shop.s1,
            "--from", at(hours=1), "--output", str(out)]
    done = await asyncio.to_thread(subprocess.run, args, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "2 interactions written" in done.stderr
    expected = await export(http, "interactions", shop.keys.admin, scenarioId=shop.s1, **{"from": at(hours=1)})
    assert out.read_text() == expected.text and len(lines(expected)) == 2
    assert not (tmp_path / "events.ndjson.part").exists()
