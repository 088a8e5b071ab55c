"""Recommendations over GraphQL: personal lists, paging without repeats, cold start, freshness after an interaction,
similar items, federation, errors, and answers that keep coming when Redis is down."""

from __future__ import annotations

import httpx
import pytest
from beanie import init_beanie

from graph.runtime import open_runtime
from domain.recommend.service import served_depth
from models.documents import DOCUMENTS
from tests.conftest import free_port, isolated_settings, new_tenant, serve_app
from tests.e2e.test_training import RECORD, shop, train

pytestmark = pytest.mark.slow

RECS = """query($s: ID!, $u: ID!, $first: Int, $after: String, $context: JSON, $debug: Boolean) {
  recommendations(scenarioId: $s, userId: $u, first: $first, after: $after, context: $context, debug: $debug) {
    requestId nextCursor debug items { score sources item { id categories } } } }"""
UPDATE_SCENARIO = "mutation($id: ID!, $input: UpdateScenarioInput!) { updateScenario(id: $id, input: $input) { id } }"
DELETE_SCENARIO = "mutation($id: ID!) { deleteScenario(id: $id) }"
SIMILAR = """query($s: ID!, $i: ID!) { similarItems(scenarioId: $s, itemId: $i, first: 5) {
  requestId items { item { id } score sources } } }"""


@pytest.fixture(scope="module")
async def trained(served, gql):
    keys = await new_tenant(served, "recs")
    sid = await shop(gql, keys.admin, "feed")
    job = await train(gql, keys.admin, sid)
    assert job["status"] == "SUCCEEDED", job
    return keys, sid


async def recs(gql, key, sid, user, **variables) -> dict:
    return (await gql.data(RECS, {"s": sid, "u": user, **variables}, key=key))["recommendations"]


async def history(served, keys, sid, user) -> set[str]:
    profile = (await served.runtime.services.profiles.get_many([user], tenant_id=keys.tenant_id))[0]
    return {r["i"] for r in profile.recent if r["s"] == sid}


async def test_a_known_user_gets_unseen_items_with_sources(served, gql, trained):
    keys, sid = trained
    answer = await recs(gql, keys.public, sid, "u3", first=10)
    ids = [r["item"]["id"] for r in answer["items"]]
    assert 0 < len(ids) <= 10 and len(set(ids)) == len(ids)
    assert not set(ids) & await history(served, keys, sid, "u3")
    assert all(r["sources"] for r in answer["items"])  # scores need not fall monotonically: MMR reorders


async def test_after_continues_the_same_list_without_repeats(gql, trained):
    keys, sid = trained
    first = await recs(gql, keys.public, sid, "u4", first=5)
    assert first["nextCursor"]
    second = await recs(gql, keys.public, sid, "u4", first=5, after=first["nextCursor"])
    assert second["requestId"] == first["requestId"]
    one = [r["item"]["id"] for r in first["items"]]
    two = [r["item"]["id"] for r in second["items"]]
    assert len(two) == 5 and not set(one) & set(two)


async def test_after_pages_past_the_computed_list_without_repeats(served, gql, trained):
    keys, sid = trained
    page = await recs(gql, keys.public, sid, "u8", first=10)
    seen = [r["item"]["id"] for r in page["items"]]
    while page["nextCursor"]:  # past the 50 computed for a page of 10, until the 60-item shop runs out
        page = await recs(gql, keys.public, sid, "u8", first=10, after=page["nextCursor"])
        seen += [r["item"]["id"] for r in page["items"]]
    assert len(seen) == len(set(seen)) > served_depth(10)
    assert not set(seen) & await history(served, keys, sid, "u8")


async def test_a_config_change_or_deletion_shows_in_the_next_answer(gql, trained):
    keys, _ = trained
    sid = await shop(gql, keys.admin, "short-lived", users=5, items=12)
    before = await recs(gql, keys.public, sid, "u1", first=3)
    assert (await recs(gql, keys.public, sid, "u1", first=3))["requestId"] == before["requestId"]  # cached answer
    change = {"config": {"rerank": [{"name": "dedupe", "params": {"by": "id"}}]}}
    await gql.data(UPDATE_SCENARIO, {"id": sid, "input": change}, key=keys.admin)
    assert (await recs(gql, keys.public, sid, "u1", first=3))["requestId"] != before["requestId"]  # new config version
    assert (await gql.data(DELETE_SCENARIO, {"id": sid}, key=keys.admin))["deleteScenario"] is True
    gone = await gql(RECS, {"s": sid, "u": "u1", "first": 3}, key=keys.public)
    assert gone["errors"][0]["extensions"]["code"] == "NOT_FOUND"


async def test_an_unknown_user_gets_cold_start_items(gql, trained):
    keys, sid = trained
    answer = await recs(gql, keys.public, sid, "never-seen", first=8)
    assert len(answer["items"]) == 8


async def test_an_interaction_removes_the_item_from_the_next_answer(gql, trained):
    keys, sid = trained
    before = await recs(gql, keys.public, sid, "u5", first=5)
    top = before["items"][0]["item"]["id"]
    event = {"scenarioId": sid, "userId": "u5", "itemId": top, "type": "VIEW", "requestId": before["requestId"]}
    assert (await gql.data(RECORD, {"events": [event]}, key=keys.public))["recordInteractions"]["accepted"] == 1
    after = await recs(gql, keys.public, sid, "u5", first=5)
    assert top not in [r["item"]["id"] for r in after["items"]]
    assert after["requestId"] != before["requestId"]


async def test_debug_reports_stage_timings(gql, trained):
    keys, sid = trained
    answer = await recs(gql, keys.admin, sid, "u6", first=5, debug=True)
    assert isinstance(answer["debug"], dict) and answer["debug"]
    assert "timings" in str(answer["debug"]).lower() or "ms" in str(answer["debug"]).lower()


async def test_similar_items_leave_out_the_item_itself(gql, trained):
    keys, sid = trained
    answer = (await gql.data(SIMILAR, {"s": sid, "i": "v1"}, key=keys.public))["similarItems"]
    ids = [r["item"]["id"] for r in answer["items"]]
    assert ids and "v1" not in ids


async def test_user_entity_carries_recommendations(gql, trained):
    keys, sid = trained
    query = """query($r: [_Any!]!, $s: ID!) { _entities(representations: $r) {
      ... on User { id recommendations(scenarioId: $s, first: 3) { items { item { id } } } } } }"""
    data = await gql.data(query, {"r": [{"__typename": "User", "id": "u7"}], "s": sid}, key=keys.gateway)
    assert len(data["_entities"][0]["recommendations"]["items"]) == 3


async def test_errors_name_the_argument(gql, trained, tenant_b):
    keys, sid = trained
    bad_context = await gql(RECS, {"s": sid, "u": "u1", "context": [1, 2]}, key=keys.public)
    assert bad_context["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "context"}
    stale = await gql(RECS, {"s": sid, "u": "u1", "after": "bm90LWEtY3Vyc29y"}, key=keys.public)
    assert stale["errors"][0]["extensions"]["field"] == "after"
    foreign = await gql(RECS, {"s": sid, "u": "u1"}, key=tenant_b.public)
    assert foreign["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    blank = await gql(RECS, {"s": sid, "u": " "}, key=keys.public)
    assert blank["errors"][0]["extensions"] == {"code": "BAD_USER_INPUT", "field": "userId"}


async def test_answers_keep_coming_without_redis(served):
    settings = isolated_settings(port=free_port())
    runtime = await open_runtime(settings)
    try:
        async with serve_app(settings, runtime) as url, httpx.AsyncClient(base_url=url, timeout=60) as client:
            from tests.conftest import GraphQL

            gql = GraphQL(client, url)
            keys = await new_tenant(type(served)(url=url, runtime=runtime, settings=settings), "degraded")
            sid = await shop(gql, keys.admin, "feed", users=10, items=30)
            await runtime.servers.redis.stop()
            answer = await recs(gql, keys.public, sid, "u1", first=5)
            assert len(answer["items"]) == 5
    finally:
        await runtime.close()
        await init_beanie(database=served.runtime.mongo[served.settings.mongo.database], document_models=DOCUMENTS)
