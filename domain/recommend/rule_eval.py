"""Evaluating compiled business rules: operands, three-valued tests, vectorised routes and kept answers.

The language and its meaning are documented in `domain.recommend.rules`, which parses text into these nodes, and
`rule_values` defines how two plain values compare. A node answers for all candidates at once with a `Truth`
(true mask, unknown mask); unknown comes only from a request context key that is absent, so a rule never empties
a feed for a request that lacks context. Subtrees that read the item alone are wrapped in `Cached` and answered
once per catalogue item.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from itertools import repeat
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from domain.recommend.columns import lazy_column
from domain.recommend.rule_values import PAIRWISE, between, dig, is_number, membership, present, to_epoch

if TYPE_CHECKING:
    from domain.recommend.base import CatalogueView

FUTURE_SKEW_S = 300.0  # `within` still accepts items this far ahead of the request time (clock skew)
_SIMPLE_FIELDS = {"id": "item_ids", "title": "titles", "categories": "categories", "tags": "tags"}
_NUMPY_OPS: dict[str, Callable[[np.ndarray, Any], np.ndarray]] = {
    "==": np.equal, "!=": np.not_equal, "<": np.less, "<=": np.less_equal, ">": np.greater, ">=": np.greater_equal,
}


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING = _Missing()  # a context key the request does not have


class Column:
    """One value per candidate."""

    __slots__ = ("values",)

    def __init__(self, values: list[Any]) -> None:
        self.values = values


class RuleScope:
    """The candidates one evaluation covers. Field values come from per-catalogue columns (gathered once per
    item), so a request reads them with numpy indexing."""

    def __init__(self, idx: np.ndarray, catalogue: CatalogueView, context: Mapping[str, Any], now: float) -> None:
        self.idx = np.asarray(idx, dtype=np.int64)
        self.catalogue = catalogue
        self.context = context
        self.now = float(now)
        self._columns: dict[str, list[Any]] = {}

    def __len__(self) -> int:
        return len(self.idx)

    def published(self) -> np.ndarray:
        """Return the candidates' publish times (epoch seconds, NaN when unknown)."""
        return self.catalogue.published_at[self.idx]

    def column(self, key: str) -> list[Any]:
        """Return one field's values for the candidates as a list (None where absent)."""
        values = self._columns.get(key)
        if values is None:
            values = self._columns[key] = self.objects(key).tolist()
        return values

    def objects(self, key: str, idx: np.ndarray | None = None) -> np.ndarray:
        """Return one field's values for the candidates (or for idx) as an object array."""
        catalogue = self.catalogue

        def compute(rows: np.ndarray) -> np.ndarray:
            return np.fromiter(gather(catalogue, key, rows), dtype=object, count=len(rows))

        return lazy_column(catalogue, ("field", key), object).take(self.idx if idx is None else idx, compute)

    def numbers(self, key: str) -> np.ndarray:
        """Return one field's values as float64 (NaN where the value is not a number)."""
        if key == "publishedAt":
            return self.published()

        def compute(rows: np.ndarray) -> list[float]:
            return [v if is_number(v) else math.nan for v in self.objects(key, rows).tolist()]

        return lazy_column(self.catalogue, ("number", key), np.float64).take(self.idx, compute)


def gather(catalogue: CatalogueView, key: str, rows: np.ndarray) -> list[Any]:
    """Return a field's values for catalogue rows (None where absent)."""
    if key in _SIMPLE_FIELDS:
        source = getattr(catalogue, _SIMPLE_FIELDS[key])
        return [source[i] for i in rows.tolist()]
    if key == "publishedAt":
        return [None if math.isnan(t) else t for t in catalogue.published_at[rows].tolist()]
    if key == "status":
        return ["ACTIVE" if a else "INACTIVE" for a in catalogue.active[rows].tolist()]
    path = key.split(".")[1:]
    attributes = catalogue.attributes
    if len(path) == 1:
        return [attributes[i].get(path[0]) for i in rows.tolist()]
    return [dig(attributes[i], path) for i in rows.tolist()]


@dataclass(frozen=True, slots=True)
class Truth:
    """Per-candidate result of a test: where it is true, and where it is unknown (None: nowhere)."""

    true: np.ndarray
    unknown: np.ndarray | None = None

    def false(self) -> np.ndarray:
        return ~self.true if self.unknown is None else ~(self.true | self.unknown)


class Node(Protocol):
    def truth(self, scope: RuleScope) -> Truth: ...

    def static(self) -> bool:
        """Return whether the answer depends on the item alone (not on the request's context or time)."""
        ...


class Operand(Protocol):
    pos: int

    def resolve(self, scope: RuleScope) -> Any: ...


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any  # lists are tuples; durations are seconds
    pos: int = field(compare=False, repr=False)

    def resolve(self, scope: RuleScope) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class ContextRef:
    path: tuple[str, ...]
    pos: int = field(compare=False, repr=False)

    def resolve(self, scope: RuleScope) -> Any:
        value = dig(scope.context, self.path)
        if value is None:
            return MISSING
        return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True)
class ItemField:
    key: str  # id, title, categories, tags, publishedAt, status or attributes.<path>
    pos: int = field(compare=False, repr=False)

    def resolve(self, scope: RuleScope) -> Column:
        return Column(scope.column(self.key))


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # == != < <= > >= in contains
    left: Operand
    right: Operand

    def truth(self, scope: RuleScope) -> Truth:
        b = self.right.resolve(scope)
        if b is MISSING:
            return _unknown(scope)
        if isinstance(self.left, ItemField) and not isinstance(b, Column):
            fast = _against_scalar(self.op, self.left.key, b, scope)
            if fast is not None:
                return Truth(fast)
        a = self.left.resolve(scope)
        if a is MISSING:
            return _unknown(scope)
        return Truth(broadcast(PAIRWISE[self.op], len(scope), a, b))

    def static(self) -> bool:
        return _item_only(self.left, self.right)


def _against_scalar(op: str, key: str, value: Any, scope: RuleScope) -> np.ndarray | None:
    """Return the mask of `field op value` by a vectorised route, or None when there is none."""
    if is_number(value) and op in _NUMPY_OPS:
        return _NUMPY_OPS[op](scope.numbers(key), value)
    if op == "in":
        return np.fromiter(map(membership(value), scope.column(key)), dtype=bool, count=len(scope))
    if isinstance(value, str) and op in ("==", "!="):
        # A string equals only a string, so numpy's element-wise == already has the rules' meaning.
        same = np.asarray(scope.objects(key) == value, dtype=bool)
        return same if op == "==" else ~same
    return None


@dataclass(frozen=True, slots=True)
class Between:
    value: Operand
    low: Operand
    high: Operand

    def truth(self, scope: RuleScope) -> Truth:
        values = [self.value.resolve(scope), self.low.resolve(scope), self.high.resolve(scope)]
        if any(v is MISSING for v in values):
            return _unknown(scope)
        _, low, high = values
        if isinstance(self.value, ItemField) and is_number(low) and is_number(high):
            numbers = scope.numbers(self.value.key)
            return Truth((numbers >= low) & (numbers <= high))
        return Truth(broadcast(between, len(scope), *values))

    def static(self) -> bool:
        return _item_only(self.value, self.low, self.high)


@dataclass(frozen=True, slots=True)
class Within:
    value: Operand
    seconds: float

    def truth(self, scope: RuleScope) -> Truth:
        start, end = scope.now - self.seconds, scope.now + FUTURE_SKEW_S
        if _is_published(self.value):
            published = scope.published()
            return Truth((published >= start) & (published <= end))
        value = self.value.resolve(scope)
        if value is MISSING:
            return _unknown(scope)

        def inside(v: Any) -> bool:
            t = to_epoch(v)
            return t is not None and start <= t <= end

        return Truth(broadcast(inside, len(scope), value))

    def static(self) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Exists:
    value: Operand

    def truth(self, scope: RuleScope) -> Truth:
        value = self.value.resolve(scope)
        if value is MISSING:
            return Truth(np.zeros(len(scope), dtype=bool))
        return Truth(broadcast(present, len(scope), value))

    def static(self) -> bool:
        return _item_only(self.value)


@dataclass(frozen=True, slots=True)
class Truthy:
    value: Operand

    def truth(self, scope: RuleScope) -> Truth:
        value = self.value.resolve(scope)
        if value is MISSING:
            return _unknown(scope)
        return Truth(broadcast(bool, len(scope), value))

    def static(self) -> bool:
        return _item_only(self.value)


@dataclass(frozen=True, slots=True)
class Not:
    node: Node

    def truth(self, scope: RuleScope) -> Truth:
        inner = self.node.truth(scope)
        return Truth(inner.false(), inner.unknown)

    def static(self) -> bool:
        return self.node.static()


@dataclass(frozen=True, slots=True)
class And:
    left: Node
    right: Node

    def truth(self, scope: RuleScope) -> Truth:
        a, b = self.left.truth(scope), self.right.truth(scope)
        true = a.true & b.true
        if a.unknown is None and b.unknown is None:
            return Truth(true)
        return Truth(true, ~(true | a.false() | b.false()))

    def static(self) -> bool:
        return self.left.static() and self.right.static()


@dataclass(frozen=True, slots=True)
class Or:
    left: Node
    right: Node

    def truth(self, scope: RuleScope) -> Truth:
        a, b = self.left.truth(scope), self.right.truth(scope)
        true = a.true | b.true
        if a.unknown is None and b.unknown is None:
            return Truth(true)
        return Truth(true, ~(true | (a.false() & b.false())))

    def static(self) -> bool:
        return self.left.static() and self.right.static()


@dataclass(frozen=True, slots=True)
class Cached:
    """A test on the item alone, answered once per catalogue item and kept (see domain.recommend.columns)."""

    node: Node
    # repr, not the node itself: True == 1 in Python, but `x == true` and `x == 1` are different tests. Equal
    # tests written in different rules (or places) share one column.
    key: str

    def truth(self, scope: RuleScope) -> Truth:
        def compute(rows: np.ndarray) -> np.ndarray:
            # Static tests never see the context, so they are never unknown.
            return self.node.truth(RuleScope(rows, scope.catalogue, scope.context, scope.now)).true

        return Truth(lazy_column(scope.catalogue, ("rule", self.key), bool).take(scope.idx, compute))

    def static(self) -> bool:
        return True


def cache_static(node: Node) -> Node:
    """Return node with its largest item-only subtrees wrapped in Cached."""
    if node.static():
        return Cached(node, repr(node))
    if isinstance(node, Not):
        return Not(cache_static(node.node))
    if isinstance(node, (And, Or)):
        return type(node)(cache_static(node.left), cache_static(node.right))
    return node


def _item_only(*operands: Operand) -> bool:
    return not any(isinstance(o, ContextRef) for o in operands)


def _unknown(scope: RuleScope) -> Truth:
    return Truth(np.zeros(len(scope), dtype=bool), np.ones(len(scope), dtype=bool))


def _is_published(operand: Operand) -> bool:
    return isinstance(operand, ItemField) and operand.key == "publishedAt"


def broadcast(test: Callable[..., bool], n: int, *values: Any) -> np.ndarray:
    """Apply test per candidate to values that are Columns or scalars; return the bool mask."""
    if not any(isinstance(v, Column) for v in values):
        return np.full(n, bool(test(*values)), dtype=bool)
    columns = [v.values if isinstance(v, Column) else repeat(v, n) for v in values]
    return np.fromiter(map(test, *columns), dtype=bool, count=n)
