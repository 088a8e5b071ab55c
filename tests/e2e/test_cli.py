"""The CLI as a user runs it: `serve` in one process, `tenants create` attaching to its servers from another."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import free_port

BIN = Path(sys.executable).parent / "recograph"
pytestmark = pytest.mark.slow


def _env(data_dir: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in {"MONGODB_URL", "REDIS_URL", "QDRANT_URL"}}
    env.update(RECOGRAPH_DATA_DIR=str(data_dir), RECOGRAPH_PORT=str(port), RECOGRAPH_LOG_LEVEL="WARNING")
    return env


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else "serve exited"
        try:
            if httpx.get(f"{url}/health/ready", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("serve did not become ready")


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return False
    return state != "Z"


def stop_serving(serve: subprocess.Popen, children: list[int], timeout_s: float = 15) -> None:
    """SIGTERM serve, wait for it, and check that none of its children outlived it."""
    serve.send_signal(signal.SIGTERM)
    serve.wait(timeout=60)
    deadline = time.monotonic() + timeout_s
    while any(_alive(p) for p in children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not [p for p in children if _alive(p)], "children outlived serve"


def test_tenant_created_by_cli_while_serving_and_sigterm_stops_everything(tmp_path):
    port = free_port()
    env = _env(tmp_path, port)
    serve = subprocess.Popen([str(BIN), "serve"], env=env, stderr=subprocess.PIPE, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, serve)
        children = _children(serve.pid)
        assert len(children) >= 2  # the embedded MongoDB and Redis servers

        made = subprocess.run([str(BIN), "tenants", "create", "acme", "--json"], env=env, capture_output=True,
                              text=True, timeout=120)
        assert made.returncode == 0, made.stderr
        created = json.loads(made.stdout)
        assert set(created["keys"]) == {"admin", "public", "gateway"}

        query = {"query": "mutation { createScenario(input: {name: \"shop\", template: ECOMMERCE}) { id } }"}
        answer = httpx.post(f"{url}/graphql", json=query, headers={"Authorization": f"Bearer {created['keys']['admin']}"})
        assert answer.json()["data"]["createScenario"]["id"].startswith("sc_")
        assert (tmp_path / "runtime.json").exists()
    finally:
        stop_serving(serve, children)
    assert not (tmp_path / "runtime.json").exists()

    # The next start on the same directory works at once and still knows the tenant.
    listed = subprocess.run([str(BIN), "tenants", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert created["tenant_id"] in listed.stdout


def test_unreachable_mongodb_is_one_clear_line(tmp_path):
    env = _env(tmp_path, free_port())
    env["MONGODB_URL"] = f"mongodb://127.0.0.1:{free_port()}/"
    env["MONGODB_TIMEOUT_MS"] = "500"
    result = subprocess.run([str(BIN), "tenants", "list"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert any("MongoDB" in line and "not reachable" in line for line in lines), result.stderr
    assert "Traceback" not in result.stderr
