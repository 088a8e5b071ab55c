"""manifest.json: what a backup holds (tenants, files with their checksums and document counts), when it was taken,
and the format and schema versions it was written in."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from domain.backup.files import PRIVATE_FILE, FileEntry, checksum
from domain.errors import BadInput
from domain.migrations import MIGRATIONS, check_known

MANIFEST = "manifest.json"
FORMAT = 1  # the layout of a backup (files and manifest); schemaVersion is the data's shape inside it


@dataclass
class TenantEntry:
    """One tenant in a backup, with the documents of each collection."""

    id: str
    name: str
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Manifest:
    """A backup's manifest: written last, so a directory with one is complete."""

    schema_version: int
    recograph: str
    created: datetime  # the mark: every event accepted before it is in the backup
    completed: datetime | None = None
    tenants: list[TenantEntry] = field(default_factory=list)
    files: dict[str, FileEntry] = field(default_factory=dict)  # by path relative to the backup's root ("/")
    scrubbed_users: int = 0  # users erased while the backup ran, left out of it
    format: int = FORMAT

    def as_dict(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "format": self.format, "schemaVersion": self.schema_version, "recograph": self.recograph,
            "created": self.created.isoformat(), "completed": self.completed.isoformat() if self.completed else None,
            "tenants": [{"id": t.id, "name": t.name, "counts": t.counts} for t in self.tenants],
            "files": {name: entry.as_dict() for name, entry in sorted(self.files.items())},
            "scrubbedUsers": self.scrubbed_users,
        }

    def write(self, root: Path) -> None:
        """Write manifest.json into the backup's root."""
        fd = os.open(root / MANIFEST, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE_FILE)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(self.as_dict(), fh, indent=2)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())

    def tenant(self, tenant_id: str) -> TenantEntry:
        """Return a tenant of the backup, or raise BadInput naming --tenant."""
        for entry in self.tenants:
            if entry.id == tenant_id:
                return entry
        raise BadInput(f"the backup holds no tenant {tenant_id} (it holds {', '.join(t.id for t in self.tenants)})",
                       field="--tenant")


def read_manifest(root: Path) -> Manifest:
    """Read and check a backup's manifest: refused, in one line, when missing, unreadable, of another format, or
    written by a recograph whose schema is newer than this one's."""
    path = root / MANIFEST
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BadInput(f"{root} is not a recograph backup: it has no {MANIFEST}", field="PATH") from None
    except (OSError, ValueError) as exc:
        raise BadInput(f"{path} is not readable JSON ({exc})", field="PATH") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        found = raw.get("format") if isinstance(raw, dict) else None
        raise BadInput(f"{path} has backup format {found!r}; this recograph reads format {FORMAT}", field="PATH")
    try:
        manifest = _parse(raw)
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInput(f"{path} is malformed ({exc!r})", field="PATH") from None
    check_known(manifest.schema_version, MIGRATIONS,
                what=f"the backup {root.name} (written by recograph {manifest.recograph})")
    return manifest


def _parse(raw: dict[str, Any]) -> Manifest:
    files = {name: FileEntry(str(e["sha256"]), int(e["bytes"]), e.get("documents")) for name, e in raw["files"].items()}
    for name in files:
        if name.startswith("/") or ".." in name.split("/"):
            raise ValueError(f"file {name!r} outside the backup")
    return Manifest(
        schema_version=int(raw["schemaVersion"]), recograph=str(raw.get("recograph", "unknown")),
        created=datetime.fromisoformat(raw["created"]),
        completed=datetime.fromisoformat(raw["completed"]) if raw.get("completed") else None,
        tenants=[TenantEntry(str(t["id"]), str(t.get("name", "")), dict(t.get("counts") or {}))
                 for t in raw["tenants"]],
        files=files, scrubbed_users=int(raw.get("scrubbedUsers", 0)),
    )


def verify(root: Path, manifest: Manifest, *, on_file: Any = None) -> None:
    """Raise BadInput naming the first file that is missing or whose checksum or size differs from the manifest's."""
    for name, expected in manifest.files.items():
        path = root / name
        if not path.is_file():
            raise BadInput(f"the backup lacks {name}, which its manifest lists", field="PATH")
        found = checksum(path)
        if (found.sha256, found.bytes) != (expected.sha256, expected.bytes):
            raise BadInput(f"{name} in the backup is damaged: its checksum differs from the manifest's", field="PATH")
        if on_file is not None:
            on_file(found.bytes)
