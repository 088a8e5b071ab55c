"""Write each Mutation root field an admin key runs to the audit log, with how it ended.

A Strawberry extension around execution: queries and other keys pass through at the cost of one attribute check;
an admin's mutation is written after it ran (one insert per root field, awaited so that no entry of a finished
mutation is lost: an admin mutation takes a millisecond more). The arguments are digested as sent (variables
substituted), never stored.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

from graphql import (
    DocumentNode, FieldNode, FragmentSpreadNode, GraphQLError, InlineFragmentNode, OperationDefinitionNode,
    OperationType, SelectionSetNode,
)
from graphql.utilities import value_from_ast_untyped
from strawberry.extensions import SchemaExtension

from domain.tenancy import Scope

OK = "ok"


def _operation(document: DocumentNode, name: str | None) -> OperationDefinitionNode | None:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if name is None:
        return operations[0] if len(operations) == 1 else None
    return next((o for o in operations if o.name is not None and o.name.value == name), None)


def root_fields(document: DocumentNode, selection: SelectionSetNode) -> Iterator[FieldNode]:
    """Yield the root fields of a selection, through inline fragments and fragment spreads."""
    fragments = {d.name.value: d for d in document.definitions if d.kind == "fragment_definition"}
    for node in selection.selections:
        if isinstance(node, FieldNode):
            if not node.name.value.startswith("__"):
                yield node
        elif isinstance(node, InlineFragmentNode):
            yield from root_fields(document, node.selection_set)
        elif isinstance(node, FragmentSpreadNode) and node.name.value in fragments:
            yield from root_fields(document, fragments[node.name.value].selection_set)


def field_arguments(field: FieldNode, variables: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return a field's arguments as plain JSON values, variables substituted."""
    return {arg.name.value: value_from_ast_untyped(arg.value, variables or {}) for arg in field.arguments or ()}


def field_outcome(response_key: str, errors: list[GraphQLError] | None) -> str:
    """Return `ok`, or the code of the first error raised under the field."""
    for error in errors or ():
        if error.path and error.path[0] == response_key:
            return str((error.extensions or {}).get("code") or "INTERNAL_SERVER_ERROR")
    return OK


class AuditExtension(SchemaExtension):
    """Record an admin key's mutations (each root field) in the tenant's audit log."""

    async def on_execute(self) -> AsyncIterator[None]:
        """Let the operation run, then write one audit entry per Mutation root field it held."""
        yield
        ctx = self.execution_context
        principal = getattr(ctx.context, "principal", None)
        if principal is None or principal.scope is not Scope.ADMIN or ctx.graphql_document is None:
            return
        operation = _operation(ctx.graphql_document, ctx.operation_name)
        if operation is None or operation.operation is not OperationType.MUTATION or ctx.result is None:
            return
        audit = ctx.context.services.audit
        for field in root_fields(ctx.graphql_document, operation.selection_set):
            key = field.alias.value if field.alias else field.name.value
            await audit.record(
                tenant_id=principal.tenant_id, key_id=principal.key_id, operation=field.name.value,
                arguments=field_arguments(field, ctx.variables), outcome=field_outcome(key, ctx.result.errors),
            )
