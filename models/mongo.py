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


async def sorts_every_match(client: AsyncMongoClient) -> bool:
    """Return whether the server sorts every matching document before applying a limit, even where an index gives
    the order: true of the embedded server (SecantusDB), false of mongod."""
    info = await client.admin.command("buildInfo")
    return "secantusVersion" in info


async def mongo_alive(client: AsyncMongoClient) -> bool:
    """Return whether the server answers a ping (never raises)."""
    try:
        await client.admin.command("ping")
    except Exception:  # noqa: BLE001 - any failure means not ready
        return False
    return True
