"""The backup format without servers: BSON files read back as written, checksums, archives that cannot write
outside their target, manifests refused in one line, every collection covered, work in flight not carried."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import UTC, datetime
from pathlib import Path

import bson
import pytest

from domain.backup import check_target, read_manifest
from domain.backup.files import BsonWriter, checksum, pack, read_bson, unpack
from domain.backup.manifest import FORMAT, Manifest, TenantEntry, verify
from domain.backup.parts import PARTS, interrupted_job, released_lease, unfinished_version
from domain.errors import BadInput
from domain.migrations import SCHEMA_VERSION, SchemaTooNew
from models.documents import DOCUMENTS

MARK = datetime(2026, 12, 1, tzinfo=UTC)


def write(path: Path, docs: list[dict]) -> None:
    writer = BsonWriter(path)
    writer.write(bson.encode(d) for d in docs)
    entry = writer.close()
    found = checksum(path)
    assert entry.documents == len(docs) and (found.sha256, found.bytes) == (entry.sha256, entry.bytes)


def test_bson_files_read_back_in_batches_as_written(tmp_path):
    docs = [{"_id": n, "text": "x" * (n % 50), "at": MARK} for n in range(2000)]
    write(tmp_path / "c.bson", docs)
    batches = list(read_bson(tmp_path / "c.bson", batch_bytes=4096))
    assert len(batches) > 1
    assert [bson.decode(raw.raw) for batch in batches for raw in batch] == [
        {**d, "at": d["at"].replace(tzinfo=None)} for d in docs]
    assert oct((tmp_path / "c.bson").stat().st_mode & 0o777) == "0o600"


def test_a_truncated_bson_file_is_refused(tmp_path):
    write(tmp_path / "c.bson", [{"_id": 1}, {"_id": 2}])
    data = (tmp_path / "c.bson").read_bytes()
    (tmp_path / "c.bson").write_bytes(data[:-3])
    with pytest.raises(BadInput, match="truncated"):
        list(read_bson(tmp_path / "c.bson"))


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz"])
def test_an_archive_unpacks_to_the_directory_it_was_packed_from(tmp_path, suffix):
    source = tmp_path / "src"
    (source / "tenants" / "t1").mkdir(parents=True)
    write(source / "tenants" / "t1" / "items.bson", [{"_id": "a"}])
    (source / "manifest.json").write_text("{}")
    pack(source, tmp_path / f"b{suffix}")
    unpack(tmp_path / f"b{suffix}", tmp_path / "out")
    assert (tmp_path / "out" / "tenants" / "t1" / "items.bson").read_bytes() == \
        (source / "tenants" / "t1" / "items.bson").read_bytes()


def test_an_archive_member_outside_the_target_is_refused(tmp_path):
    with tarfile.open(tmp_path / "evil.tar", "w") as tar:
        info = tarfile.TarInfo("../escaped")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(BadInput, match="which no backup holds"):
        unpack(tmp_path / "evil.tar", tmp_path / "out")
    assert not (tmp_path / "escaped").exists()


def test_a_backup_path_must_not_exist_and_its_folder_must(tmp_path):
    (tmp_path / "there").mkdir()
    with pytest.raises(BadInput, match="exists"):
        check_target(tmp_path / "there")
    with pytest.raises(BadInput, match="does not exist"):
        check_target(tmp_path / "missing" / "b.tar")
    check_target(tmp_path / "new.tar.gz")


def manifest_file(root: Path, **changes: object) -> Path:
    root.mkdir()
    Manifest(schema_version=SCHEMA_VERSION, recograph="0.1.0", created=MARK, tenants=[TenantEntry("t1", "a")]
             ).write(root)
    raw = json.loads((root / "manifest.json").read_text())
    (root / "manifest.json").write_text(json.dumps({**raw, **changes}))
    return root


def test_a_manifest_of_a_newer_schema_or_another_format_is_refused_in_one_line(tmp_path):
    assert read_manifest(manifest_file(tmp_path / "ok")).tenants[0].id == "t1"
    with pytest.raises(SchemaTooNew) as newer:
        read_manifest(manifest_file(tmp_path / "newer", schemaVersion=SCHEMA_VERSION + 1, recograph="9.9.9"))
    assert "recograph 9.9.9" in newer.value.message and "\n" not in newer.value.message
    with pytest.raises(BadInput, match=f"reads format {FORMAT}"):
        read_manifest(manifest_file(tmp_path / "format", format=FORMAT + 1))
    with pytest.raises(BadInput, match="not a recograph backup"):
        read_manifest(tmp_path)
    with pytest.raises(BadInput, match="malformed"):
        read_manifest(manifest_file(tmp_path / "outside", files={"../x": {"sha256": "0", "bytes": 1}}))


def test_verify_names_the_damaged_or_missing_file(tmp_path):
    write(tmp_path / "a.bson", [{"_id": 1}])
    manifest = Manifest(schema_version=1, recograph="x", created=MARK, files={"a.bson": checksum(tmp_path / "a.bson")})
    verify(tmp_path, manifest)
    (tmp_path / "a.bson").write_bytes(b"\x05\x00\x00\x00\x01")
    with pytest.raises(BadInput, match="a.bson in the backup is damaged"):
        verify(tmp_path, manifest)
    (tmp_path / "a.bson").unlink()
    with pytest.raises(BadInput, match="lacks a.bson"):
        verify(tmp_path, manifest)


def test_every_collection_is_in_a_backup_once():
    assert sorted(p.name for p in PARTS) == sorted(d.Settings.name for d in DOCUMENTS)
    assert PARTS[0].name == "tenants" and PARTS[-1].name == "erasures"


def test_work_in_flight_is_written_as_stopped():
    running = interrupted_job({"status": "RUNNING", "active": True}, MARK)
    assert running["status"] == "FAILED" and running["active"] is False and running["finished_at"] == MARK
    assert interrupted_job({"status": "SUCCEEDED"}, MARK) == {"status": "SUCCEEDED"}
    building = unfinished_version({"status": "READY", "applied_at": None, "artifact": "t/s/v3"}, MARK)
    assert building["status"] == "FAILED" and building["artifact"] is None
    served = {"status": "READY", "applied_at": MARK, "artifact": "t/s/v2"}
    assert unfinished_version(dict(served), MARK) == served
    assert released_lease({"lease_owner": "p", "lease_until": MARK}, MARK) == {"lease_owner": None,
                                                                               "lease_until": None}


async def test_time_windows_cover_all_time_once_and_cross_quiet_stretches_gently():
    from datetime import timedelta

    from domain.backup.parts import CROSS, FIRST_SPAN, time_windows
    from domain.export import EARLIEST

    end = datetime(2026, 12, 1, tzinfo=UTC)
    times = sorted([end - timedelta(seconds=s) for s in range(1, 400)]  # dense just before the end
                   + [datetime(2001, 1, 1, tzinfo=UTC) + timedelta(minutes=m) for m in range(3000)])  # years back
    asked: list[tuple[datetime, datetime]] = []

    async def fetch(lo: datetime, hi: datetime):
        asked.append((lo, hi))
        found = [{"_id": t} for t in times if lo <= t < hi]
        if found:
            yield found

    got = [doc["_id"] async for batch in time_windows(fetch, end=end, target=50) for doc in batch]
    assert sorted(got) == times  # each once
    assert asked[0] == (end - FIRST_SPAN, end) and asked[-1][0] == EARLIEST
    assert all(a[0] == b[1] for a, b in zip(asked, asked[1:]))  # contiguous, walking back
    first_old = next(n for n, (lo, hi) in enumerate(asked) if lo <= times[2999] < hi)
    crossing = asked[first_old]  # the window that met the old events after the quiet years
    crossed = end - timedelta(seconds=400) - crossing[1]
    assert crossing[1] - crossing[0] <= crossed * (CROSS - 1) * 1.5  # a tenth of the distance, not half of it


def test_the_scrub_takes_erased_users_out_of_the_rollups_user_maps_and_asks_for_their_buckets_again():
    from datetime import UTC, datetime

    from domain.analytics import refresh
    from domain.analytics.rollup import pack, unpack
    from domain.backup.scrub import _without_users

    start = datetime(2026, 12, 1, tzinfo=UTC)
    users_doc = {"scenario_id": "sc", "grain": "du", "start": start,
                 "m": pack(["alice", "bob", "carol"], [3, 1, 2], [1, 0, 1])}
    items_doc = {"scenario_id": "sc", "grain": "di", "start": start, "m": pack(["bob"], [5], [1])}
    erased_at = lambda user: start if user == "bob" else None  # noqa: E731
    users, hours = set(), set()
    assert unpack(_without_users(users_doc, erased_at, users, hours)) == [["alice", "carol"], [3, 2], [1, 1]]
    assert users == {"bob"} and hours == {refresh.entry("sc", start)}
    assert _without_users(dict(items_doc), erased_at, users, hours) == items_doc  # item ids are not user ids
