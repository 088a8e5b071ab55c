"""Leave out of a backup the users erased while it was taken.

An erasure records its keyed hash first and then deletes the user's data (domain.privacy); a backup reading
meanwhile may have copied some of it. Erasures are the last collection copied, so every erasure recorded since a
margin before the mark is in the backup's own `erasures` file: the files already written are rewritten without
those users' data of before their erasure (events and served pages received until then, first-event records and
profiles), rollups without them in their user maps (and their hours marked for recomputation, as the erasure
itself does), and the copied model artifacts without their training history. A backup therefore never holds a user
together with the record of their erasure.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument

from domain.analytics import refresh, store
from domain.analytics.rollup import drop_users
from domain.backup.files import BsonWriter, checksum, read_bson
from domain.backup.manifest import Manifest
from domain.backup.parts import DECODE
from domain.erasure import digest
from domain.learning.forget import forget_users
from domain.learning.storage import read_users

MARGIN = timedelta(minutes=10)  # longer than an erasure takes: one recorded this long before the mark had finished
TIMED = {"interactions": "received_at", "impressions": "served_at"}  # kept: the user's data after their erasure
DROPPED = ("user_profiles", "analytics_users")


async def scrub(root: Path, manifest: Manifest, hash_keys: dict[str, str | None]) -> int:
    """Rewrite the backup's files without the users erased since MARGIN before the mark; return how many users."""
    total = 0
    for entry in manifest.tenants:
        key = hash_keys.get(entry.id)
        if not key:
            continue  # no erasure ever: the key is created by the first
        # The tenant's document was copied before its key existed when its first erasure came during the backup.
        await asyncio.to_thread(_rewrite, root, manifest, entry.id, "tenants",
                                lambda doc, k=key: {**doc, "hash_key": k})
        erased = _erased(root / f"tenants/{entry.id}/erasures.bson", manifest.created - MARGIN)
        if erased:
            total += await asyncio.to_thread(_scrub_tenant, root, manifest, entry.id, bytes.fromhex(key), erased)
    return total


def _erased(path: Path, since: datetime) -> dict[str, datetime]:
    """Return the digest and time of each erasure recorded at or after `since`."""
    found: dict[str, datetime] = {}
    for batch in read_bson(path) if path.exists() else ():
        for raw in batch:
            doc = bson.decode(raw.raw, codec_options=DECODE)
            if doc["at"] >= since:
                found[doc["digest"]] = max(doc["at"], found.get(doc["digest"], doc["at"]))
    return found


def _scrub_tenant(root: Path, manifest: Manifest, tenant_id: str, key: bytes, erased: dict[str, datetime]) -> int:
    users: set[str] = set()

    def erased_at(user_id: Any) -> datetime | None:
        return erased.get(digest(key, user_id)) if isinstance(user_id, str) else None

    def keep(collection: str, doc: dict[str, Any]) -> dict[str, Any] | None:
        at = erased_at(doc.get("user_id"))
        if at is None:
            return doc
        if collection in TIMED and doc[TIMED[collection]] > at:
            return doc  # the user came back after their erasure
        users.add(doc["user_id"])
        return None

    for collection in (*TIMED, *DROPPED):
        _rewrite(root, manifest, tenant_id, collection, lambda doc, c=collection: keep(c, doc))
    hours: set[str] = set()
    _rewrite(root, manifest, tenant_id, "analytics_rollups", lambda doc: _without_users(doc, erased_at, users, hours))
    if hours:
        _rewrite(root, manifest, tenant_id, "analytics_state", lambda doc: _dirty(doc, hours))
    users |= _forget_in_models(root, manifest, tenant_id, lambda user: erased_at(user) is not None)
    return len(users)


def _without_users(doc: dict[str, Any], erased_at: Callable[[Any], datetime | None], users: set[str],
                   hours: set[str]) -> dict[str, Any]:
    """Return a rollup part without erased users in its user map (its bucket then recomputed by the next pass, as
    an erasure asks: domain.analytics.service.erase_user)."""
    if doc.get("grain") not in store.USER_GRAINS or "m" not in doc:
        return doc
    if gone := drop_users(doc, lambda user: erased_at(user) is not None):
        users |= gone
        hours.add(refresh.entry(doc["scenario_id"], doc["start"]))
    return doc


def _dirty(doc: dict[str, Any], hours: set[str]) -> dict[str, Any]:
    """Ask the next rollup pass to recompute the hours (where an erasure asks, domain.analytics.refresh.mark)."""
    doc[refresh.REQUESTED] = sorted(set(doc.get(refresh.REQUESTED) or ()) | hours)
    return doc


def _rewrite(root: Path, manifest: Manifest, tenant_id: str, collection: str,
             change: Callable[[dict[str, Any]], dict[str, Any] | None]) -> None:
    """Rewrite one BSON file through `change` (None: leave the document out), when it changes anything."""
    name = f"tenants/{tenant_id}/{collection}.bson"
    path = root / name
    if not path.exists():
        return
    replaced = path.with_name(path.name + ".scrubbed")
    writer = BsonWriter(replaced)
    changed = False
    try:
        for batch in read_bson(path):
            kept = []
            for raw in batch:
                doc = bson.decode(raw.raw, codec_options=DECODE)
                before = bson.encode(doc)
                after = change(doc)
                if after is None:
                    changed = True
                    continue
                encoded = bson.encode(after)
                if encoded == before:
                    kept.append(raw)  # its bytes as read: decoding and encoding again may change a number's type
                else:
                    changed = True
                    kept.append(RawBSONDocument(encoded))
            writer.write(kept)
    except BaseException:
        writer.abort()
        raise
    entry = writer.close()
    if not changed:
        replaced.unlink()
        return
    replaced.replace(path)
    manifest.files[name] = entry
    next(t for t in manifest.tenants if t.id == tenant_id).counts[collection] = entry.documents or 0


def _forget_in_models(root: Path, manifest: Manifest, tenant_id: str, erased: Callable[[str], bool]) -> set[str]:
    """Rewrite the tenant's copied artifacts without the erased users; return the users found in them."""
    found: set[str] = set()
    for artifact in _artifacts(root / "models" / tenant_id):
        users = {u for u in read_users(artifact) if erased(u)}
        if users and forget_users(artifact, users.__contains__):
            found |= users
            prefix = artifact.relative_to(root).as_posix() + "/"
            for name in [n for n in manifest.files if n.startswith(prefix)]:
                del manifest.files[name]
            for path in artifact.rglob("*"):
                if path.is_file():
                    manifest.files[path.relative_to(root).as_posix()] = checksum(path)
    return found


def _artifacts(tenant_models: Path) -> Iterator[Path]:
    """Yield the artifact directories under a tenant's models (those holding a saved model's metadata)."""
    if tenant_models.is_dir():
        yield from sorted(meta.parent for meta in tenant_models.rglob("meta.json"))
