"""Take a backup while the service keeps taking writes.

The mark is taken first. Ingest stores an event in MongoDB before it reports it accepted, so every event accepted
before the mark is in MongoDB by then, with an event time at most FUTURE_TOLERANCE after the mark, and the
interactions' windows (which reach that far, domain.backup.parts) read it; an event accepted later may be in the
backup or not. Everything derived from events is rebuilt from them on restore (domain.backup.derived). Each
collection is read in bounded, paced reads (`Pacer`), so serving's own queries keep the store most of the time.

The backup is written into a hidden sibling of PATH and moved onto PATH once complete (packed first when PATH is an
archive), so a failed backup leaves nothing, and PATH exists only complete.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

import bson
from bson.raw_bson import RawBSONDocument
from redis import asyncio as aioredis
from redis.exceptions import RedisError

from domain.backup.files import BsonWriter, FileEntry, checksum, copy_tree, is_archive, pack, private_dirs, remove
from domain.backup.manifest import Manifest, TenantEntry
from domain.backup.parts import DECODE, PARTS, TENANTS, Pacer, Part, Scope
from domain.backup.scrub import scrub
from domain.errors import BadInput, NotFound, Unavailable
from domain.ids import utcnow
from domain.migrations import recograph_version, schema_version
from models.cache import tenant_key
from models.documents import ModelVersion, Scenario, Tenant

Progress = Callable[[str, int, int | None], None]  # (stage, done, total or None)
ARTIFACT_TRIES = 3
EXTRA_FILE = "demo-keys.json"  # the demo's keys, kept beside the data by `recograph demo`


def check_target(path: Path) -> None:
    """Raise BadInput unless a backup can create exactly `path`: it must not exist, its folder must."""
    if path.exists() or path.is_symlink():
        raise BadInput(f"{path} exists: a backup writes a new directory or archive, never over one", field="PATH")
    if not path.parent.is_dir():
        raise BadInput(f"{path.parent} does not exist: create it first", field="PATH")


async def take_backup(
    path: Path, *, tenant_id: str | None, models_dir: Path | None, extra_dir: Path | None = None,
    redis: aioredis.Redis | None = None, progress: Progress | None = None, duty: float = 0.5,
) -> Manifest:
    """Write a backup of every tenant (or of one) to `path`, a directory or (.tar, .tar.gz) an archive; `redis`
    tells the tenants' item ids, which split the reads of their catalogues (without it, one read each)."""
    check_target(path)
    staging = path.with_name(f".{path.name}.partial-{uuid.uuid4().hex[:8]}")
    packed = staging.with_name(staging.name + ".tar")
    private_dirs(staging)
    try:
        snapshot = _Snapshot(staging, models_dir=models_dir, redis=redis, pacer=Pacer(duty),
                             progress=progress or _silent)
        manifest = await snapshot.write(tenant_id, extra_dir)
        if is_archive(path):
            _report(progress, "packing", 0, 1)
            await asyncio.to_thread(pack, staging, packed)
            os.link(packed, path)  # refuses to replace a file created meanwhile
            _report(progress, "packing", 1, 1)
        else:
            os.rename(staging, path)
    finally:
        remove(staging)
        remove(packed)
    return manifest


def _silent(stage: str, done: int, total: int | None) -> None:
    return None


def _report(progress: Progress | None, stage: str, done: int, total: int | None) -> None:
    if progress is not None:
        progress(stage, done, total)


class _Snapshot:
    """One backup being written into its staging directory."""

    def __init__(self, root: Path, *, models_dir: Path | None, redis: aioredis.Redis | None, pacer: Pacer,
                 progress: Progress) -> None:
        self._root = root
        self._models_dir = models_dir
        self._redis = redis
        self._pacer = pacer
        self._progress = progress
        self._done: dict[str, int] = {}

    async def write(self, tenant_id: str | None, extra_dir: Path | None) -> Manifest:
        mark = utcnow()
        tenants = await _tenants(tenant_id)
        db = Tenant.get_pymongo_collection().database
        manifest = Manifest(schema_version=await schema_version(db), recograph=recograph_version(), created=mark)
        for n, tenant in enumerate(tenants):
            entry = TenantEntry(tenant["_id"], tenant.get("name", ""))
            await self._tenant(entry, mark, manifest)
            manifest.tenants.append(entry)
            self._progress("tenants", n + 1, len(tenants))
        # Read again now: a tenant's first erasure, during the backup, creates its hash key.
        cursor = Tenant.get_pymongo_collection().find({"_id": {"$in": [t.id for t in manifest.tenants]}},
                                                      {"hash_key": 1})
        manifest.scrubbed_users = await scrub(self._root, manifest, {d["_id"]: d.get("hash_key") async for d in cursor})
        if extra_dir is not None:
            self._extra(extra_dir, manifest)
        manifest.completed = utcnow()
        manifest.write(self._root)
        return manifest

    async def _tenant(self, entry: TenantEntry, mark: Any, manifest: Manifest) -> None:
        scenarios = Scenario.get_pymongo_collection().find({"tenant_id": entry.id}, {"_id": 1})
        scope = Scope(entry.id, mark, tuple(sorted([doc["_id"] async for doc in scenarios])), self._pacer,
                      item_ids=await self._item_ids(entry.id))
        for part in PARTS:
            name = f"tenants/{entry.id}/{part.name}.bson"
            writer = BsonWriter(self._root / name)
            try:
                if part.document is ModelVersion:
                    await self._versions(part, scope, writer, manifest)
                else:
                    async for batch in part.batches(scope):
                        writer.write(batch)
                        self._advance(part.name, len(batch))
            except BaseException:
                writer.abort()
                raise
            manifest.files[name] = file = writer.close()
            entry.counts[part.name] = file.documents or 0

    async def _item_ids(self, tenant_id: str) -> tuple[str, ...]:
        """Return the item ids the cache knows of the tenant (item metadata for ingest), or none without Redis."""
        if self._redis is None:
            return ()
        try:
            return tuple([_text(k) async for k, _ in self._redis.hscan_iter(tenant_key(tenant_id, "items"),
                                                                            count=1000)])
        except (RedisError, OSError):
            return ()  # the catalogue is then read in one range

    def _advance(self, stage: str, n: int) -> None:
        self._done[stage] = self._done.get(stage, 0) + n
        self._progress(stage, self._done[stage], None)

    async def _versions(self, part: Part, scope: Scope, writer: BsonWriter, manifest: Manifest) -> None:
        """Copy the model versions with their artifacts; a version whose artifact is gone (pruned meanwhile) is
        written without one, as pruning leaves it."""
        docs = [bson.decode(doc.raw, codec_options=DECODE) async for batch in part.batches(scope) for doc in batch]
        for doc in docs:
            if doc.get("artifact"):
                copied = await self._artifact(doc)
                if copied is None:
                    doc["artifact"] = None
                else:
                    manifest.files.update(copied)
            self._advance(part.name, 1)
        writer.write(RawBSONDocument(bson.encode(doc)) for doc in docs)

    async def _artifact(self, doc: dict[str, Any]) -> dict[str, FileEntry] | None:
        relative = PurePosixPath(str(doc["artifact"]))
        if relative.is_absolute() or ".." in relative.parts:
            raise Unavailable(f"model version {doc['_id']} names an artifact outside the models directory")
        if self._models_dir is None:
            raise Unavailable("this process has no models directory to copy model artifacts from")
        source = self._models_dir / relative
        copied = await asyncio.to_thread(_copy_artifact, source, self._root / "models" / relative, self._root)
        if copied is None and doc.get("aliases"):
            raise Unavailable(f"the artifact of model version {doc['_id']} ({', '.join(doc['aliases'])}) is "
                              f"missing from {self._models_dir}: run the backup where RECOGRAPH_MODELS_DIR is the "
                              "models volume serving reads")
        return copied

    def _extra(self, extra_dir: Path, manifest: Manifest) -> None:
        """Keep the demo's keys file when its tenant is in the backup (`demo up` finds the demo tenant by it)."""
        source = extra_dir / EXTRA_FILE
        try:
            tenant = json.loads(source.read_text()).get("tenant_id")
        except (OSError, ValueError, AttributeError):
            return
        if tenant in {t.id for t in manifest.tenants}:
            target = self._root / EXTRA_FILE
            shutil.copyfile(source, target)
            os.chmod(target, 0o600)
            manifest.files[EXTRA_FILE] = checksum(target)


def _copy_artifact(source: Path, target: Path, root: Path) -> dict[str, FileEntry] | None:
    """Copy an artifact directory; None when it does not exist. Copied again when training or an erasure swapped
    it while it was read (the directory is replaced as a whole, so its inode tells)."""
    for _ in range(ARTIFACT_TRIES):
        try:
            before = source.stat().st_ino
        except FileNotFoundError:
            return None
        try:
            copied = copy_tree(source, target, root)
            if source.stat().st_ino == before:
                return copied
        except FileNotFoundError:
            pass
        shutil.rmtree(target, ignore_errors=True)
    raise Unavailable(f"the model artifact {source} kept changing while it was copied; try the backup again")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def _tenants(tenant_id: str | None) -> Sequence[dict[str, Any]]:
    """Return the tenants to back up (their documents), by id."""
    col = TENANTS.document.get_pymongo_collection()
    if tenant_id is not None:
        doc = await col.find_one({"_id": tenant_id})
        if doc is None:
            raise NotFound(f"no tenant {tenant_id}", field="--tenant")
        return [doc]
    return await col.find({}, sort=[("_id", 1)]).to_list(None)
