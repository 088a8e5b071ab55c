"""Backup and restore as an operator runs them, on the demo: `recograph backup` beside a `serve` that keeps taking
writes, `recograph restore` into a data dir that does not exist yet (and into servers given by URL), and a `serve`
there that accepts every key issued before the backup and answers `similarItems` and `profile { interactionCount }`
exactly as before it.

The demo here is a subset of MovieLens (the ratings of its first USERS users, the movies they rated): the whole demo
takes minutes to load and train, which bench/backup.py spends instead (it restores the full demo and times it).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import bson
import httpx
import numpy as np
import pytest
from pymongo import MongoClient

from domain.backup.files import read_bson
from domain.learning.model import ScenarioModel
from domain.migrations import SCHEMA_VERSION
from models.vectors import EdgeVectorStore
from tests.conftest import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "recograph"
DEMO = Path(__file__).resolve().parents[2] / "demo" / "ml-latest-small"
FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "backup-schema0"
USERS = 40  # of the demo's 610: 5,658 ratings
SCENARIOS = "{ scenarios(first: 10) { edges { node { id name } } } }"
TRAIN = "mutation($s: ID!) { trainScenario(scenarioId: $s) { id } }"
JOB = "query($j: ID!) { job(id: $j) { status error } }"
SIMILAR = ("query($s: ID!, $i: ID!) { similarItems(scenarioId: $s, itemId: $i, first: 10) "
           "{ items { item { id } score } } }")
PROFILE = "query($u: ID!) { profile(userId: $u) { interactionCount } }"
RECORD = "mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted errors { message } } }"
RECOMMEND = ("query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 5) "
             "{ items { item { id } } } }")
ITEMS = ("1", "260", "1196", "2571")  # Toy Story, Star Wars IV and V, The Matrix: rated by several of the users
PROFILED = ("1", "4", "15", "live-1")


def env_for(data_dir: Path, port: int | None = None, **extra: str) -> dict[str, str]:
    """Return the environment of a recograph command on data_dir with embedded servers only."""
    env = {k: v for k, v in os.environ.items() if k not in {"MONGODB_URL", "REDIS_URL", "QDRANT_URL"}}
    env.update(RECOGRAPH_DATA_DIR=str(data_dir), RECOGRAPH_LOG_LEVEL="WARNING", RECOGRAPH_JOBS_CRON="false",
               RECOGRAPH_PROCESSES="1", **extra)
    if port is not None:
        env["RECOGRAPH_PORT"] = str(port)
    return env


def cli(env: dict[str, str], *args: str, timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Run a recograph command; return it (stdout and stderr as text)."""
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=timeout_s)


def one_line_error(done: subprocess.CompletedProcess) -> str:
    """Return the one line a refused command printed, failing unless it exited 1 with exactly that."""
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 1 and len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


class Serve:
    """`recograph serve` on a data dir, and GraphQL against it."""

    def __init__(self, data_dir: Path) -> None:
        self.port = free_port()
        self.env = env_for(data_dir, self.port)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(BIN), "serve"], env=self.env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        self.http = httpx.Client(timeout=60)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.proc.stderr.read() if self.proc.stderr else "serve exited"
            try:
                if self.http.get(f"{self.url}/health/ready", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError("serve did not become ready")

    def gql(self, query: str, variables: dict | None, key: str) -> dict:
        answer = self.http.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                                headers={"Authorization": f"Bearer {key}"}).json()
        assert not answer.get("errors"), answer
        return answer["data"]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.http.close()


@dataclass
class Source:
    """The demo subset served, trained and backed up, with what it answered before the backup."""

    data_dir: Path
    backup: Path
    archive: Path
    tenant_id: str
    scenario_id: str
    keys: dict[str, str]  # the demo's three keys and one created with `keys create`
    similar: dict[str, list[tuple[str, float]]]
    profiles: dict[str, int]
    accepted_before: list[str]  # event ids accepted before the backup started
    written_during: list[str] = field(default_factory=list)
    backup_s: float = 0.0


def demo_subset(target: Path) -> Path:
    """Write the ratings of the demo's first USERS users and the movies they rated into target."""
    target.mkdir(parents=True)
    with (DEMO / "ratings.csv").open() as fh, (target / "ratings.csv").open("w", newline="") as out:
        rows = [row for row in csv.reader(fh)]
        kept = [rows[0], *(r for r in rows[1:] if int(r[0]) <= USERS)]
        csv.writer(out).writerows(kept)
    movies = {r[1] for r in kept[1:]}
    for name in ("movies.csv", "links.csv", "tags.csv"):
        with (DEMO / name).open() as fh, (target / name).open("w", newline="") as out:
            rows = list(csv.reader(fh))
            column = 1 if name == "tags.csv" else 0
            csv.writer(out).writerows([rows[0], *(r for r in rows[1:] if r[column] in movies)])
    return target


def train(serve: Serve, scenario_id: str, admin: str, timeout_s: float = 600) -> None:
    job = serve.gql(TRAIN, {"s": scenario_id}, admin)["trainScenario"]["id"]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = serve.gql(JOB, {"j": job}, admin)["job"]
        if state["status"] not in ("QUEUED", "RUNNING"):
            assert state["status"] == "SUCCEEDED", state
            return
        time.sleep(1)
    raise AssertionError("training did not finish")


def answers(serve: Serve, source_scenario: str, keys: dict[str, str]) -> tuple[dict, dict]:
    similar = {item: [(r["item"]["id"], round(r["score"], 6)) for r in serve.gql(
        SIMILAR, {"s": source_scenario, "i": item}, keys["public"])["similarItems"]["items"]] for item in ITEMS}
    profiles = {user: (serve.gql(PROFILE, {"u": user}, keys["admin"])["profile"] or {}).get("interactionCount")
                for user in PROFILED}
    return similar, profiles


class Writer:
    """Record one event a time in a thread (a client that keeps writing during the backup); keep the ids accepted."""

    def __init__(self, serve: Serve, scenario_id: str, key: str) -> None:
        self.accepted: list[str] = []
        self._stop = threading.Event()
        self._serve, self._scenario, self._key = serve, scenario_id, key
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as http:
            n = 0
            while not self._stop.is_set():
                event = {"scenarioId": self._scenario, "userId": f"writer-{n % 7}", "itemId": ITEMS[n % len(ITEMS)],
                         "type": "VIEW", "eventId": f"during-{n}"}
                answer = http.post(f"{self._serve.url}/graphql", json={"query": RECORD, "variables": {"e": [event]}},
                                   headers={"Authorization": f"Bearer {self._key}"}).json()
                if (answer.get("data") or {}).get("recordInteractions", {}).get("accepted") == 1:
                    self.accepted.append(event["eventId"])
                n += 1
                time.sleep(0.02)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Iterator[Source]:
    root = tmp_path_factory.mktemp("backup")
    subset = demo_subset(root / "subset")
    data_dir = root / "source"
    serve = Serve(data_dir)
    try:
        loaded = cli(serve.env, "demo", "load", str(subset))
        assert loaded.returncode == 0, loaded.stderr
        info = json.loads((data_dir / "demo-keys.json").read_text())
        keys = dict(info["keys"])
        edges = serve.gql(SCENARIOS, None, keys["admin"])["scenarios"]["edges"]
        scenario_id = next(e["node"]["id"] for e in edges if e["node"]["name"] == "movies")
        train(serve, scenario_id, keys["admin"])
        made = cli(serve.env, "keys", "create", "--tenant", info["tenant_id"], "--scope", "admin")
        assert made.returncode == 0, made.stderr
        keys["created"] = made.stdout.split()[-1]
        live = [{"scenarioId": scenario_id, "userId": user, "itemId": item, "type": "LIKE",
                 "eventId": f"live-{user}-{item}"} for user in ("1", "live-1") for item in ITEMS[:2]]
        assert serve.gql(RECORD, {"e": live}, keys["public"])["recordInteractions"]["accepted"] == len(live)
        similar, profiles = answers(serve, scenario_id, keys)
        backup, archive = root / "backups" / "demo", root / "backups" / "demo.tar.gz"
        backup.parent.mkdir()
        with Writer(serve, scenario_id, keys["public"]) as writer:
            while len(writer.accepted) < 20:
                time.sleep(0.05)
            before = list(writer.accepted)  # each was accepted before the backups below start
            # The directory of everything and the archive of the tenant, taken at once (as two operators might).
            began = time.perf_counter()
            packing = subprocess.Popen([str(BIN), "backup", str(archive), "--tenant", info["tenant_id"]],
                                       env=serve.env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            made = cli(serve.env, "backup", str(backup))
            backup_s = time.perf_counter() - began
            assert made.returncode == 0, made.stderr
            _, packed_err = packing.communicate(timeout=600)
            assert packing.returncode == 0, packed_err
        yield Source(data_dir=data_dir, backup=backup, archive=archive, tenant_id=info["tenant_id"],
                     scenario_id=scenario_id, keys=keys, similar=similar, profiles=profiles, accepted_before=before,
                     written_during=writer.accepted, backup_s=backup_s)
    finally:
        serve.stop()


def test_backup_creates_exactly_path_with_a_versioned_checksummed_manifest(source):
    assert sorted(p.name for p in source.backup.parent.iterdir()) == ["demo", "demo.tar.gz"]  # nothing partial left
    manifest = json.loads((source.backup / "manifest.json").read_text())
    assert manifest["format"] == 1 and manifest["schemaVersion"] == SCHEMA_VERSION and manifest["recograph"]
    assert [t["id"] for t in manifest["tenants"]] == [source.tenant_id]
    counts = manifest["tenants"][0]["counts"]
    assert counts["interactions"] >= 5658 + 4 + len(source.accepted_before) and counts["api_keys"] == 4
    assert counts["model_versions"] >= 1 and counts["items"] > 100
    artifacts = [name for name in manifest["files"] if name.startswith(f"models/{source.tenant_id}/")]
    assert any(name.endswith("/meta.json") for name in artifacts)
    assert (source.backup / "demo-keys.json").exists()
    assert oct((source.backup / "manifest.json").stat().st_mode & 0o777) == "0o600"


def test_restore_serves_every_key_and_answers_as_before_the_backup(source, tmp_path):
    target = tmp_path / "restored" / "data"  # neither exists yet
    began = time.perf_counter()
    done = cli(env_for(target), "restore", str(source.backup))
    restore_s = time.perf_counter() - began
    assert done.returncode == 0, done.stderr
    assert f"restored {source.tenant_id} (demo)" in done.stderr
    assert not (target / "runtime.json").exists()  # the restore's servers stopped with it
    print(f"backup {source.backup_s:.1f} s, restore {restore_s:.1f} s (subset of {USERS} users)")

    serve = Serve(target)
    try:
        for name, key in source.keys.items():  # every key issued before the backup authenticates
            scope_query = SCENARIOS if name != "public" else RECOMMEND
            variables = None if name != "public" else {"s": source.scenario_id, "u": "1"}
            assert serve.gql(scope_query, variables, key)
        similar, profiles = answers(serve, source.scenario_id, source.keys)
        assert similar == source.similar
        assert profiles == source.profiles and profiles["live-1"] == 2
        exported = serve.http.get(f"{serve.url}/export/interactions", params={"scenarioId": source.scenario_id},
                                  headers={"Authorization": f"Bearer {source.keys['admin']}"})
        ids = {json.loads(line)["eventId"] for line in exported.text.splitlines()}
        assert set(source.accepted_before) <= ids  # every event accepted before the backup started
    finally:
        serve.stop()

    again = one_line_error(cli(env_for(target), "restore", str(source.backup)))
    assert f"already holds tenant {source.tenant_id}" in again
    asyncio.run(check_content_vectors(source, target))


async def check_content_vectors(source: Source, target: Path) -> None:
    """The restored vector store holds the champion's content space: each item embedding of its artifact."""
    versions = [bson.decode(raw.raw) for batch in read_bson(source.backup / f"tenants/{source.tenant_id}/"
                                                             "model_versions.bson") for raw in batch]
    champion = next(v for v in versions if "champion" in v.get("aliases", []))
    model = ScenarioModel.load(source.backup / "models" / champion["artifact"])
    embedded = {i: model.item_embedding(i) for i in model.catalogue.item_ids}
    embedded = {i: v for i, v in embedded.items() if v is not None}
    store = EdgeVectorStore(target / "qdrant")
    try:
        space = champion["spaces"]["content"]
        assert await store.count(space, tenant_id=source.tenant_id) == len(embedded) > 100
        some = sorted(embedded)[:5]
        stored = await store.get_vectors(space, some, tenant_id=source.tenant_id)
        for item_id in some:
            expected = np.asarray(embedded[item_id], dtype=np.float32)
            assert np.allclose(stored[item_id], expected / np.linalg.norm(expected), atol=1e-5)
    finally:
        await store.close()


async def test_restore_of_an_archive_into_servers_given_by_url(source, served, tmp_path):
    database = f"restored_{time.time_ns()}"
    env = env_for(tmp_path / "data", MONGODB_URL=served.runtime.servers.mongo_url, MONGODB_DATABASE=database,
                  REDIS_URL=served.runtime.servers.redis_url)
    done = await asyncio.to_thread(cli, env, "restore", str(source.archive))
    assert done.returncode == 0, done.stderr
    with MongoClient(served.runtime.servers.mongo_url) as client:
        db = client[database]
        try:
            assert db["tenants"].find_one({"_id": source.tenant_id})["name"] == "demo"
            assert db["interactions"].count_documents({"tenant_id": source.tenant_id}) >= 5658
            assert db["schema_migrations"].find_one({"number": SCHEMA_VERSION}) is not None
        finally:
            client.drop_database(database)
    profile = await served.runtime.cache.client.hgetall(f"t:{{{source.tenant_id}}}:pf:live-1")
    assert profile, "the restored tenant's hot state was rebuilt in that Redis"


def test_backup_refuses_an_existing_path_in_one_line(source):
    line = one_line_error(cli(env_for(source.data_dir), "backup", str(source.backup)))
    assert "exists" in line and str(source.backup) in line


def test_restore_refuses_a_newer_schema_and_a_damaged_file_in_one_line(source, tmp_path):
    newer = tmp_path / "newer"
    shutil.copytree(source.backup, newer)
    manifest = json.loads((newer / "manifest.json").read_text())
    manifest["schemaVersion"] = SCHEMA_VERSION + 1
    (newer / "manifest.json").write_text(json.dumps(manifest))
    line = one_line_error(cli(env_for(tmp_path / "a"), "restore", str(newer)))
    assert f"schema version {SCHEMA_VERSION + 1}" in line and f"knows up to {SCHEMA_VERSION}" in line

    damaged = tmp_path / "damaged"
    shutil.copytree(source.backup, damaged)
    with (damaged / f"tenants/{source.tenant_id}/items.bson").open("r+b") as fh:
        fh.seek(100)
        fh.write(b"\xff")
    line = one_line_error(cli(env_for(tmp_path / "b"), "restore", str(damaged)))
    assert "items.bson" in line and "damaged" in line
    assert not (tmp_path / "b" / "models").exists() or not any((tmp_path / "b" / "models").iterdir())


def test_a_schema_0_backup_is_migrated_once_on_restore(tmp_path):
    fixture = json.loads((FIXTURE.parent / "backup-schema0.json").read_text())
    target = tmp_path / "data"
    done = cli(env_for(target), "restore", str(FIXTURE))
    assert done.returncode == 0, done.stderr
    assert "migrations 1, 2 applied" in done.stderr
    serve = Serve(target)
    try:
        info = json.loads((target / "runtime.json").read_text())
        with MongoClient(info["mongo_url"], tz_aware=True) as client:
            db = client["recograph"]
            version = db["model_versions"].find_one({"tenant_id": fixture["tenant_id"]})
            assert version["status"] == "READY" and version["aliases"] == ["champion"]  # was the legacy "active"
            records = list(db["schema_migrations"].find({"number": 1}))
            assert len(records) == 1
            # Migration 2: the scenario's config, older than the config history, is recorded as its version.
            kept = db["scenarios"].find_one({"_id": fixture["scenario_id"]})
            history = list(db["scenario_config_versions"].find({"scenario_id": fixture["scenario_id"]}))
            assert [(v["version"], v["origin"], v["config"]) for v in history] == [
                (kept.get("config_version", 1), "RECORDED", kept["config"])]
        assert serve.gql(SCENARIOS, None, fixture["admin"])["scenarios"]["edges"]
    finally:
        serve.stop()


async def test_a_recograph_older_than_its_data_refuses_to_start_in_one_line(served, tmp_path):
    database = f"newer_{time.time_ns()}"
    with MongoClient(served.runtime.servers.mongo_url) as client:
        client[database]["schema_migrations"].insert_one({"_id": "9999", "number": 9999, "name": "from the future"})
        try:
            env = env_for(tmp_path / "data", MONGODB_URL=served.runtime.servers.mongo_url, MONGODB_DATABASE=database,
                          REDIS_URL=served.runtime.servers.redis_url)
            line = one_line_error(await asyncio.to_thread(cli, env, "tenants", "list"))
        finally:
            client.drop_database(database)
    assert "schema version 9999" in line and f"knows up to {SCHEMA_VERSION}" in line
    assert "backup taken before the upgrade" in line
