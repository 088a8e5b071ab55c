"""Schema migrations: numbered steps that bring stored data to the shape this version reads, each applied once.

The data carries its schema version: the `schema_migrations` collection holds one record per migration applied
(`{"_id": "0001", "number": 1, "name", "applied_at", "seconds", "changed", "recograph"}`), and the version is the
highest number recorded (0 for data older than the mechanism, or a new database). Backups carry it too, as the
manifest's `schemaVersion` (domain.backup).

- Every process that opens the stores (`serve`, `worker`, the CLI) calls `migrate` at start. With nothing pending
  that is one read. Otherwise it takes the migration lock (a lease document in the same collection, renewed while
  it is held, so that a process that dies frees it), reads the version again, and applies each pending migration
  in order, recording each as it completes: a second process starting at the same moment waits for the lock and
  then finds nothing left to do.
- Data whose version is newer than the newest migration this code knows was written by a newer recograph: start-up
  refuses it in one line (`SchemaTooNew`), and so does restoring a backup of it. Rolling an upgrade back is
  therefore the previous version plus the backup taken before the upgrade (docs/operations.md).
- A migration must be idempotent (applying it to data already in the new shape changes nothing): a restore applies
  every migration newer than its backup to the restored tenants' data, whatever the target database recorded.

Adding a migration: a module `mNNNN_<what>.py` with `async def apply(db) -> int` (documents changed) and a line in
`steps.MIGRATIONS`.
"""

from __future__ import annotations

from domain.migrations.base import Migration, SchemaTooNew
from domain.migrations.runner import COLLECTION, MigrationLock, check_known, migrate, recograph_version, schema_version
from domain.migrations.steps import MIGRATIONS, SCHEMA_VERSION

__all__ = [
    "COLLECTION",
    "MIGRATIONS",
    "SCHEMA_VERSION",
    "Migration",
    "MigrationLock",
    "SchemaTooNew",
    "check_known",
    "migrate",
    "recograph_version",
    "schema_version",
]
