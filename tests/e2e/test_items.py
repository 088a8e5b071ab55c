"""Items over HTTP: idempotent bulk upsert, scenarios of an item, row errors, limits, filters, pages, deletes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import new_tenant

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
UPSERT = """mutation($s: ID!, $items: [ItemInput!]!) {
  upsertItems(scenarioId: $s, items: $items) { upserted errors { index field message } } }"""
DELETE = "mutation($s: ID!, $ids: [ID!]!) { deleteItems(scenarioId: $s, ids: $ids) }"
NODE = "id title categories tags attributes publishedAt status scenarioIds createdAt updatedAt"
ITEM = f"query($id: ID!) {{ item(id: $id) {{ {NODE} }} }}"
LIST = """query($s: ID!, $f: ItemFilter, $first: Int, $after: String) {
  items(scenarioId: $s, filter: $f, first: $first, after: $after) {
    edges { cursor node { id title } } pageInfo { hasNextPage endCursor } } }"""
RECORD = "mutation($events: [InteractionInput!]!) { recordInteractions(events: $events) { accepted errors { index field } } }"


def error(body: dict) -> dict:
    assert len(body.get("errors") or []) == 1, body
    return body["errors"][0]


@pytest.fixture(scope="module")
async def admin(served):
    return (await new_tenant(served, "items")).admin


async def scenario(gql, key: str, name: str) -> str:
    return (await gql.data(CREATE, {"input": {"name": name}}, key=key))["createScenario"]["id"]


async def upsert(gql, key: str, sid: str, items: list[dict]) -> dict:
    return (await gql.data(UPSERT, {"s": sid, "items": items}, key=key))["upsertItems"]


async def ids(gql, key: str, sid: str, f: dict | None = None) -> list[str]:
    conn = (await gql.data(LIST, {"s": sid, "f": f, "first": 200}, key=key))["items"]
    assert conn["pageInfo"]["hasNextPage"] is False
    return [e["node"]["id"] for e in conn["edges"]]


async def item(gql, key: str, item_id: str) -> dict | None:
    return (await gql.data(ITEM, {"id": item_id}, key=key))["item"]


async def test_upsert_is_idempotent_and_updates_fields(gql, admin):
    sid = await scenario(gql, admin, "idempotent")
    batch = [{"id": f"i{n}", "title": f"Title {n}", "categories": ["c"], "attributes": {"n": n}} for n in range(3)]
    assert await upsert(gql, admin, sid, batch) == {"upserted": 3, "errors": []}
    first = await item(gql, admin, "i1")
    assert await upsert(gql, admin, sid, batch) == {"upserted": 3, "errors": []}
    assert await ids(gql, admin, sid) == ["i0", "i1", "i2"]
    again = await item(gql, admin, "i1")
    assert again["createdAt"] == first["createdAt"] and again["scenarioIds"] == [sid]
    changed = [{**batch[1], "title": "Changed", "categories": ["d", "d", "e"], "tags": ["t"],
                "attributes": {"durationSeconds": 30}, "publishedAt": "2024-05-01T12:00:00+02:00",
                "status": "INACTIVE"}]
    assert await upsert(gql, admin, sid, changed) == {"upserted": 1, "errors": []}
    now = await item(gql, admin, "i1")
    assert now["title"] == "Changed" and now["categories"] == ["d", "e"] and now["tags"] == ["t"]
    assert now["attributes"] == {"durationSeconds": 30} and now["status"] == "INACTIVE"
    assert datetime.fromisoformat(now["publishedAt"]) == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert now["createdAt"] == first["createdAt"] and now["updatedAt"] >= first["updatedAt"]
    assert await ids(gql, admin, sid) == ["i0", "i1", "i2"]


async def test_upsert_under_a_second_scenario_adds_it(gql, admin):
    s1 = await scenario(gql, admin, "first-home")
    s2 = await scenario(gql, admin, "second-home")
    await upsert(gql, admin, s1, [{"id": "both", "title": "One"}, {"id": "only1"}])
    await upsert(gql, admin, s2, [{"id": "both", "title": "Two"}])
    got = await item(gql, admin, "both")
    assert sorted(got["scenarioIds"]) == sorted([s1, s2]) and got["title"] == "Two"
    assert await ids(gql, admin, s1) == ["both", "only1"]
    assert await ids(gql, admin, s2) == ["both"]
    # The item is usable in both scenarios for interactions.
    events = [{"scenarioId": s, "userId": "u", "itemId": "both", "type": "VIEW"} for s in (s1, s2)]
    events.append({"scenarioId": s2, "userId": "u", "itemId": "only1", "type": "VIEW"})
    res = (await gql.data(RECORD, {"events": events}, key=admin))["recordInteractions"]
    assert res == {"accepted": 2, "errors": [{"index": 2, "field": "itemId"}]}


async def test_row_errors_name_index_and_field(gql, admin):
    sid = await scenario(gql, admin, "row-errors")
    batch = [
        {"id": "ok-1"},
        {"id": "   "},
        {"id": "bad-attr", "attributes": {"$where": 1}},
        {"id": "ok-2"},
        {"id": "nested-attr", "attributes": {"a": {"b.c": 1, "$d": 2}}},
        {"id": "ok-1"},
        {"id": "blank-category", "categories": [" "]},
        {"id": "x" * 257},
        {"id": "bad-duration", "attributes": {"durationSeconds": -5}},
        {"id": "not-object", "attributes": [1, 2]},
    ]
    res = await upsert(gql, admin, sid, batch)
    assert res["upserted"] == 2
    got = [(e["index"], e["field"]) for e in res["errors"]]
    assert [i for i, _ in got] == [1, 2, 4, 5, 6, 7, 8, 9]
    fields = dict(got)
    assert fields[1] == "id" and fields[5] == "id" and fields[7] == "id"
    assert fields[2] == "attributes.$where" and fields[4].startswith("attributes.a.")
    assert fields[6] == "categories"
    assert fields[8] == "attributes.durationSeconds" and fields[9] == "attributes"
    assert all(e["message"] for e in res["errors"])
    assert await ids(gql, admin, sid) == ["ok-1", "ok-2"]


async def test_more_than_5000_items_is_refused_whole(gql, admin):
    sid = await scenario(gql, admin, "too-many")
    batch = [{"id": f"big-{n}"} for n in range(5001)]
    body = await gql(UPSERT, {"s": sid, "items": batch}, key=admin)
    assert error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": "items"}
    assert body["data"] is None
    assert await ids(gql, admin, sid) == []
    assert await item(gql, admin, "big-0") is None


async def test_unknown_scenario_is_not_found(gql, admin):
    body = await gql(UPSERT, {"s": "sc_missing", "items": [{"id": "z"}]}, key=admin)
    assert error(body)["extensions"] == {"code": "NOT_FOUND", "field": "scenarioId"}
    body = await gql(LIST, {"s": "sc_missing"}, key=admin)
    assert error(body)["extensions"] == {"code": "NOT_FOUND", "field": "scenarioId"}
    body = await gql(DELETE, {"s": "sc_missing", "ids": ["z"]}, key=admin)
    assert error(body)["extensions"] == {"code": "NOT_FOUND", "field": "scenarioId"}
    assert await item(gql, admin, "z") is None


async def test_ids_are_returned_exactly_as_sent(gql, admin):
    sid = await scenario(gql, admin, "exact-ids")
    odd = ["Item/ä 1", "  padded  ", "a.b$c", "UPPER", "upper", "日本語", "x" * 256]
    res = await upsert(gql, admin, sid, [{"id": i, "title": i} for i in odd])
    assert res == {"upserted": len(odd), "errors": []}
    assert sorted(await ids(gql, admin, sid)) == sorted(odd)
    for i in odd:
        got = await item(gql, admin, i)
        assert got["id"] == i and got["title"] == i
    assert await item(gql, admin, "padded") is None
    assert await item(gql, admin, "Upper") is None


@pytest.fixture(scope="module")
async def catalogue(gql, admin):
    sid = await scenario(gql, admin, "filters")
    base = datetime(2024, 1, 1, tzinfo=UTC)
    items = [
        {"id": "f1", "title": "The Quick Brown Fox", "categories": ["news"], "tags": ["hot"],
         "publishedAt": (base + timedelta(days=1)).isoformat()},
        {"id": "f2", "title": "Theatre tonight", "categories": ["culture"], "tags": ["hot", "local"],
         "publishedAt": (base + timedelta(days=10)).isoformat()},
        {"id": "f3", "title": "A quick fox story", "categories": ["news", "culture"], "tags": [],
         "publishedAt": (base + timedelta(days=20)).isoformat(), "status": "INACTIVE"},
        {"id": "f4", "title": "Weather (today) [live]", "categories": ["weather"], "tags": ["local"]},
        {"id": "f5", "title": None, "categories": [], "tags": []},
    ]
    assert (await upsert(gql, admin, sid, items))["upserted"] == 5
    return sid


@pytest.mark.parametrize(
    "f,expected",
    [
        ({}, ["f1", "f2", "f3", "f4", "f5"]),
        ({"category": "news"}, ["f1", "f3"]),
        ({"category": "culture"}, ["f2", "f3"]),
        ({"category": "nothing"}, []),
        ({"tag": "hot"}, ["f1", "f2"]),
        ({"tag": "local"}, ["f2", "f4"]),
        ({"status": "INACTIVE"}, ["f3"]),
        ({"status": "ACTIVE"}, ["f1", "f2", "f4", "f5"]),
        ({"publishedAfter": "2024-01-05T00:00:00+00:00"}, ["f2", "f3"]),
        ({"publishedBefore": "2024-01-15T00:00:00Z"}, ["f1", "f2"]),
        ({"publishedAfter": "2024-01-05T00:00:00Z", "publishedBefore": "2024-01-15T00:00:00Z"}, ["f2"]),
        ({"publishedAfter": "2024-01-05T01:00:00+02:00"}, ["f2", "f3"]),
        ({"titlePrefix": "the"}, ["f1", "f2"]),
        ({"titlePrefix": "THE Q"}, ["f1"]),
        ({"titlePrefix": "quick"}, []),
        ({"titlePrefix": "weather (to"}, ["f4"]),
        ({"search": "fox"}, ["f1", "f3"]),
        ({"search": "FOX quick"}, ["f1", "f3"]),
        ({"search": "fox brown"}, ["f1"]),
        ({"search": "fox tonight"}, []),
        ({"search": "[live]"}, ["f4"]),
        ({"search": "fox", "titlePrefix": "a "}, ["f3"]),
        ({"category": "news", "status": "ACTIVE", "tag": "hot"}, ["f1"]),
    ],
)
async def test_filters(gql, admin, catalogue, f, expected):
    assert await ids(gql, admin, catalogue, f) == expected


async def test_pagination_in_id_order_without_repeats(gql, admin):
    sid = await scenario(gql, admin, "pages")
    want = sorted(f"p{n:02d}" for n in range(7))
    await upsert(gql, admin, sid, [{"id": i} for i in reversed(want)])
    got, after, pages = [], None, 0
    while True:
        conn = (await gql.data(LIST, {"s": sid, "first": 3, "after": after}, key=admin))["items"]
        pages += 1
        got += [e["node"]["id"] for e in conn["edges"]]
        assert conn["pageInfo"]["endCursor"] == conn["edges"][-1]["cursor"]
        if not conn["pageInfo"]["hasNextPage"]:
            break
        after = conn["pageInfo"]["endCursor"]
    assert got == want and pages == 3
    for variables, field in [({"first": 201}, "first"), ({"first": -1}, "first"), ({"after": "bogus"}, "after")]:
        body = await gql(LIST, {"s": sid, **variables}, key=admin)
        assert error(body)["extensions"] == {"code": "BAD_USER_INPUT", "field": field}
    assert len((await gql.data(LIST, {"s": sid, "first": 200}, key=admin))["items"]["edges"]) == 7


async def test_delete_items_removes_from_one_scenario_only(gql, admin):
    s1 = await scenario(gql, admin, "del-1")
    s2 = await scenario(gql, admin, "del-2")
    await upsert(gql, admin, s1, [{"id": "d-both"}, {"id": "d-one"}, {"id": "d-keep"}])
    await upsert(gql, admin, s2, [{"id": "d-both"}])
    removed = (await gql.data(DELETE, {"s": s1, "ids": ["d-both", "d-one", "d-missing", "d-one"]}, key=admin))
    assert removed["deleteItems"] == 2
    assert await ids(gql, admin, s1) == ["d-keep"]
    assert await ids(gql, admin, s2) == ["d-both"]
    assert (await item(gql, admin, "d-both"))["scenarioIds"] == [s2]
    assert await item(gql, admin, "d-one") is None
    # Removed from s1, it can no longer be interacted with there.
    events = [{"scenarioId": s1, "userId": "u", "itemId": "d-both", "type": "VIEW"},
              {"scenarioId": s2, "userId": "u", "itemId": "d-both", "type": "VIEW"}]
    res = (await gql.data(RECORD, {"events": events}, key=admin))["recordInteractions"]
    assert res == {"accepted": 1, "errors": [{"index": 0, "field": "itemId"}]}
    # Deleting again removes nothing.
    assert (await gql.data(DELETE, {"s": s1, "ids": ["d-both"]}, key=admin))["deleteItems"] == 0


async def test_list_query_batches_item_lookups(gql, admin, served, monkeypatch):
    """A list plus nested item lookups asks the catalogue once for all items (no N+1)."""
    sid = await scenario(gql, admin, "loader")
    names = [f"l{n}" for n in range(6)]
    await upsert(gql, admin, sid, [{"id": i} for i in names])
    events = [{"scenarioId": sid, "userId": "loader-user", "itemId": i, "type": "VIEW",
               "timestamp": (datetime.now(UTC) - timedelta(minutes=10 - n)).isoformat()}
              for n, i in enumerate(names)]
    assert (await gql.data(RECORD, {"events": events}, key=admin))["recordInteractions"]["accepted"] == 6

    catalogue = served.runtime.services.catalogue
    calls: list[list[str]] = []
    original = catalogue.get_many

    async def counting(ids, *, tenant_id):
        calls.append(list(ids))
        return await original(ids, tenant_id=tenant_id)

    monkeypatch.setattr(catalogue, "get_many", counting)
    query = """query($s: ID!, $u: ID!) {
      items(scenarioId: $s, first: 50) { edges { node { id } } }
      profile(userId: $u) { recent { itemId item { id } } } }"""
    data = await gql.data(query, {"s": sid, "u": "loader-user"}, key=admin)
    assert [e["node"]["id"] for e in data["items"]["edges"]] == names
    recent = data["profile"]["recent"]
    assert [r["itemId"] for r in recent] == list(reversed(names))
    assert [r["item"]["id"] for r in recent] == list(reversed(names))
    assert len(calls) == 1, calls
    assert sorted(calls[0]) == names

    calls.clear()
    aliases = """{ one: item(id: "l0") { id } two: item(id: "l5") { id } none: item(id: "nope") { id }
                   again: item(id: "l0") { id } }"""
    data = await gql.data(aliases, key=admin)
    assert data == {"one": {"id": "l0"}, "two": {"id": "l5"}, "none": None, "again": {"id": "l0"}}
    assert len(calls) == 1, calls
    assert sorted(calls[0]) == ["l0", "l5", "nope"]


async def test_pages_stay_exact_while_the_catalogue_changes(gql, admin, served):
    """On the embedded server, pages come from key windows over a sample of the ids read earlier: items added
    inside or past the sample, deleted ones and a sparse filter must not change what a page holds."""
    catalogue = served.runtime.services.catalogue
    assert catalogue.windowed
    sid = await scenario(gql, admin, "windows")
    want = {f"w{n:03d}": n for n in range(0, 240, 2)}
    await upsert(gql, admin, sid, [{"id": i, "categories": ["rare" if n % 10 == 0 else "common"]}
                                   for i, n in want.items()])

    async def pages(f: dict | None = None, first: int = 7) -> list[str]:
        got, after = [], None
        while True:
            conn = (await gql.data(LIST, {"s": sid, "f": f, "first": first, "after": after}, key=admin))["items"]
            got += [e["node"]["id"] for e in conn["edges"]]
            if not conn["pageInfo"]["hasNextPage"]:
                return got
            after = conn["pageInfo"]["endCursor"]

    assert await pages() == sorted(want)  # the first page reads the sample of ids
    added = {f"w{n:03d}": n for n in [*range(1, 100, 2), 250, 251, 999]}
    await upsert(gql, admin, sid, [{"id": i, "categories": ["rare" if n % 10 == 0 else "common"]}
                                   for i, n in added.items()])
    gone = [f"w{n:03d}" for n in range(100, 160)]
    await gql.data(DELETE, {"s": sid, "ids": gone}, key=admin)
    now = {**want, **added}
    for i in gone:
        now.pop(i, None)
    assert await pages() == sorted(now)
    assert await pages(first=1) == sorted(now)
    assert await pages({"category": "rare"}, first=3) == sorted(i for i, n in now.items() if n % 10 == 0)
