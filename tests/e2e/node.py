"""Run the Node fixtures in tests/e2e/federation (subgraph, gateways, composition) beside the in-process recograph.

`make test` installs their packages (`npm ci --prefix tests/e2e/federation`); a test that needs a package which is
not installed fails and says so, rather than skipping.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

FEDERATION = Path(__file__).parent / "federation"
NODE = shutil.which("node") or "node"
READY = re.compile(r"^ready (\S+)")

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or shutil.which("npm") is None,
    reason="node and npm are needed for the federation e2e tests",
)


def require_packages(*names: str) -> None:
    """Fail (not skip) when an npm package the fixtures import is not installed."""
    missing = [name for name in names if not (FEDERATION / "node_modules" / name / "package.json").is_file()]
    if missing:
        pytest.fail(f"npm packages {missing} are not installed: run `make test`, or "
                    f"`npm ci --prefix tests/e2e/federation --ignore-scripts`")


@dataclass(frozen=True)
class NodeProcess:
    """`node *args` in tests/e2e/federation; `ready` matches the output line whose group 1 is the url it serves."""

    args: Sequence[str]
    env: Mapping[str, str] = field(default_factory=dict)
    ready: re.Pattern[str] = READY


@contextlib.asynccontextmanager
async def node_processes(*specs: NodeProcess, timeout: float = 25.0) -> AsyncIterator[list[str]]:
    """Start every process at once; yield the url each announced, in order.

    The processes are stopped on exit, even when one fails to start or a test fails.
    """
    with contextlib.ExitStack() as files:
        outputs = [files.enter_context(tempfile.TemporaryFile()) for _ in specs]
        procs: list[asyncio.subprocess.Process] = []
        try:
            for spec, out in zip(specs, outputs):
                procs.append(await asyncio.create_subprocess_exec(
                    NODE, *spec.args, cwd=FEDERATION, env={**os.environ, **spec.env},
                    stdin=asyncio.subprocess.DEVNULL, stdout=out, stderr=out,
                ))
            deadline = time.monotonic() + timeout
            yield [await _ready_url(spec, proc, out, deadline) for spec, proc, out in zip(specs, procs, outputs)]
        finally:
            for proc in procs:
                if proc.returncode is None:
                    proc.terminate()
            for proc in procs:
                try:
                    await asyncio.wait_for(proc.wait(), 5)
                except asyncio.TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _ready_url(spec: NodeProcess, proc: asyncio.subprocess.Process, out: IO[bytes], deadline: float) -> str:
    while True:
        out.seek(0)
        text = out.read().decode(errors="replace")
        for line in text.splitlines():
            if found := spec.ready.search(line):
                return found.group(1).rstrip("/")
        if proc.returncode is not None or time.monotonic() > deadline:
            pytest.fail(f"node {' '.join(spec.args)} did not start (exit code {proc.returncode}):\n{text}")
        # Wait without blocking the loop: the in-process recograph must answer the fixtures' `_service` calls.
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.05)


async def run_node(*args: str, env: Mapping[str, str], timeout: float = 25.0) -> str:
    """Run `node *args` to completion without blocking the loop; return its output, failing the test on exit != 0."""
    proc = await asyncio.create_subprocess_exec(
        NODE, *args, cwd=FEDERATION, env={**os.environ, **env},
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"node {' '.join(args)} did not finish within {timeout} s")
    text = output.decode(errors="replace")
    if proc.returncode != 0:
        pytest.fail(f"node {' '.join(args)} failed (exit code {proc.returncode}):\n{text}")
    return text
