"""A backup's files: BSON documents one after the other (as mongodump writes them), checksummed as they are written;
model artifact directories copied file by file; the whole packed into a tar (optionally gzipped) or unpacked."""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bson.raw_bson import RawBSONDocument

from domain.errors import BadInput

CHUNK = 1 << 20
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
PRIVATE_FILE, PRIVATE_DIR = 0o600, 0o700  # a backup holds signing secrets and key hashes: the owner's only


@dataclass(frozen=True)
class FileEntry:
    """What the manifest records of one file: its checksum, size and (BSON files) how many documents it holds."""

    sha256: str
    bytes: int
    documents: int | None = None

    def as_dict(self) -> dict[str, str | int]:
        """Return the manifest's form."""
        out: dict[str, str | int] = {"sha256": self.sha256, "bytes": self.bytes}
        if self.documents is not None:
            out["documents"] = self.documents
        return out


class BsonWriter:
    """Append raw BSON documents to a new file, hashing and counting them."""

    def __init__(self, path: Path) -> None:
        private_dirs(path.parent)
        self.path = path
        self._fh = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE), "wb")
        self._hash = hashlib.sha256()
        self.documents = 0
        self.bytes = 0

    def write(self, docs: Iterable[RawBSONDocument | bytes]) -> None:
        """Append documents (raw BSON, or RawBSONDocument)."""
        data = b"".join(doc.raw if isinstance(doc, RawBSONDocument) else doc for doc in docs)
        if not data:
            return
        self._fh.write(data)
        self._hash.update(data)
        self.bytes += len(data)
        self.documents += _count(data)

    def close(self) -> FileEntry:
        """Flush to disk and return the file's entry."""
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        return FileEntry(self._hash.hexdigest(), self.bytes, self.documents)

    def abort(self) -> None:
        """Close without keeping the file."""
        self._fh.close()
        self.path.unlink(missing_ok=True)


def _count(data: bytes) -> int:
    n, at = 0, 0
    while at < len(data):
        at += int.from_bytes(data[at : at + 4], "little")
        n += 1
    return n


def read_bson(path: Path, *, batch_bytes: int = 4 << 20) -> Iterator[list[RawBSONDocument]]:
    """Yield the documents of a BSON file in batches of about `batch_bytes`, without decoding them."""
    with path.open("rb") as fh:
        pending = b""
        while chunk := fh.read(batch_bytes):
            pending += chunk
            docs, at = [], 0
            while len(pending) - at >= 4:
                size = int.from_bytes(pending[at : at + 4], "little")
                if size < 5 or len(pending) - at < size:
                    break
                docs.append(RawBSONDocument(pending[at : at + size]))
                at += size
            pending = pending[at:]
            if docs:
                yield docs
        if pending:
            raise BadInput(f"{path.name} ends with a truncated document ({len(pending)} bytes)", field="PATH")


def checksum(path: Path) -> FileEntry:
    """Return the entry of a file on disk."""
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return FileEntry(digest.hexdigest(), size)


def copy_tree(source: Path, target: Path, root: Path) -> dict[str, FileEntry]:
    """Copy a directory's files (recursively) to target, hashing them; return their entries by path relative to
    root. Symbolic links and special files are refused: an artifact holds plain files only."""
    entries = {}
    private_dirs(target)
    for path in sorted(source.rglob("*")):
        relative = path.relative_to(source)
        if path.is_symlink() or not (path.is_file() or path.is_dir()):
            raise OSError(f"{path} is not a plain file or directory")
        if path.is_dir():
            private_dirs(target / relative)
            continue
        entries[(target / relative).relative_to(root).as_posix()] = _copy_file(path, target / relative)
    return entries


def _copy_file(source: Path, target: Path) -> FileEntry:
    digest, size = hashlib.sha256(), 0
    private_dirs(target.parent)
    with source.open("rb") as src, os.fdopen(os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE),
                                             "wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
            size += len(chunk)
    return FileEntry(digest.hexdigest(), size)


def private_dirs(path: Path) -> None:
    """Create a directory and its missing parents, each readable by the owner only."""
    missing = []
    while not path.exists():
        missing.append(path)
        path = path.parent
    for directory in reversed(missing):
        directory.mkdir(mode=PRIVATE_DIR, exist_ok=True)


def is_archive(path: Path) -> bool:
    """Return whether a backup path names a tar archive rather than a directory."""
    return path.name.endswith(TAR_SUFFIXES)


def pack(source: Path, archive: Path) -> None:
    """Write a directory's content into a new tar archive (gzipped for .tar.gz and .tgz), readable by the owner."""
    mode = "w:gz" if archive.name.endswith((".tar.gz", ".tgz")) else "w"
    fd = os.open(archive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    with os.fdopen(fd, "wb") as raw:
        options = {"compresslevel": 1} if mode == "w:gz" else {}  # BSON compresses well even at the fastest level
        with tarfile.open(fileobj=raw, mode=mode, **options) as tar:  # type: ignore[call-overload]
            for path in sorted(source.rglob("*")):
                tar.add(path, arcname=path.relative_to(source).as_posix(), recursive=False)
        raw.flush()
        os.fsync(raw.fileno())


def unpack(archive: Path, target: Path) -> None:
    """Extract a backup archive into target, refusing members that are not plain files or directories or that
    would land outside it."""
    try:
        with tarfile.open(archive, mode="r:*") as tar:
            for member in tar.getmembers():
                name = PurePosixPath(member.name)
                if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                    raise BadInput(f"{archive} holds {member.name!r}, which no backup holds", field="PATH")
            tar.extractall(target, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise BadInput(f"{archive} is not a readable backup archive ({exc})", field="PATH") from exc


def remove(path: Path) -> None:
    """Delete a file or a directory tree, whichever it is (nothing when it is gone)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
