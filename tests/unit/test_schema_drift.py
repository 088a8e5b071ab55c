"""The committed schema.graphql is exactly what `strawberry export-schema graph.schema:schema` prints."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "schema.graphql"
STRAWBERRY = Path(sys.executable).parent / "strawberry"
REGENERATE = "strawberry export-schema graph.schema:schema --output schema.graphql"


def exported() -> str:
    """Return the SDL the CLI exports from the code."""
    result = subprocess.run(
        [str(STRAWBERRY), "export-schema", "graph.schema:schema", "--app-dir", str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "type Query" in result.stdout, result.stdout
    return result.stdout


def test_schema_graphql_is_committed():
    assert COMMITTED.is_file(), f"schema.graphql is missing: run `{REGENERATE}`"


def test_schema_graphql_matches_the_code():
    assert COMMITTED.is_file(), f"schema.graphql is missing: run `{REGENERATE}`"
    committed = COMMITTED.read_text().rstrip("\n")
    current = exported().rstrip("\n")
    if committed != current:
        diff = "\n".join(difflib.unified_diff(committed.splitlines(), current.splitlines(), "schema.graphql",
                                              "exported", lineterm=""))
        raise AssertionError(f"schema.graphql drifted from the code; run `{REGENERATE}` if intended:\n{diff}")
