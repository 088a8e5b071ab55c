"""Static query cost: refuse an operation whose estimated work exceeds its key's limit, before any resolver runs.

The cost model (the README states it for clients):
- a field that returns an object, or a list of objects, costs 1; a scalar or enum field costs 0, and so does
  introspection (`__schema`, `__type`, `__typename`);
- fields that compute something cost their weight in `WEIGHTS` instead (recommendations 10, similar items 5,
  metrics 5, experiment results 5, system health 5, experiment plans 3, scenario stats 3, `totalCount` 2, an
  experiment assignment 1; analytics 5, catalogue and audience statistics 10, an on-demand rollup 20);
- a field with a `first` argument multiplies the cost of its sub-selection by `first`: its literal or variable
  value, the schema's default when absent, at most `max_first` (a larger `first` is refused before any work);
- `_entities` multiplies the cost of its sub-selection by the number of representations, and the representations
  of all its uses in one operation are capped (`max_representations`) whatever the cost;
- fragments and inline fragments are followed; on a union or interface the costliest possible type counts.

So cost(field) = weight(field) + multiplier(field) * cost(sub-selection), summed over the operation's fields.
The check runs after validation (an invalid document is refused for that) and before execution; it depends on
the variables and the key's scope, so it is never cached with the validation result (estimates are cached by
document text and the variables that can change them; the limit is applied per request).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from graphql import (
    DocumentNode, FieldNode, FragmentDefinitionNode, FragmentSpreadNode, GraphQLError, GraphQLField,
    GraphQLNamedType, GraphQLObjectType, GraphQLSchema, InlineFragmentNode, IntValueNode, ListValueNode,
    NamedTypeNode, NullValueNode, SelectionSetNode, ValueNode, VariableNode, get_named_type, get_operation_ast,
    is_abstract_type, is_leaf_type, value_from_ast_untyped,
)
from strawberry.extensions import SchemaExtension

from domain.errors import DomainError
from models.settings import GraphQLSettings

# Fields that compute something, by `Type.field`, or by `*.field` for every type; others cost 1 (objects) or 0.
WEIGHTS: Mapping[str, int] = {
    "Query.recommendations": 10,
    "User.recommendations": 10,
    "Query.similarItems": 5,
    "Item.similar": 5,
    "Query.metrics": 5,
    "Subscription.metrics": 5,
    "Scenario.stats": 3,
    "*.totalCount": 2,
    "Experiment.results": 5,
    "Subscription.experimentResults": 5,
    "Query.experimentPlan": 3,
    "Query.experimentAssignment": 1,
    "Query.systemHealth": 5,
    "Query.analytics": 5,
    "Query.catalogueStats": 10,
    "Query.audienceStats": 10,
    "Mutation.refreshAnalytics": 20,
}
DEFAULT_FIRST = 20  # what a `first` without a schema default means to the resolvers
ENTITIES = "_entities"
PUBLIC = "public"


class QueryTooCostly(DomainError):
    """The operation asks for more work than the caller's key may."""

    code = "QUERY_TOO_COSTLY"

    def __init__(self, message: str, *, cost: int, limit: int, field: str | None = None) -> None:
        super().__init__(message, field=field)
        self.cost = cost
        self.limit = limit

    @property
    def extensions(self) -> dict[str, Any]:
        """Return the code, the field at fault when there is one, the cost and the limit."""
        return {**super().extensions, "cost": self.cost, "limit": self.limit}


@dataclass(frozen=True)
class Estimate:
    cost: int
    representations: int  # the representations all `_entities` fields (aliases included) ask for together


@dataclass(frozen=True)
class CostLimits:
    """The most cost each scope's keys may ask for, and the most `_entities` representations."""

    per_scope: Mapping[str, int] = field(default_factory=lambda: {"public": 5000, "admin": 20000, "gateway": 50000})
    max_representations: int = 100
    max_first: int = 200

    def limit_for(self, scope: str | None) -> int:
        """Return the limit of a scope (unauthenticated callers get the public one)."""
        return self.per_scope.get(scope or PUBLIC, self.per_scope[PUBLIC])

    def check(self, estimate: Estimate, scope: str | None) -> None:
        """Raise QueryTooCostly when the estimate passes the representation cap or the scope's limit."""
        if estimate.representations > self.max_representations:
            raise QueryTooCostly(
                f"_entities takes at most {self.max_representations} representations in one operation, "
                f"got {estimate.representations}",
                cost=estimate.representations, limit=self.max_representations, field="representations",
            )
        limit = self.limit_for(scope)
        if estimate.cost > limit:
            raise QueryTooCostly(
                f"query cost {estimate.cost} exceeds this key's limit of {limit}: "
                "ask for fewer items (`first`) or fewer nested lists",
                cost=estimate.cost, limit=limit,
            )


def estimate_cost(
    schema: GraphQLSchema, document: DocumentNode, variables: Mapping[str, Any] | None = None, *,
    operation_name: str | None = None, max_first: int = 200,
) -> Estimate:
    """Return the static cost of the operation that would execute (0 when there is none to execute)."""
    operation = get_operation_ast(document, operation_name)
    if operation is None:
        return Estimate(0, 0)
    root = schema.get_root_type(operation.operation)
    if root is None:
        return Estimate(0, 0)
    given = dict(variables or {})
    defaults = {
        d.variable.name.value: value_from_ast_untyped(d.default_value)
        for d in operation.variable_definitions or () if d.default_value is not None
    }
    fragments = {d.name.value: d for d in document.definitions if isinstance(d, FragmentDefinitionNode)}
    walk = _Walk(schema, fragments, {**defaults, **given}, max_first)
    return Estimate(walk.selection(operation.selection_set, root), walk.representations)


class _Walk:
    """One pass over an operation; a selection's cost on a type is computed once (repeated fragments are cheap)."""

    def __init__(self, schema: GraphQLSchema, fragments: Mapping[str, FragmentDefinitionNode],
                 variables: Mapping[str, Any], max_first: int) -> None:
        self.schema, self.fragments, self.variables, self.max_first = schema, fragments, variables, max_first
        self.representations = 0
        self._memo: dict[tuple[int, str], int] = {}

    def selection(self, node: SelectionSetNode | None, parent: GraphQLNamedType) -> int:
        """Return the cost of a selection set on a type (the costliest possible type of an abstract one)."""
        if node is None:
            return 0
        if is_abstract_type(parent):
            return max((self.selection(node, t) for t in self.schema.get_possible_types(parent)), default=0)
        key = (id(node), parent.name)
        if (known := self._memo.get(key)) is not None:
            return known
        total = 0
        for sel in node.selections:
            if isinstance(sel, FieldNode):
                total += self.field(sel, parent)
            elif isinstance(sel, InlineFragmentNode) and self._applies(sel.type_condition, parent):
                total += self.selection(sel.selection_set, parent)
            elif isinstance(sel, FragmentSpreadNode) and (frag := self.fragments.get(sel.name.value)) is not None:
                if self._applies(frag.type_condition, parent):
                    total += self.selection(frag.selection_set, parent)
        self._memo[key] = total
        return total

    def field(self, node: FieldNode, parent: GraphQLNamedType) -> int:
        """Return a field's weight plus its multiplier times the cost of its sub-selection."""
        name = node.name.value
        if name.startswith("__") or not isinstance(parent, GraphQLObjectType):
            return 0  # introspection is served from the schema in memory
        definition = parent.fields.get(name)
        if definition is None:
            return 0  # validation refused it already
        named = get_named_type(definition.type)
        leaf = is_leaf_type(named)
        weight = WEIGHTS.get(f"{parent.name}.{name}", WEIGHTS.get(f"*.{name}", 0 if leaf else 1))
        if leaf:
            return weight
        return weight + self._multiplier(node, definition) * self.selection(node.selection_set, named)

    def _multiplier(self, node: FieldNode, definition: GraphQLField) -> int:
        if node.name.value == ENTITIES and "representations" in definition.args:
            value = self._argument(node, definition, "representations")
            count = len(value) if isinstance(value, (list, tuple)) else 1
            self.representations += count
            return count
        if "first" in definition.args:
            return self._first(node, definition)
        return 1

    def _first(self, node: FieldNode, definition: GraphQLField) -> int:
        value = self._argument(node, definition, "first")
        if isinstance(value, float) and value.is_integer():
            value = int(value)  # graphql-core coerces an integral float variable to an Int
        if not isinstance(value, int) or isinstance(value, bool):
            default = definition.args["first"].default_value
            value = default if isinstance(default, int) and not isinstance(default, bool) else DEFAULT_FIRST
        return min(max(value, 0), self.max_first)

    def _argument(self, node: FieldNode, definition: GraphQLField, name: str) -> Any:
        for arg in node.arguments or ():
            if arg.name.value == name:
                return self._value(arg.value)
        return definition.args[name].default_value

    def _value(self, value: ValueNode) -> Any:
        if isinstance(value, VariableNode):
            return self.variables.get(value.name.value)
        if isinstance(value, IntValueNode):
            return int(value.value)
        if isinstance(value, ListValueNode):
            return value.values
        if isinstance(value, NullValueNode):
            return None
        return value_from_ast_untyped(value, self.variables)

    def _applies(self, condition: NamedTypeNode | None, concrete: GraphQLNamedType) -> bool:
        if condition is None or condition.name.value == concrete.name:
            return True
        target = self.schema.get_type(condition.name.value)
        return (target is not None and is_abstract_type(target) and isinstance(concrete, GraphQLObjectType)
                and self.schema.is_sub_type(target, concrete))


def _scope(context: Any) -> str | None:
    principal = getattr(context, "principal", None)
    scope = getattr(principal, "scope", None)
    return getattr(scope, "value", scope)


class _Estimates:
    """The estimates of recent (document, operation, variables that can change the cost), least recent dropped."""

    def __init__(self, maxsize: int = 1024) -> None:
        self._maxsize = maxsize
        self._known: OrderedDict[tuple, Estimate] = OrderedDict()

    def get(self, ctx: Any, max_first: int) -> Estimate:
        """Return the estimate of the operation about to execute, computed once per document and variables."""
        key = (ctx.query, ctx.operation_name, _cost_inputs(ctx.variables)) if ctx.query else None
        if key is not None and (known := self._known.get(key)) is not None:
            self._known.move_to_end(key)
            return known
        estimate = estimate_cost(ctx.schema._schema, ctx.graphql_document, ctx.variables,
                                 operation_name=ctx.operation_name, max_first=max_first)
        if key is not None:
            self._known[key] = estimate
            if len(self._known) > self._maxsize:
                self._known.popitem(last=False)
        return estimate


def _cost_inputs(variables: Mapping[str, Any] | None) -> tuple:
    # Variables reach the cost only as a `first` (a number) or as representations (a list's length).
    return tuple(sorted(
        (name, len(value) if isinstance(value, list) else value)
        for name, value in (variables or {}).items() if isinstance(value, (int, float, list))
    ))


class _QueryCostLimiter(SchemaExtension):
    limits: ClassVar[CostLimits]
    estimates: ClassVar[_Estimates]

    def on_execute(self) -> Iterator[None]:
        """Estimate the operation about to execute; refuse it (nothing runs) when over the caller's limits."""
        ctx = self.execution_context
        if ctx.graphql_document is not None:
            estimate = self.estimates.get(ctx, self.limits.max_first)
            try:
                self.limits.check(estimate, _scope(ctx.context))
            except QueryTooCostly as exc:
                raise GraphQLError(exc.message, original_error=exc, extensions=exc.extensions) from exc
        yield


def cost_extension(limits: CostLimits) -> type[SchemaExtension]:
    """Return a Strawberry extension class enforcing these limits (a class: one instance per operation)."""
    return type("QueryCostLimiter", (_QueryCostLimiter,), {"limits": limits, "estimates": _Estimates()})


def cost_limits(settings: GraphQLSettings) -> CostLimits:
    """Return the cost limits the settings configure."""
    return CostLimits(
        per_scope={"public": settings.max_cost_public, "admin": settings.max_cost_admin,
                   "gateway": settings.max_cost_gateway},
        max_representations=settings.max_representations, max_first=settings.max_first,
    )
