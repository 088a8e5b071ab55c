"""`serve` with several processes on one port: each answers, a killed one comes back, /metrics counts them all, and
another `serve` on the same port is refused in one line."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.test_cli import BIN, _children, _env, _wait_ready, stop_serving

pytestmark = pytest.mark.slow

RECOMMEND = """query($s: ID!) { recommendations(scenarioId: $s, userId: "u1", first: 5) {
  requestId items { item { id } } } }"""


def _pid(url: str) -> int:
    # a fresh connection each time: connections, not requests, are shared out between the processes
    with httpx.Client() as client:
        return client.get(f"{url}/health/live", headers={"Connection": "close"}).json()["pid"]


def _serving_children(pid: int) -> list[int]:
    return [p for p in _children(pid) if "serve-child" in open(f"/proc/{p}/cmdline").read()]


def _counted(url: str, path: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(rf'^recograph_http_requests_total{{path="{re.escape(path)}",status="200"}} (\S+)$', text, re.M)
    return float(found.group(1)) if found else 0.0


def _metric(url: str, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", httpx.get(f"{url}/metrics").text, re.M)
    return float(found.group(1)) if found else 0.0


def _gql(url: str, key: str, query: str, variables: dict | None = None) -> dict:
    answer = httpx.post(f"{url}/graphql", json={"query": query, "variables": variables or {}},
                        headers={"Authorization": f"Bearer {key}", "Connection": "close"}, timeout=30)
    body = answer.json()
    assert not body.get("errors"), body
    return body["data"]


def record_and_count(url: str, key: str, events: list[dict]) -> None:
    """Record events and wait until /metrics counts them as read by the consumer (whichever process answers)."""
    _gql(url, key, "mutation($e: [InteractionInput!]!) { recordInteractions(events: $e) { accepted } }", {"e": events})
    deadline = time.monotonic() + 20
    while _metric(url, "recograph_consumer_read_total") < len(events) and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _metric(url, "recograph_consumer_read_total") >= len(events)


def made_tenant(made: subprocess.CompletedProcess) -> str:
    return json.loads(made.stdout)["tenant_id"]


def start_serving(tmp_path, processes: int) -> tuple[subprocess.Popen, str, dict[str, str]]:
    """Start `recograph serve` with this many serving processes; return it, its URL and its environment."""
    port = free_port()
    env = {**_env(tmp_path, port), "RECOGRAPH_PROCESSES": str(processes)}
    serve = subprocess.Popen([str(BIN), "serve"], env=env, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    _wait_ready(url, serve)
    return serve, url, env


def test_serving_processes_share_the_port_and_their_metrics(tmp_path):
    serve, url, env = start_serving(tmp_path, 2)
    children = _children(serve.pid)
    try:
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:  # the child answers once it has started
            try:
                pids.add(_pid(url))
            except httpx.TransportError:  # a connection the kernel handed to the child's socket as it started
                time.sleep(0.1)
        [child] = _serving_children(serve.pid)
        assert pids == {serve.pid, child}

        # SO_REUSEPORT would let a second serve share the port: it is refused like any other taken port.
        again = {**env, "RECOGRAPH_DATA_DIR": str(tmp_path / "second")}
        second = subprocess.run([str(BIN), "serve"], env=again, capture_output=True, text=True, timeout=120)
        assert second.returncode == 1
        assert "cannot listen on" in second.stderr and "Address already in use" in second.stderr, second.stderr
        assert "Traceback" not in second.stderr
        assert _pid(url) in pids

        # Whichever process is scraped, it counts every process's requests.
        before = _counted(url, "/health/live")
        answered = [_pid(url) for _ in range(30)]
        assert set(answered) == pids
        assert all(_counted(url, "/health/live") >= before + 30 for _ in range(6))

        # Writes through one process are read through the other.
        made = subprocess.run([str(BIN), "tenants", "create", "acme", "--json"], env=env, capture_output=True,
                              text=True, timeout=120)
        keys = json.loads(made.stdout)["keys"]
        sid = _gql(url, keys["admin"], 'mutation { createScenario(input: {name: "feed"}) { id } }')[
            "createScenario"]["id"]
        items = [{"id": f"i{n}", "categories": ["c"]} for n in range(8)]
        _gql(url, keys["admin"], "mutation($s: ID!, $items: [ItemInput!]!) { upsertItems(scenarioId: $s, "
             "items: $items) { upserted } }", {"s": sid, "items": items})
        for _ in range(6):
            found = _gql(url, keys["public"], RECOMMEND, {"s": sid})["recommendations"]
            assert len(found["items"]) == 5 and found["requestId"]

        # The consumer child's counters reach /metrics too.
        record_and_count(url, keys["admin"], [
            {"scenarioId": sid, "userId": "u2", "itemId": f"i{n}", "type": "VIEW"} for n in range(5)])
        assert _metric(url, "recograph_consumers_running") == 1
        # A consumer child that dies and is started again is counted once.
        [consumer] = [p for p in _children(serve.pid) if "graph.cli consumer" in open(f"/proc/{p}/cmdline").read()
                      .replace("\0", " ")]
        os.kill(consumer, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (
            [p for p in _children(serve.pid) if p != consumer and "consumer" in open(f"/proc/{p}/cmdline").read()]
            and _metric(url, "recograph_consumers_running") == 1
        ):
            time.sleep(0.3)
        assert _metric(url, "recograph_consumers_running") == 1
        assert _metric(url, "recograph_consumer_read_total") >= 5

        # A change made through one process shows at once in the other, whose cache held the old values.
        title = 'query { item(id: "i1") { title } }'
        for _ in range(10):
            assert _gql(url, keys["public"], title)["item"]["title"] is None
        _gql(url, keys["admin"], "mutation($s: ID!) { upsertItems(scenarioId: $s, items: [{id: \"i1\", title: "
             "\"New\"}]) { upserted } }", {"s": sid})
        time.sleep(0.2)  # the notice crosses Redis pub/sub
        assert {_gql(url, keys["public"], title)["item"]["title"] for _ in range(10)} == {"New"}

        # So does a key revoked from another process (the CLI).
        key_ids = {k["scope"]: k["id"] for k in _gql(url, keys["admin"], "{ apiKeys { id scope } }")["apiKeys"]}
        revoked = subprocess.run([str(BIN), "keys", "revoke", key_ids["PUBLIC"], "--tenant", made_tenant(made)],
                                 env=env, capture_output=True, text=True, timeout=120)
        assert revoked.returncode == 0, revoked.stderr
        time.sleep(0.2)
        for _ in range(10):
            answer = httpx.post(f"{url}/graphql", json={"query": title}, headers={
                "Authorization": f"Bearer {keys['public']}", "Connection": "close"}).json()
            assert answer["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", answer

        # A serving child that dies is started again, and the port keeps answering meanwhile.
        os.kill(child, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not [p for p in _serving_children(serve.pid) if p != child]:
            assert _pid(url) in {serve.pid, child}
            time.sleep(0.2)
        [again] = _serving_children(serve.pid)
        assert again != child
        while again not in pids and time.monotonic() < deadline:
            pids.add(_pid(url))
        assert again in pids
        children = _children(serve.pid)
    finally:
        stop_serving(serve, children)


def test_one_serving_process_still_counts_its_consumer_child(tmp_path):
    serve, url, env = start_serving(tmp_path, 1)
    children = _children(serve.pid)
    try:
        assert not _serving_children(serve.pid)
        made = subprocess.run([str(BIN), "tenants", "create", "solo", "--json"], env=env, capture_output=True,
                              text=True, timeout=120)
        keys = json.loads(made.stdout)["keys"]
        sid = _gql(url, keys["admin"], 'mutation { createScenario(input: {name: "feed"}) { id } }')[
            "createScenario"]["id"]
        _gql(url, keys["admin"], "mutation($s: ID!) { upsertItems(scenarioId: $s, items: [{id: \"a\"}]) "
             "{ upserted } }", {"s": sid})
        record_and_count(url, keys["admin"], [
            {"scenarioId": sid, "userId": f"u{n}", "itemId": "a", "type": "VIEW"} for n in range(4)])
    finally:
        stop_serving(serve, children)
