"""Backups and restores of whole tenants: a versioned snapshot taken while the service keeps serving and taking
writes, and its restore into another data dir or other servers.

A backup is a directory (or the same packed into a .tar or .tar.gz):

    manifest.json                          format, schemaVersion, recograph version, created (the mark),
                                           completed, tenants with their counts, every file's sha256 and size
    tenants/<tenant>/<collection>.bson     the tenant's documents of each collection, raw BSON one after the other
                                           (mongodump's format: exact types, read back without decoding)
    models/<tenant>/<scenario>/v<n>/...    the artifacts of the tenant's model versions, as the models dir holds
    demo-keys.json                         the demo's keys file, when the demo tenant is in the backup

What it guarantees: every event accepted before the backup started is in it (domain.backup.snapshot), and what is
derived from events, in Redis and in the vector store, is rebuilt on restore before the restore returns
(domain.backup.derived). The data's schema version travels with it, and restore applies the migrations newer than
it (domain.migrations).
"""

from __future__ import annotations

from domain.backup.manifest import FORMAT, MANIFEST, Manifest, TenantEntry, read_manifest
from domain.backup.restore import Restored, Target, restore_backup
from domain.backup.snapshot import check_target, take_backup

__all__ = [
    "FORMAT",
    "MANIFEST",
    "Manifest",
    "Restored",
    "Target",
    "TenantEntry",
    "check_target",
    "read_manifest",
    "restore_backup",
    "take_backup",
]
