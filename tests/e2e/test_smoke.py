from __future__ import annotations

CREATE = """mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id name template configVersion config } }"""


async def test_typename_needs_no_key(gql):
    assert (await gql.data("{ __typename }")) == {"__typename": "Query"}


async def test_create_scenario_and_items(gql, tenant_a):
    data = await gql.data(CREATE, {"input": {"name": "smoke", "template": "NEWS"}}, key=tenant_a.admin)
    sc = data["createScenario"]
    assert sc["template"] == "NEWS" and sc["configVersion"] == 1
    body = await gql(
        """mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted errors { index field message } } }""",
        {"s": sc["id"], "items": [{"id": "a", "title": "Alpha", "categories": ["x"]}, {"id": " "}]},
        key=tenant_a.admin,
    )
    assert body["data"]["upsertItems"]["upserted"] == 1
    assert body["data"]["upsertItems"]["errors"][0]["index"] == 1
