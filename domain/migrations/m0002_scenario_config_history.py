"""2: scenarios stored before the config history get their current config recorded as a version (origin RECORDED),
so that every scenario's history holds at least the config it serves."""

from __future__ import annotations

from pymongo.asynchronous.database import AsyncDatabase

from domain.scenarios import history
from models.documents import Scenario, ScenarioConfigVersion


async def apply(db: AsyncDatabase) -> int:
    """Record each scenario's current config where its history lacks it (idempotent: recorded ones are skipped)."""
    recorded = 0
    async for raw in Scenario.get_pymongo_collection().find({}):
        scenario = Scenario.model_validate(raw)
        known = await ScenarioConfigVersion.get_pymongo_collection().find_one(
            {"_id": history.version_id(scenario.tenant_id, scenario.id, scenario.config_version)}, {"_id": 1}
        )
        if known is None:
            await history.record(scenario, previous=None, key_id=None, origin=history.RECORDED)
            recorded += 1
    return recorded
