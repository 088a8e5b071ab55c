"""The API guide (docs/api.md), generated from schema.graphql's descriptions so that it never drifts from the code.

`python -m graph.apidoc` rewrites the guide (the Makefile's `schema` target runs it after exporting the schema);
a unit test fails when the committed guide differs from what the committed schema gives.

Layout: the operations first (queries, mutations, subscriptions: each field with its arguments, type and
description), then every other type in alphabetical order within its kind (objects, inputs, enums, scalars).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from pathlib import Path

from graphql import parse
from graphql.language import ast, print_ast

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schema.graphql"
GUIDE = ROOT / "docs" / "api.md"
OPERATIONS = ("Query", "Mutation", "Subscription")
HEADER = """# API guide

Generated from `schema.graphql` by `python -m graph.apidoc` (`make schema`); do not edit by hand. Every field's
description here is the one the code gives, so GraphiQL (`/graphql`) shows the same text. Access: public keys read
recommendations and write events; gateway keys add what a product's gateway joins; admin keys manage a tenant
(README, "Keys and acting for a user"). Errors carry `extensions.code` (`BAD_USER_INPUT` with `field`,
`UNAUTHENTICATED`, `FORBIDDEN`, `NOT_FOUND`, `RATE_LIMITED`, `QUERY_TOO_COSTLY`, `SERVICE_UNAVAILABLE`).
"""


def _text(node: ast.StringValueNode | None) -> str:
    return " ".join(node.value.split()) if node is not None else ""


def _type(node: ast.TypeNode) -> str:
    return print_ast(node)


def _arguments(args: Iterable[ast.InputValueDefinitionNode]) -> str:
    parts = []
    for a in args:
        default = f" = {print_ast(a.default_value)}" if a.default_value is not None else ""
        parts.append(f"{a.name.value}: {_type(a.type)}{default}")
    return f"({', '.join(parts)})" if parts else ""


def _fields(fields: Iterable[ast.FieldDefinitionNode | ast.InputValueDefinitionNode], *,
            signatures: bool) -> list[str]:
    lines = []
    for f in fields:
        args = _arguments(getattr(f, "arguments", None) or ()) if signatures else ""
        default = ""
        if isinstance(f, ast.InputValueDefinitionNode) and f.default_value is not None:
            default = f" = {print_ast(f.default_value)}"
        description = _text(f.description)
        lines.append(f"- `{f.name.value}{args}: {_type(f.type)}{default}`" + (f": {description}" if description
                                                                              else ""))
    return lines


def _section(title: str, definition: ast.TypeDefinitionNode, body: list[str]) -> list[str]:
    out = [f"### {title}", ""]
    if description := _text(definition.description):
        out += [description, ""]
    return out + body + [""]


def render(sdl: str) -> str:
    """Return the guide for a schema's SDL."""
    document = parse(sdl)
    definitions = [d for d in document.definitions if isinstance(d, ast.TypeDefinitionNode)]
    by_name = {d.name.value: d for d in definitions}
    out = [HEADER]
    out += ["## Operations", ""]
    for name in OPERATIONS:
        if (node := by_name.get(name)) is not None:
            out += _section(name, node, _fields(node.fields or (), signatures=True))
    kinds: list[tuple[str, type, str]] = [
        ("Object types", ast.ObjectTypeDefinitionNode, "type"), ("Input types", ast.InputObjectTypeDefinitionNode,
                                                                  "input"),
        ("Interfaces", ast.InterfaceTypeDefinitionNode, "interface"), ("Unions", ast.UnionTypeDefinitionNode, "union"),
        ("Enums", ast.EnumTypeDefinitionNode, "enum"), ("Scalars", ast.ScalarTypeDefinitionNode, "scalar"),
    ]
    for heading, kind, keyword in kinds:
        nodes = sorted((d for d in definitions if isinstance(d, kind) and d.name.value not in OPERATIONS),
                       key=lambda d: d.name.value)
        if not nodes:
            continue
        out += [f"## {heading}", ""]
        for node in nodes:
            keys = [print_ast(d) for d in node.directives or () if d.name.value == "key"]
            title = f"`{keyword} {node.name.value}`" + (f" {' '.join(keys)}" if keys else "")
            if isinstance(node, ast.EnumTypeDefinitionNode):
                body = [f"- `{v.name.value}`" + (f": {_text(v.description)}" if v.description else "")
                        for v in node.values or ()]
            elif isinstance(node, ast.UnionTypeDefinitionNode):
                body = ["One of: " + ", ".join(f"`{t.name.value}`" for t in node.types or ())]
            elif isinstance(node, ast.ScalarTypeDefinitionNode):
                body = []
            else:
                body = _fields(node.fields or (), signatures=True)
            out += _section(title, node, body)
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the guide (or, with --check, exit 1 when the committed one is stale)."""
    argv = sys.argv[1:] if argv is None else argv
    text = render(SCHEMA.read_text())
    if "--check" in argv:
        if not GUIDE.exists() or GUIDE.read_text() != text:
            print(f"{GUIDE.relative_to(ROOT)} is stale: run `make schema`", file=sys.stderr)
            return 1
        return 0
    GUIDE.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
