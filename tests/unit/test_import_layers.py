"""Imports point one way: import-linter's contracts from pyproject.toml are all kept, and a wrong arrow breaks one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("graph", "resolvers", "domain", "workers", "models")


def contract_names() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return [c["name"] for c in config["tool"]["importlinter"]["contracts"]]


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(cwd), "NO_COLOR": "1"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_expected_contracts_are_configured():
    names = contract_names()
    assert len(names) >= 3
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    layers = [c for c in config["contracts"] if c["type"] == "layers"]
    assert [c["layers"] for c in layers] == [["graph", "resolvers", "domain", "models"]]
    assert not any(c.get("ignore_imports") for c in config["contracts"])


def test_every_contract_is_kept():
    result = lint(ROOT)
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    for name in contract_names():
        assert f"{name} KEPT" in out, (name, out)
    assert "BROKEN" not in out
    assert f"Contracts: {len(contract_names())} kept, 0 broken." in out


@pytest.mark.parametrize(
    "module,line,broken",
    [
        ("domain/_wrong_arrow.py", "import resolvers.context\n", "Layers: graph -> resolvers -> domain -> models"),
        ("models/_wrong_arrow.py", "import domain.errors\n", "Layers: graph -> resolvers -> domain -> models"),
        ("workers/_wrong_arrow.py", "import graph.schema\n", "Workers use domain and models only"),
        ("domain/_wrong_arrow.py", "import workers\n", "Only graph may import workers"),
    ],
)
def test_a_wrong_import_breaks_a_contract(tmp_path, module, line, broken):
    """The same configuration on a copy with one wrong arrow fails (so the contracts can fail at all)."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    (tmp_path / module).write_text(line)
    result = lint(tmp_path)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert f"{broken} BROKEN" in out, out
    assert "_wrong_arrow" in out, out
