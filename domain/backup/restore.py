"""Restore a backup into the stores a process opened: a new data dir's embedded servers, or servers given by URL.

In order, nothing written before every check passed:
1. the manifest is read (a backup of a newer schema is refused, in one line), a tenant that exists in the target is
   refused (a restore adds tenants, it never merges into or replaces one), and every file of the tenants to restore
   is checked against its checksum;
2. nothing is written when a check fails;
3. what a restore that stopped part way left of these tenants (documents, Redis keys, model files) is removed, so
   that running it again completes it;
4. the documents go in collection by collection, the tenant documents last (a tenant exists only once all of its
   data does). Into an empty collection the large ones go without their secondary indexes, which are built once
   at the end (several times faster on the embedded server);
5. model artifacts are copied into the models directory;
6. the migrations newer than the backup's schema version are applied to the data;
7. derived state is rebuilt (domain.backup.derived): Redis hot state from the events (read from the backup while
   they are written, when the backup is of this schema version), vector points from the artifacts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from bson.raw_bson import RawBSONDocument
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError
from redis import asyncio as aioredis

from domain.backup.derived import rebuild_hot_state, rebuild_vectors, replay_file
from domain.backup.files import is_archive, read_bson, unpack
from domain.backup.manifest import Manifest, TenantEntry, read_manifest, verify
from domain.backup.parts import PARTS, TENANTS, Part
from domain.backup.snapshot import EXTRA_FILE
from domain.errors import BadInput, Unavailable
from domain.migrations import SCHEMA_VERSION, migrate
from domain.realtime.keys import STREAMS
from domain.realtime.service import RealtimeService
from models.cache import tenant_key
from models.documents import AnalyticsRollup, Impression, Interaction, Item, Tenant
from models.vectors import VectorStore

Progress = Callable[[str, int, int | None], None]  # (stage, done, total or None)
# Inserted without their secondary indexes into an empty collection (built once at the end: several times faster).
BULK = (Interaction, Impression, Item, AnalyticsRollup)
UNLINK_CHUNK = 1000
log = structlog.get_logger()


@dataclass
class Target:
    """Where a restore writes: the stores a process opened, its models directory, its data dir (for the demo's
    keys file; None with nothing on disk)."""

    db: AsyncDatabase
    redis: aioredis.Redis | None
    realtime: RealtimeService | None
    vectors: VectorStore | None
    models_dir: Path
    data_dir: Path | None = None


@dataclass
class Restored:
    """What a restore did."""

    tenants: list[TenantEntry]
    documents: int = 0
    migrations: list[int] = field(default_factory=list)
    events_replayed: int = 0
    vector_points: int = 0
    seconds: dict[str, float] = field(default_factory=dict)
    schema_version: int = 0


@contextlib.contextmanager
def opened(path: Path) -> Iterator[Path]:
    """Yield the root of a backup: the directory itself, or an archive unpacked into a temporary directory."""
    if path.is_dir():
        yield path
        return
    if not path.is_file():
        raise BadInput(f"{path} does not exist", field="PATH")
    if not is_archive(path):
        raise BadInput(f"{path} is neither a backup directory nor a .tar or .tar.gz archive", field="PATH")
    root = Path(tempfile.mkdtemp(prefix="recograph-restore-"))
    try:
        unpack(path, root)
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def restore_backup(path: Path, target: Target, *, tenant_id: str | None = None,
                         progress: Progress | None = None) -> Restored:
    """Restore every tenant of a backup (or one) into the target; see the module docstring for the steps."""
    report = progress or (lambda stage, done, total: None)
    clock = _Clock()
    with opened(path) as root:
        manifest = read_manifest(root)
        tenants = [manifest.tenant(tenant_id)] if tenant_id is not None else list(manifest.tenants)
        _check_ids(tenants)
        await _refuse_existing(tenants)
        await asyncio.to_thread(_verify, root, manifest, tenants, report)
        clock.lap("verify")
        await _clear_leftovers(tenants, target)
        clock.lap("clear")
        # Data in this version's shape: its events go into Redis from the files while they go into MongoDB (items
        # and scenarios, which the replay reads, are in before them). Older data is migrated first, then replayed.
        current = manifest.schema_version == SCHEMA_VERSION
        events_in = asyncio.Event()
        replay = asyncio.create_task(_replay_files(root, target, tenants, events_in, report)) if current else None
        try:
            documents = await _insert(root, tenants, report, before_events=events_in.set)
            clock.lap("documents")
            await asyncio.to_thread(_copy_models, root, tenants, target.models_dir)
            _copy_extra(root, manifest, tenants, target.data_dir)
            applied = await migrate(target.db, since=manifest.schema_version)
            clock.lap("models")
            points = await _vectors(target, tenants, report)
            replayed = await replay if replay is not None else await _hot_state(target, tenants, report)
        finally:
            if replay is not None and not replay.done():
                replay.cancel()
                await asyncio.gather(replay, return_exceptions=True)
        clock.lap("derived")
        done = Restored(tenants=tenants, documents=documents, migrations=applied, events_replayed=replayed,
                        vector_points=points, schema_version=manifest.schema_version)
    done.seconds = clock.laps
    return done


async def _replay_files(root: Path, target: Target, tenants: Sequence[TenantEntry], events_in: asyncio.Event,
                        report: Progress) -> int:
    await events_in.wait()
    replayed = 0
    for n, tenant in enumerate(tenants):
        report("hot state", n, len(tenants))
        replayed += await replay_file(target.realtime, root / f"tenants/{tenant.id}/interactions.bson",
                                      tenant_id=tenant.id)
    report("hot state", len(tenants), len(tenants))
    return replayed


async def _hot_state(target: Target, tenants: Sequence[TenantEntry], report: Progress) -> int:
    replayed = 0
    for n, tenant in enumerate(tenants):
        report("hot state", n, len(tenants))
        replayed += await rebuild_hot_state(target.realtime, tenant.id)
    report("hot state", len(tenants), len(tenants))
    return replayed


async def _vectors(target: Target, tenants: Sequence[TenantEntry], report: Progress) -> int:
    points = 0
    for n, tenant in enumerate(tenants):
        report("vectors", n, len(tenants))
        points += await rebuild_vectors(target.vectors, target.models_dir, tenant_id=tenant.id)
    report("vectors", len(tenants), len(tenants))
    return points


class _Clock:
    def __init__(self) -> None:
        self._last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def _check_ids(tenants: Sequence[TenantEntry]) -> None:
    """Refuse tenant ids that could not have been written by recograph (they name directories and key prefixes)."""
    for tenant in tenants:
        if not tenant.id or any(ch in tenant.id for ch in "/\\{}*?[]") or tenant.id in (".", ".."):
            raise BadInput(f"the backup names a tenant {tenant.id!r}, which is no recograph tenant id", field="PATH")


def _tenant_files(manifest: Manifest, tenants: Sequence[TenantEntry]) -> Manifest:
    ids = {t.id for t in tenants}
    kept = {name: entry for name, entry in manifest.files.items()
            if name == EXTRA_FILE or (name.split("/")[0] in ("tenants", "models") and name.split("/")[1] in ids)}
    return Manifest(schema_version=manifest.schema_version, recograph=manifest.recograph, created=manifest.created,
                    tenants=list(tenants), files=kept)


def _verify(root: Path, manifest: Manifest, tenants: Sequence[TenantEntry], report: Progress) -> None:
    scoped = _tenant_files(manifest, tenants)
    total, done = sum(e.bytes for e in scoped.files.values()), 0

    def advance(size: int) -> None:
        nonlocal done
        done += size
        report("verify", done, total)

    report("verify", 0, total)
    verify(root, scoped, on_file=advance)


async def _refuse_existing(tenants: Sequence[TenantEntry]) -> None:
    ids = [t.id for t in tenants]
    found = await Tenant.get_pymongo_collection().find({"_id": {"$in": ids}}, {"name": 1}).to_list(None)
    if found:
        names = ", ".join(f"{doc['_id']} ({doc.get('name', '')})" for doc in found)
        raise BadInput(f"the target already holds tenant {names}: a restore adds tenants and never replaces one "
                       "(restore into an empty data dir, or restore another backup's tenants)", field="PATH")


async def _clear_leftovers(tenants: Sequence[TenantEntry], target: Target) -> None:
    """Remove what a restore that stopped part way left of tenants the target does not hold."""
    ids = [t.id for t in tenants]
    for part in PARTS:
        if part is not TENANTS:
            await part.document.get_pymongo_collection().delete_many({"tenant_id": {"$in": ids}})
    if target.redis is not None:
        for tenant_id in ids:
            await _unlink_tenant_keys(target.redis, tenant_id)
    for tenant_id in ids:
        await asyncio.to_thread(shutil.rmtree, target.models_dir / tenant_id, True)


async def _unlink_tenant_keys(redis: aioredis.Redis, tenant_id: str) -> None:
    pattern = "".join("\\" + ch if ch in "[]?*\\" else ch for ch in tenant_key(tenant_id, "")) + "*"
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=pattern, count=UNLINK_CHUNK):
        batch.append(key)
        if len(batch) >= UNLINK_CHUNK:
            await redis.unlink(*batch)
            batch = []
    if batch:
        await redis.unlink(*batch)
    await redis.srem(STREAMS, tenant_id)


async def _insert(root: Path, tenants: Sequence[TenantEntry], report: Progress,
                  before_events: Callable[[], None]) -> int:
    order = [p for p in PARTS if p is not TENANTS] + [TENANTS]
    total = sum(sum(t.counts.values()) for t in tenants)
    inserted = 0

    def advance(n: int) -> None:
        nonlocal inserted
        inserted += n
        report("documents", inserted, total)

    report("documents", 0, total)
    for part in order:
        if part.document is Interaction:
            before_events()
        files = [root / f"tenants/{t.id}/{part.name}.bson" for t in tenants]
        await _insert_part(part, [f for f in files if f.exists()], advance)
    return inserted


async def _insert_part(part: Part, files: Sequence[Path], advance: Callable[[int], None]) -> None:
    began, inserted = time.perf_counter(), 0
    col = part.document.get_pymongo_collection()
    indexes = list(getattr(part.document.Settings, "indexes", None) or [])
    bare = part.document in BULK and bool(indexes) and await col.find_one({}, {"_id": 1}) is None
    if bare:
        await col.drop_indexes()  # the _id index stays
    try:
        for path in files:
            reader = read_bson(path)  # a few MB at a time, read off the event loop
            while (batch := await asyncio.to_thread(next, reader, None)) is not None:
                await _insert_batch(col, part, batch)
                advance(len(batch))
                inserted += len(batch)
    finally:
        if bare:
            await col.create_indexes(indexes)
    log.info("restore.collection", collection=part.name, documents=inserted, indexes_built=bare,
             seconds=round(time.perf_counter() - began, 2))


async def _insert_batch(col: AsyncCollection, part: Part, batch: list[RawBSONDocument]) -> None:
    try:
        await col.insert_many(batch, ordered=False)
    except BulkWriteError as exc:
        first = (exc.details.get("writeErrors") or [{}])[0]
        raise Unavailable(f"the target refused documents of {part.name}: {first.get('errmsg', exc)}") from exc


def _copy_models(root: Path, tenants: Sequence[TenantEntry], models_dir: Path) -> None:
    """Copy each tenant's artifacts into the models directory (beside it first, then moved into place)."""
    for tenant in tenants:
        source = root / "models" / tenant.id
        if not source.is_dir():
            continue
        models_dir.mkdir(parents=True, exist_ok=True)
        staging = models_dir / f".{tenant.id}.restoring-{uuid.uuid4().hex[:8]}"
        try:
            shutil.copytree(source, staging)
            os.rename(staging, models_dir / tenant.id)
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def _copy_extra(root: Path, manifest: Manifest, tenants: Sequence[TenantEntry], data_dir: Path | None) -> None:
    """Put the demo's keys file into the data dir when the backup holds it and its tenant, and the dir has none."""
    source = root / EXTRA_FILE
    if data_dir is None or EXTRA_FILE not in manifest.files or not source.is_file():
        return
    try:
        tenant = json.loads(source.read_text()).get("tenant_id")
    except (OSError, ValueError, AttributeError):
        return
    target = data_dir / EXTRA_FILE
    if tenant in {t.id for t in tenants} and not target.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(source.read_bytes())
