"""Open MongoDB (or the embedded wire server) and bind the Beanie documents to it."""

from __future__ import annotations

from beanie import init_beanie
from pymongo import AsyncMongoClient
from pymongo.asynchronous.database import AsyncDatabase

from models.documents import DOCUMENTS


async def connect_mongo(url: str, database: str, *, timeout_ms: int = 5000) -> tuple[AsyncMongoClient, AsyncDatabase]:
    """Connect, verify the server answers, and initialise Beanie (creating indexes)."""
    client: AsyncMongoClient = AsyncMongoClient(
        url, tz_aware=True, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
    )
    await client.admin.command("ping")
    db = client[database]
    await init_beanie(database=db, document_models=DOCUMENTS)
    return client, db


async def mongo_alive(client: AsyncMongoClient) -> bool:
    """Return whether the server answers a ping (never raises)."""
    try:
        await client.admin.command("ping")
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False
    return True
