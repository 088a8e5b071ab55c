"""Keyed hashes of user ids, and the erasure records that must outlive the data they erased.

Where a user id must not be kept (a marker that outlives an erasure, a log line, a vector payload or point id that
the vector store's write-ahead log keeps), recograph keeps HMAC-SHA256(tenant hash key, user id) instead: stable,
so it can still be matched against, and, without the tenant's key, not reversible by hashing guessed ids.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from datetime import datetime

from domain.ids import new_id, utcnow
from models.documents import Erasure, Tenant

_KEYS: dict[str, bytes] = {}  # tenant -> hash key; a key never changes once created


def digest(key: bytes, user_id: str) -> str:
    """Return the keyed hash that stands for a user id (hex, 32 characters)."""
    return hmac.new(key, user_id.encode(), hashlib.sha256).hexdigest()[:32]


async def hash_key(*, tenant_id: str) -> bytes:
    """Return the tenant's hash key, creating it on first use (concurrent first uses agree on one)."""
    if (key := _KEYS.get(tenant_id)) is not None:
        return key
    col = Tenant.get_pymongo_collection()
    await col.update_one({"_id": tenant_id, "hash_key": None}, {"$set": {"hash_key": secrets.token_hex(32)}})
    doc = await col.find_one({"_id": tenant_id}, {"hash_key": 1})
    if doc is None or not doc.get("hash_key"):
        # A tenant that does not exist (yet): a key of its own for this process, never stored.
        return secrets.token_bytes(32)
    _KEYS[tenant_id] = key = bytes.fromhex(doc["hash_key"])
    return key


async def user_digest(user_id: str, *, tenant_id: str) -> str:
    """Return the keyed hash of one of the tenant's user ids."""
    return digest(await hash_key(tenant_id=tenant_id), user_id)


async def record(user_id: str, *, tenant_id: str) -> str:
    """Record that the user was erased now (as its keyed hash); return the hash."""
    value = await user_digest(user_id, tenant_id=tenant_id)
    await Erasure(id=new_id("er"), tenant_id=tenant_id, digest=value, at=utcnow()).insert()
    return value


async def erased_since(since: datetime, *, tenant_id: str) -> set[str]:
    """Return the keyed hashes of the users erased at or after `since`."""
    cursor = Erasure.get_pymongo_collection().find({"tenant_id": tenant_id, "at": {"$gte": since}}, {"digest": 1})
    return {doc["digest"] async for doc in cursor}
