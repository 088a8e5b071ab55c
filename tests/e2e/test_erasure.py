"""Erasure finds everything: after deleteUserData no store and no file holds the user id.

A user with a distinctive id is written everywhere a user goes (events, profile, seen sets, served pages and their
impressions, cached answers, a trained model's history), then erased; MongoDB (every collection), Redis (every key
name and value) and every file under the models directory are scanned for the id.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from domain import erasure
from domain.learning.model import ScenarioModel
from domain.learning.service import _forget_erased
from domain.learning.train import train_scenario_model
from models.documents import Impression, Interaction, ModelVersion
from tests.conftest import new_tenant
from tests.e2e.test_training import RECORD, shop, train
from tests.unit.test_learning import config, synthetic

pytestmark = pytest.mark.slow

USER = "erase-me-7f3a91"
RECOMMEND = "query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 5) { requestId items { item { id } } } }"
ERASE = "mutation($u: ID!) { deleteUserData(userId: $u) }"


async def until(check, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.1)


@pytest.fixture(scope="module")
async def owner(served):
    return await new_tenant(served, "erasure")


@pytest.fixture(scope="module")
async def written(served, gql, owner):
    """A trained scenario whose model, stores and caches all hold USER; returns the scenario id."""
    sid = await shop(gql, owner.admin, "erasure-feed")
    start = datetime.now(UTC) - timedelta(hours=2)
    events = [{"scenarioId": sid, "userId": USER, "itemId": f"v{k}", "type": "WATCH", "value": 50.0,
               "timestamp": (start + timedelta(minutes=k)).isoformat(), "eventId": f"{USER}-ev-{k}"} for k in range(6)]
    assert (await gql.data(RECORD, {"events": events}, key=owner.admin))["recordInteractions"]["accepted"] == 6
    assert (await train(gql, owner.admin, sid))["status"] == "SUCCEEDED"
    page = (await gql.data(RECOMMEND, {"s": sid, "u": USER}, key=owner.public))["recommendations"]
    assert page["items"]

    async def impression_stored() -> bool:
        return await Impression.find_one({"tenant_id": owner.tenant_id, "user_id": USER}) is not None

    await until(impression_stored)
    return sid


async def mongo_holding(served, user_id: str) -> list[str]:
    """Return `collection: document` for every document of every collection that mentions the id."""
    db = served.runtime.mongo[served.settings.mongo.database]
    found = []
    for name in await db.list_collection_names():
        async for doc in db[name].find({}):
            if user_id in repr(doc):
                found.append(f"{name}: {repr(doc)[:200]}")
    return found


async def redis_holding(served, user_id: str) -> list[str]:
    """Return every Redis key whose name or value mentions the id."""
    client, needle, found = served.runtime.cache.client, user_id.encode(), []
    async for key in client.scan_iter(count=1000):
        kind = (await client.type(key)).decode()
        if kind == "string":
            values = [await client.get(key) or b""]
        elif kind == "hash":
            values = [b"%s=%s" % pair for pair in (await client.hgetall(key)).items()]
        elif kind == "set":
            values = list(await client.smembers(key))
        elif kind == "zset":
            values = list(await client.zrange(key, 0, -1))
        elif kind == "list":
            values = list(await client.lrange(key, 0, -1))
        else:  # stream
            values = [b"%s=%s" % pair for _, fields in await client.xrange(key) for pair in fields.items()]
        if needle in key or any(needle in v for v in values):
            found.append(key.decode())
    return found


def files_holding(root, user_id: str) -> list[str]:
    """Return the files under root whose bytes contain the id."""
    needle = user_id.encode()
    return [str(p) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def test_erasure_leaves_the_id_in_no_model_and_no_document(served, gql, owner, written):
    sid = written
    registry = served.runtime.registry
    assert (await registry.get(owner.tenant_id, sid)).model.user_history(USER)
    assert files_holding(served.runtime.models_dir, USER) and await mongo_holding(served, USER)
    assert len(await redis_holding(served, USER)) >= 5  # seen sets, profile, recent, version, answers, pages, stream

    assert (await gql.data(ERASE, {"u": USER}, key=owner.admin))["deleteUserData"] > 0

    assert await redis_holding(served, USER) == []
    assert await mongo_holding(served, USER) == []
    assert files_holding(served.runtime.models_dir, USER) == []
    active = await ModelVersion.find_one({"tenant_id": owner.tenant_id, "scenario_id": sid, "aliases": "champion"})
    assert active.revision == 1
    # serving reloaded the rewritten version: the user's training history is gone from memory too
    assert (await registry.get(owner.tenant_id, sid)).model.user_history(USER) == []
    assert await Interaction.find_one({"tenant_id": owner.tenant_id, "user_id": "u1"}) is not None  # others stay


async def test_a_training_running_during_an_erasure_drops_the_user(served, owner, tmp_path):
    model = train_scenario_model(synthetic(), config("popular", "user_cf"), scenario_id="s", version=1)
    path = tmp_path / "v1"
    model.save(path)
    before = datetime.now(UTC) - timedelta(seconds=1)
    await erasure.record("u4", tenant_id=owner.tenant_id)  # erased while the training ran
    since = datetime.now(UTC)
    await erasure.record("u5", tenant_id=owner.tenant_id)  # erased after data loading began too

    assert await _forget_erased(path, since, tenant_id=owner.tenant_id) == 1
    assert "u5" not in ScenarioModel.load(path).user_ids and "u4" in ScenarioModel.load(path).user_ids
    assert await _forget_erased(path, before, tenant_id=owner.tenant_id) == 1
    assert "u4" not in ScenarioModel.load(path).user_ids


async def test_the_erasure_record_holds_a_keyed_hash_never_the_id(served, owner):
    digest = await erasure.record("plain-user-id", tenant_id=owner.tenant_id)
    assert await mongo_holding(served, "plain-user-id") == []
    assert digest == await erasure.user_digest("plain-user-id", tenant_id=owner.tenant_id)
    other = await new_tenant(served, "erasure-other")
    assert digest != await erasure.user_digest("plain-user-id", tenant_id=other.tenant_id)
