"""Rate limits (issue 10 item 3) as an operator sets them: `recograph tenants limits` beside a running `serve` (all of
its serving processes), applied within 5 s, shown by `--show`, undone by `--clear`."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from tests.conftest import free_port
from tests.e2e.test_cli import BIN, _children, _env, _wait_ready, stop_serving

pytestmark = pytest.mark.slow
TYPENAME = {"query": "{ __typename }"}


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([str(BIN), *args], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def test_rate_limits_cli_override_reaches_every_serving_process_within_5s(tmp_path):
    port = free_port()
    env = {**_env(tmp_path, port), "RECOGRAPH_PROCESSES": "2"}
    serve = subprocess.Popen([str(BIN), "serve"], env=env, stderr=subprocess.PIPE, text=True)
    children: list[int] = []
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, serve)
        children = _children(serve.pid)
        tenant = json.loads(_cli(env, "tenants", "create", "flood", "--json").stdout)
        tenant_id, headers = tenant["tenant_id"], {"Authorization": f"Bearer {tenant['keys']['public']}"}
        with httpx.Client(timeout=30) as http:
            assert all(http.post(f"{url}/graphql", json=TYPENAME, headers=headers).status_code == 200
                       for _ in range(20))  # both processes have read the tenant's (default) limits
            _cli(env, "tenants", "limits", tenant_id, "--scope", "public", "--rate", "1", "--burst", "1")
            began = time.monotonic()
            while http.post(f"{url}/graphql", json=TYPENAME, headers=headers).status_code != 429:
                assert time.monotonic() - began < 5, "the override did not reach serve within 5 s"
                time.sleep(0.05)
            time.sleep(0.2)
            codes = [http.post(f"{url}/graphql", json=TYPENAME, headers=headers).status_code for _ in range(12)]
            assert codes.count(429) >= 10, codes  # every process holds the key to one request a second
            shown = _cli(env, "tenants", "limits", tenant_id, "--show").stdout.splitlines()
            assert "public\t1/s\tburst 1\toverride" in shown
            assert any(line.startswith("admin\t1000/s\tburst 2000\tdefault") for line in shown)

            _cli(env, "tenants", "limits", tenant_id, "--scope", "public", "--clear")
            began = time.monotonic()
            while http.post(f"{url}/graphql", json=TYPENAME, headers=headers).status_code != 200:
                assert time.monotonic() - began < 5
                time.sleep(0.05)
    finally:
        stop_serving(serve, children)


def test_rate_limits_cli_refuses_an_unknown_tenant_and_a_bad_rate(tmp_path):
    env = _env(tmp_path, free_port())
    unknown = subprocess.run([str(BIN), "tenants", "limits", "t_nobody", "--scope", "public", "--rate", "5"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert unknown.returncode == 1 and "no tenant t_nobody" in unknown.stderr
    tenant_id = json.loads(_cli(env, "tenants", "create", "x", "--json").stdout)["tenant_id"]
    bad = subprocess.run([str(BIN), "tenants", "limits", tenant_id, "--scope", "public", "--rate", "0"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "rate must be a positive" in bad.stderr and "Traceback" not in bad.stderr
