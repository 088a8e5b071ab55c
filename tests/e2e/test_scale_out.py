"""Scale-out on one machine: two `serve` hosts and a separate `recograph worker`, each in a network namespace of its
own, sharing one MongoDB-compatible server and one Redis by URL and no vector server (each process searches the
models' embeddings in memory).

The namespaces are made here with `ip netns` (this needs root); where that fails the hosts listen on 127.0.0.2-4
instead, and the test says so in its output. Either way the three hosts reach the shared servers only through their
addresses, as pods would. Checked: a write on one host is answered on the other within 2 s; a job whose worker was
killed while running it finishes on a worker started after; a host killed while taking events lost none it had
accepted. What cannot run here (a Qdrant server, a mongod replica set, Redis Cluster) is listed, with the contract
test that stands in for each, in docs/operations.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from domain.realtime.keys import HEARTBEAT
from models.embedded.servers import find_mongo_command, find_redis_command
from tests.conftest import free_port

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent / "recograph"
HOSTS = ("a", "b", "worker")
WITHIN_S = 2.0  # a write on one host is answered on the other within this
# The first worker's time limit for every job kind: arq keeps a job that worker started from the other workers for
# its longest job timeout (the limit + a 1 s margin) + 10 s, and that worker is killed well before the limit. The
# worker started after it keeps the default limits: starting the training process alone takes seconds when loaded.
JOB_LIMIT_S = 3
LEASE_S = JOB_LIMIT_S + 1 + 10

CREATE = "mutation($input: CreateScenarioInput!) { createScenario(input: $input) { id } }"
SCENARIO = "query($s: ID!) { scenario(id: $s) { id name } }"
UPSERT = "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, items: $items) { upserted } }"
TITLE = "query($i: ID!) { item(id: $i) { title } }"
RECORD = """mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted duplicates
  errors { index message } } }"""
RECOMMEND = """query($s: ID!, $u: ID!) { recommendations(scenarioId: $s, userId: $u, first: 50, debug: true) {
  items { item { id } sources } debug } }"""
SIMILAR = """query($s: ID!, $i: ID!) { similarItems(scenarioId: $s, itemId: $i, first: 5) {
  items { item { id } sources } } }"""
PROFILE = "query($u: ID!) { profile(userId: $u) { interactionCount } }"
TRAIN = "mutation($s: ID!) { trainScenario(scenarioId: $s) { id status } }"
JOB = "query($j: ID!) { job(id: $j) { status attempts error result } }"
HEALTH = "{ systemHealth { stores { name state detail } } }"
CATEGORIES = ("comedy", "drama", "sport", "music", "travel")
# A small pipeline whose training fits content embeddings, which serving then searches in memory.
CONFIG = {"recall": [
    {"source": "popular", "weight": 1.0, "limit": 100, "params": {}},
    {"source": "item_cf", "weight": 1.0, "limit": 100, "params": {}},
    {"source": "content", "weight": 1.0, "limit": 100, "params": {}},
]}


# --- hosts: network namespaces, or loopback addresses ------------------------------------------------------------


@dataclass
class Hosts:
    """Where each host and the shared servers listen, and how to run a command on a host."""

    server: str  # the shared MongoDB and Redis listen here
    addresses: dict[str, str]  # host -> its address
    namespaces: dict[str, str] = field(default_factory=dict)  # host -> its network namespace (none on loopback)

    def command(self, host: str, argv: list[str]) -> list[str]:
        """Return argv run on the host (inside its namespace when it has one)."""
        namespace = self.namespaces.get(host)
        return ["ip", "netns", "exec", namespace, *argv] if namespace else argv


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


def _free_subnet() -> str:
    """Return the first three octets of a 10.x.y.0/24 no interface or route here uses."""
    taken = subprocess.run(["ip", "-4", "route", "show", "table", "all"], capture_output=True, text=True).stdout
    taken += subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    for _ in range(50):
        prefix = f"10.{secrets.randbelow(54) + 200}.{secrets.randbelow(256)}"
        if f"{prefix}." not in taken:
            return prefix
    raise RuntimeError("no free 10.x.y.0/24 subnet")


def _remove_network(tag: str, namespaces: list[str]) -> list[str]:
    """Delete the namespaces (ending what still runs in them), the veth pairs and the bridge; return the namespaces
    still listed after (none unless deleting failed)."""
    for namespace in namespaces:
        found = subprocess.run(["ip", "netns", "pids", namespace], capture_output=True, text=True)
        for pid in found.stdout.split():  # only processes this test started (and their children) run there
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
        subprocess.run(["ip", "netns", "delete", namespace], capture_output=True)
    with contextlib.suppress(OSError):  # no `ip` at all: nothing was made
        for link in [f"rgv{tag}{n}" for n in range(len(HOSTS))] + [f"rgbr{tag}"]:  # a pair goes with either end
            subprocess.run(["ip", "link", "delete", link], capture_output=True)
        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.split()
        return [namespace for namespace in namespaces if namespace in listed]
    return []


def _namespaced(tag: str, made: list[str]) -> Hosts:
    """Make a bridge in this namespace and one namespace per host, joined to it by a veth pair."""
    subnet = _free_subnet()
    bridge = f"rgbr{tag}"
    _ip("link", "add", bridge, "type", "bridge")
    _ip("addr", "add", f"{subnet}.1/24", "dev", bridge)
    _ip("link", "set", bridge, "up")
    hosts = Hosts(server=f"{subnet}.1", addresses={})
    for n, host in enumerate(HOSTS):
        namespace, outer, inner = f"rg{tag}-{host}", f"rgv{tag}{n}", f"rgp{tag}{n}"
        _ip("netns", "add", namespace)
        made.append(namespace)
        _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
        _ip("link", "set", outer, "master", bridge)
        _ip("link", "set", outer, "up")
        _ip("link", "set", inner, "netns", namespace)
        _ip("-n", namespace, "addr", "add", f"{subnet}.{n + 2}/24", "dev", inner)
        _ip("-n", namespace, "link", "set", inner, "up")
        _ip("-n", namespace, "link", "set", "lo", "up")
        hosts.addresses[host], hosts.namespaces[host] = f"{subnet}.{n + 2}", namespace
    return hosts


@contextlib.contextmanager
def separate_hosts() -> Iterator[Hosts]:
    """Yield the hosts in network namespaces of their own, or on 127.0.0.2-4 where namespaces cannot be made (saying
    so); remove the namespaces, veth pairs and bridge after, whatever happened."""
    tag, made = f"{os.getpid() % 100000:05d}", []
    try:
        hosts: Hosts | None = _namespaced(tag, made)
    except (OSError, subprocess.SubprocessError) as exc:
        _remove_network(tag, made)
        why = exc.stderr.strip() if isinstance(exc, subprocess.CalledProcessError) and exc.stderr else str(exc)
        hosts = None
    if hosts is None:
        note = f"network namespaces unavailable ({why}): the hosts listen on 127.0.0.2-4 instead"
        print(f"\nscale-out: {note}")
        warnings.warn(note, stacklevel=1)  # shown in the summary even when output is captured
        yield Hosts(server="127.0.0.1", addresses={host: f"127.0.0.{n + 2}" for n, host in enumerate(HOSTS)})
        return
    print(f"\nscale-out: hosts in network namespaces {', '.join(made)}; shared servers on {hosts.server}")
    try:
        yield hosts
    finally:
        left = _remove_network(tag, made)
        assert not left, f"network namespaces {left} could not be deleted"


# --- processes ---------------------------------------------------------------------------------------------------


class Fleet:
    """The processes of the test, each in a process group of its own (killing one kills what it started)."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self.procs: dict[str, subprocess.Popen] = {}
        self.files: dict[str, Path] = {}  # name -> its log

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None, log: str | None = None) -> None:
        """Start a process under a name (its output in `<log or name>.log`)."""
        self.files[name] = self.logs / f"{log or name}.log"
        with open(self.files[name], "ab") as out:
            self.procs[name] = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                                stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, name: str) -> None:
        """SIGKILL the process and everything in its group, as a host that dies."""
        proc = self.procs.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)

    def log(self, name: str) -> str:
        """Return the output of the process last started under the name."""
        return self.files[name].read_text(errors="replace")

    def alive(self, name: str) -> None:
        """Fail with the process's log when it exited."""
        proc = self.procs[name]
        if proc.poll() is not None:
            pytest.fail(f"{name} exited with {proc.returncode}:\n{self.log(name)[-4000:]}")

    def stop_all(self, gently: tuple[str, ...] = ()) -> None:
        """SIGKILL every process group but those named in `gently`, then SIGTERM those (SIGKILL after 10 s)."""
        for name in [name for name in self.procs if name not in gently]:
            self.kill(name)
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        for name, proc in list(self.procs.items()):
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill(name)
        self.procs.clear()


def _port_open(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((host, port)) == 0


def _wait(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.05,
          alive: Callable[[], None] | None = None) -> Any:
    """Return check()'s first truthy value; fail after timeout_s."""
    deadline = time.monotonic() + timeout_s
    while True:
        if alive is not None:
            alive()
        try:
            if found := check():
                return found
        except (httpx.HTTPError, redis.RedisError, OSError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not within {timeout_s} s")
        time.sleep(every_s)


@dataclass
class Cluster:
    """The hosts, the processes on them, and what the recograph processes share."""

    hosts: Hosts
    fleet: Fleet
    urls: dict[str, str]  # serve host -> its base URL
    env: dict[str, str]  # what every recograph process shares (the servers' URLs, the models volume)
    data: Path

    def start_serve(self, host: str, log: str | None = None) -> None:
        """Start `recograph serve` (one process, no worker) on the host's address."""
        env = {**self.env, "RECOGRAPH_HOST": self.hosts.addresses[host],
               "RECOGRAPH_PORT": self.urls[host].rsplit(":", 1)[1], "RECOGRAPH_DATA_DIR": str(self.data / host)}
        self.fleet.start(host, self.hosts.command(host, [str(BIN), "serve"]), env, log=log)

    def start_worker(self, name: str, *, short_limits: bool) -> None:
        """Start `recograph worker` on the worker host, without schedules (and with JOB_LIMIT_S limits if asked)."""
        env = {**self.env, "RECOGRAPH_DATA_DIR": str(self.data / name), "RECOGRAPH_JOBS_CRON": "false"}
        if short_limits:
            limits = {f"RECOGRAPH_JOBS_{kind}_TIME_LIMIT_S": str(JOB_LIMIT_S)
                      for kind in ("SIMILARITY", "PROFILES", "CANDIDATES", "CLEANUP")}
            env.update(limits, RECOGRAPH_TRAIN_TIME_LIMIT_S=str(JOB_LIMIT_S), RECOGRAPH_JOBS_TIMEOUT_MARGIN_S="1",
                       RECOGRAPH_JOBS_ITEM_VECTORS_TIMEOUT_S=str(JOB_LIMIT_S))
        self.fleet.start(name, self.hosts.command("worker", [str(BIN), "worker"]), env)

    def consuming(self) -> None:
        """Wait until the worker's event consumer runs (it renews its heartbeat in Redis)."""
        with redis.Redis.from_url(self.env["REDIS_URL"]) as client:
            _wait("the worker's consumer running", lambda: client.exists(HEARTBEAT), 60, 0.1,
                  alive=lambda: self.fleet.alive("worker"))

    def ready(self, host: str) -> None:
        """Wait until the host answers /health/ready."""
        url = self.urls[host]
        _wait(f"{host} ready", lambda: httpx.get(f"{url}/health/ready", timeout=1).status_code == 200, 60, 0.1,
              alive=lambda: self.fleet.alive(host))


def _shared_servers(fleet: Fleet, address: str, data: Path) -> dict[str, str]:
    """Start the MongoDB-compatible server and Redis on the address; return their URLs once they answer."""
    mongo_port, redis_port = free_port(), free_port()
    (data / "mongo").mkdir(parents=True)
    fleet.start("mongo", [find_mongo_command(), "--host", address, "--port", str(mongo_port),
                          "--storage-path", str(data / "mongo")])
    fleet.start("redis", [find_redis_command(), "--port", str(redis_port), "--bind", address, "--daemonize", "no",
                          "--dir", str(data), "--save", "", "--appendonly", "no"])
    for name, port in (("mongo", mongo_port), ("redis", redis_port)):
        _wait(f"{name} listening", lambda port=port: _port_open(address, port), 30,
              alive=lambda name=name: fleet.alive(name))
    return {"MONGODB_URL": f"mongodb://{address}:{mongo_port}/", "REDIS_URL": f"redis://{address}:{redis_port}/0"}


@pytest.fixture
def cluster(tmp_path) -> Iterator[Cluster]:
    """Two serve hosts and a worker over shared servers, no vector server; the tenant is made by the CLI."""
    fleet = Fleet(tmp_path)
    with separate_hosts() as hosts:
        try:
            urls = _shared_servers(fleet, hosts.server, tmp_path / "servers")
            env = {k: v for k, v in os.environ.items() if k not in {"MONGODB_URL", "REDIS_URL", "QDRANT_URL"}}
            env.update(urls, MONGODB_DATABASE="scaleout", RECOGRAPH_MODELS_DIR=str(tmp_path / "models"),
                       RECOGRAPH_PROCESSES="1", RECOGRAPH_RUN_WORKER="false", RECOGRAPH_TRACING="false",
                       RECOGRAPH_LOG_LEVEL="INFO")
            port = free_port()
            serving = {host: f"http://{hosts.addresses[host]}:{port}" for host in ("a", "b")}
            built = Cluster(hosts, fleet, serving, env, tmp_path)
            for host in serving:
                built.start_serve(host)
            built.start_worker("worker", short_limits=True)
            yield built
        finally:
            fleet.stop_all(gently=("mongo", "redis"))


def gql(url: str, key: str, query: str, variables: dict | None = None, timeout: float = 10) -> dict:
    """Return the data of a GraphQL operation on the host at url, failing on any error."""
    body = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}},
                      headers={"Authorization": f"Bearer {key}"}, timeout=timeout).json()
    assert not body.get("errors"), body
    return body["data"]


def _interactions(url: str, key: str, user: str) -> int:
    """Return the user's interaction count in their profile (0 before the consumer made one)."""
    return (gql(url, key, PROFILE, {"u": user})["profile"] or {}).get("interactionCount", 0)


def _latency(check: Callable[[], bool], what: str) -> float:
    """Return how long until check() holds, failing past WITHIN_S."""
    began = time.monotonic()
    _wait(what, check, WITHIN_S, every_s=0.01)
    return time.monotonic() - began


# --- the test ----------------------------------------------------------------------------------------------------


def test_two_hosts_and_a_worker_share_servers_without_a_vector_server(cluster):
    began = time.monotonic()
    made = subprocess.run([str(BIN), "tenants", "create", "scale", "--json"], env=cluster.env, capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)["keys"]["admin"]
    a, b = cluster.urls["a"], cluster.urls["b"]
    for host in ("a", "b"):
        cluster.ready(host)
    cluster.consuming()
    started = time.monotonic() - began
    for name in ("a", "b", "worker"):  # no process opened a vector store (and the worker opened its clients once)
        assert cluster.fleet.log(name).count('"vectors.in_memory"') == 1, cluster.fleet.log(name)[-3000:]
    for url in (a, b):
        stores = {s["name"]: s for s in gql(url, key, HEALTH)["systemHealth"]["stores"]}
        assert "in memory" in stores["vectors"]["detail"] and stores["redis"]["state"] == "ok", stores

    sid, latencies = written_on_a_answered_on_b(a, b, key)
    # The killed worker's job waits out arq's lease on it; a host is killed (and started again) meanwhile.
    job_id, killed_at = kill_the_worker_running_a_training(cluster, b, key, sid)
    lost = killed_host_loses_no_accepted_event(cluster, b, key, sid)
    restart = killed_workers_job_finishes_on_a_restarted_one(cluster, key, sid, job_id, killed_at)
    print(f"\nscale-out: started in {started:.1f} s; write on A answered on B: "
          + ", ".join(f"{what} {seconds * 1000:.0f} ms" for what, seconds in latencies.items())
          + f"; {restart}; {lost}; {time.monotonic() - began:.1f} s in all")


def written_on_a_answered_on_b(a: str, b: str, key: str) -> tuple[str, dict[str, float]]:
    """Write through host A; return the scenario and how soon host B answered with each write."""
    found: dict[str, float] = {}
    scenario = {"name": "feed", "template": "CUSTOM", "config": CONFIG}
    sid = gql(a, key, CREATE, {"input": scenario})["createScenario"]["id"]
    found["scenario"] = _latency(lambda: (gql(b, key, SCENARIO, {"s": sid})["scenario"] or {}).get("id") == sid,
                                 "a scenario created on A read on B")
    items = [{"id": f"i{n}", "title": f"Clip {n} about {CATEGORIES[n % 5]}", "categories": [CATEGORIES[n % 5]],
              "tags": [f"t{n % 7}"]} for n in range(30)]
    assert gql(a, key, UPSERT, {"s": sid, "items": items})["upsertItems"]["upserted"] == 30
    found["items"] = _latency(lambda: gql(b, key, TITLE, {"i": "i29"})["item"] is not None, "items written on A on B")
    for _ in range(3):  # B holds the old title in its cache
        assert gql(b, key, TITLE, {"i": "i3"})["item"]["title"] == "Clip 3 about music"
    gql(a, key, UPSERT, {"s": sid, "items": [{**items[3], "title": "Renamed"}]})
    found["item edit"] = _latency(lambda: gql(b, key, TITLE, {"i": "i3"})["item"]["title"] == "Renamed",
                                  "an item renamed on A renamed on B")

    def recommended() -> list[str]:
        return [i["item"]["id"] for i in gql(b, key, RECOMMEND, {"s": sid, "u": "u1"})["recommendations"]["items"]]

    first = recommended()[0]  # B answers (and caches) u1's list before A records what u1 saw
    events = [{"scenarioId": sid, "userId": f"u{u}", "itemId": f"i{(u * 3 + k * (u % 5 + 1)) % 30}", "type": "VIEW",
               "eventId": f"seed-{u}-{k}"} for u in range(2, 30) for k in range(6)]
    events.append({"scenarioId": sid, "userId": "u1", "itemId": first, "type": "LIKE", "eventId": "seed-1"})
    assert gql(a, key, RECORD, {"e": events})["recordInteractions"]["accepted"] == len(events)
    found["seen item left out"] = _latency(lambda: first not in recommended(), "an item seen on A left out on B")
    found["profile"] = _latency(lambda: _interactions(b, key, "u1") == 1,
                                "an event recorded on A in the profile on B (through the worker's consumer)")
    return sid, found


def kill_the_worker_running_a_training(cluster: Cluster, b: str, key: str, sid: str) -> tuple[str, float]:
    """Queue a training, SIGKILL the worker (with what it started) while it runs it and start another worker; return
    the job and when the worker was killed."""
    job_id = gql(b, key, TRAIN, {"s": sid})["trainScenario"]["id"]
    _wait("the training running on the worker",
          lambda: gql(b, key, JOB, {"j": job_id})["job"]["status"] == "RUNNING", 60, every_s=0.02,
          alive=lambda: cluster.fleet.alive("worker"))
    cluster.fleet.kill("worker")
    killed_at = time.monotonic()
    assert gql(b, key, JOB, {"j": job_id})["job"]["status"] == "RUNNING"  # the dead worker finished nothing
    cluster.start_worker("worker-2", short_limits=False)
    return job_id, killed_at


def killed_host_loses_no_accepted_event(cluster: Cluster, b: str, key: str, sid: str) -> str:
    """Send events to A in batches and kill A meanwhile: every batch A accepted is stored and applied (read on B);
    then start A again."""
    accepted: list[list[dict]] = []

    def send() -> None:
        n = 0
        while True:
            batch = [{"scenarioId": sid, "userId": f"k{n}", "itemId": f"i{(n + j) % 30}", "type": "CLICK",
                      "eventId": f"kill-{n}-{j}"} for j in range(5)]
            try:
                result = gql(cluster.urls["a"], key, RECORD, {"e": batch}, timeout=5)["recordInteractions"]
            except (httpx.HTTPError, ValueError):
                return  # A is gone: this batch was not accepted
            assert result["accepted"] == len(batch), result
            accepted.append(batch)
            n += 1

    sender = threading.Thread(target=send)
    sender.start()
    _wait("A accepting events", lambda: len(accepted) >= 10, 20, every_s=0.02)
    cluster.fleet.kill("a")
    sender.join(timeout=30)
    assert not sender.is_alive()
    cluster.start_serve("a", log="a-2")
    sent = [event for batch in accepted for event in batch]
    # Stored: sent again through B, each one is a duplicate.
    again = gql(b, key, RECORD, {"e": sent})["recordInteractions"]
    assert again["accepted"] == 0 and again["duplicates"] == len(sent) and not again["errors"], again
    # Applied (by the new worker's consumer): each accepted batch's user has its events in the profile B reads.
    for n in range(len(accepted)):
        _wait(f"user k{n}'s events applied", lambda n=n: _interactions(b, key, f"k{n}") == 5, 60, every_s=0.05,
              alive=lambda: cluster.fleet.alive("worker-2"))
    return f"{len(sent)} events accepted by A before it was killed, all stored and applied (read on B)"


def killed_workers_job_finishes_on_a_restarted_one(cluster: Cluster, key: str, sid: str, job_id: str,
                                                    killed_at: float) -> str:
    """The killed worker's job finishes on the new worker; both hosts (A started again) serve its model."""
    a, b = cluster.urls["a"], cluster.urls["b"]
    job = _wait("the killed worker's job finished on the new one",
                lambda: (j := gql(b, key, JOB, {"j": job_id})["job"])["status"] not in ("QUEUED", "RUNNING") and j,
                LEASE_S + 60, every_s=0.1, alive=lambda: cluster.fleet.alive("worker-2"))
    finished = time.monotonic() - killed_at
    assert job["status"] == "SUCCEEDED" and job["attempts"] == 2, job
    version = job["result"]["version"]
    cluster.ready("a")
    # Both hosts serve the new model from the shared models directory and search its embeddings in memory.
    for url in (a, b):
        _wait("the new model served", lambda url=url: gql(url, key, RECOMMEND, {"s": sid, "u": "u2"})[
            "recommendations"]["debug"]["modelVersion"] == version, 10, every_s=0.1)
        similar = gql(url, key, SIMILAR, {"s": sid, "i": "i4"})["similarItems"]["items"]
        assert similar and any("content" in hit["sources"] for hit in similar), similar
    took = job["result"]["seconds"]["total"]
    return f"job finished {finished:.1f} s after its worker was killed (attempt 2; training took {took:.1f} s)"
