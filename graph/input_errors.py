"""Give GraphQL's own input refusals the code and field path the domain's BadInput errors carry.

graphql-core refuses a value that does not fit its type (an unknown enum value such as an `ExperimentMetric` or
`InteractionType` nobody defined, a string for a Float, a required input field left out) before any resolver runs:
in validation for a literal, while coercing variables for a variable. Its errors carry no code. These get
`extensions = {code: BAD_USER_INPUT, field}`, `field` being the dotted path from the argument
(`input.primaryMetric`, `events.1.type`), exactly as a domain refusal names it; the request still fails whole.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from graphql import (
    ArgumentNode, DocumentNode, GraphQLError, ListValueNode, Node, ObjectValueNode, OperationDefinitionNode,
    ValueNode, VariableNode,
)
from graphql.language import Visitor, visit

CODE = "BAD_USER_INPUT"
# graphql-core's variable coercion message: "Variable '$input' has invalid value at .variants[1].weight: ...".
_VARIABLE = re.compile(r"^Variable '\$(?P<name>\w+)' has invalid (?:default )?value(?: at (?P<path>[^:]*))?: ")
_STEP = re.compile(r"\.(\w+)|\[(\d+)\]")

Path = tuple[str, ...]


def mark_input_error(error: GraphQLError, document: DocumentNode | None) -> bool:
    """Add BAD_USER_INPUT and the field path to an input refusal of graphql-core; return whether it was one."""
    if error.original_error is not None and not isinstance(error.original_error, GraphQLError):
        return False  # raised by a resolver or the domain: it has its own code
    if (error.extensions or {}).get("code") not in (None, CODE):
        return False
    field = _field(error, document)
    if field is None:
        return False
    error.extensions = {**(error.extensions or {}), "code": CODE, **({"field": field} if field else {})}
    return True


def _field(error: GraphQLError, document: DocumentNode | None) -> str | None:
    """Return the dotted path of the refused value ("" when it cannot be placed), or None if not an input error."""
    if (match := _VARIABLE.match(error.message)) is not None:
        inner = tuple(a or b for a, b in _STEP.findall(match["path"] or ""))
        outer = _variable_use(document, match["name"]) if document is not None else None
        return ".".join((outer if outer is not None else (match["name"],)) + inner)
    node = error.nodes[0] if error.nodes else None
    if isinstance(node, ValueNode) and not isinstance(node, VariableNode) and document is not None:
        path = _literal_path(document, node)
        return ".".join(path) if path is not None else ""
    return None


def _variable_use(document: DocumentNode, name: str) -> Path | None:
    """Return the path from its argument of the first place the variable is used."""
    for argument in _arguments(document):
        for path, value in _values(argument.value, (argument.name.value,)):
            if isinstance(value, VariableNode) and value.name.value == name:
                return path
    return None


def _literal_path(document: DocumentNode, target: Node) -> Path | None:
    for argument in _arguments(document):
        for path, value in _values(argument.value, (argument.name.value,)):
            if value is target:
                return path
    return None


def _arguments(document: DocumentNode) -> Iterator[ArgumentNode]:
    """Yield every field and directive argument of the document's operations and fragments, in document order."""
    found: list[ArgumentNode] = []

    class Collect(Visitor):
        def enter_argument(self, node: ArgumentNode, *_: object) -> None:
            found.append(node)

    for definition in document.definitions:
        if isinstance(definition, OperationDefinitionNode) or definition.kind == "fragment_definition":
            visit(definition, Collect())
    yield from found


def _values(value: ValueNode, path: Path) -> Iterator[tuple[Path, ValueNode]]:
    """Yield each value inside an argument's value with its path (object fields by name, list items by index)."""
    yield path, value
    if isinstance(value, ObjectValueNode):
        for field in value.fields:
            yield from _values(field.value, (*path, field.name.value))
    elif isinstance(value, ListValueNode):
        for i, item in enumerate(value.values):
            yield from _values(item, (*path, str(i)))
