"""Evaluating compiled business rules: operands, three-valued tests and value semantics.

The language and its meaning are documented in `domain.recommend.rules`, which parses text into these nodes.
A node answers for all candidates at once with a `Truth` (true mask, unknown mask); unknown comes only from a
request context key that is absent, so a rule never empties a feed for a request that lacks context.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import repeat
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

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
    """The candidates one evaluation covers, with each field's values gathered once for all rules."""

    def __init__(self, idx: np.ndarray, catalogue: CatalogueView, context: Mapping[str, Any], now: float) -> None:
        self.idx = np.asarray(idx, dtype=np.int64)
        self.rows: list[int] = self.idx.tolist()
        self.catalogue = catalogue
        self.context = context
        self.now = float(now)
        self._columns: dict[str, list[Any]] = {}
        self._numbers: dict[str, np.ndarray] = {}
        self._published: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def published(self) -> np.ndarray:
        """Return the candidates' publish times (epoch seconds, NaN when unknown)."""
        if self._published is None:
            self._published = self.catalogue.published_at[self.idx]
        return self._published

    def column(self, key: str) -> list[Any]:
        """Return one field's values for the candidates (None where absent)."""
        values = self._columns.get(key)
        if values is None:
            values = self._columns[key] = self._gather(key)
        return values

    def numbers(self, key: str) -> np.ndarray:
        """Return one field's values as float64 (NaN where the value is not a number)."""
        if key == "publishedAt":
            return self.published()
        values = self._numbers.get(key)
        if values is None:
            nan = math.nan
            values = np.array([v if is_number(v) else nan for v in self.column(key)], dtype=np.float64)
            self._numbers[key] = values
        return values

    def _gather(self, key: str) -> list[Any]:
        rows = self.rows
        if key in _SIMPLE_FIELDS:
            source = getattr(self.catalogue, _SIMPLE_FIELDS[key])
            return [source[i] for i in rows]
        if key == "publishedAt":
            return [None if math.isnan(t) else t for t in self.published().tolist()]
        if key == "status":
            return ["ACTIVE" if a else "INACTIVE" for a in self.catalogue.active[self.idx].tolist()]
        path = key.split(".")[1:]
        attributes = self.catalogue.attributes
        if len(path) == 1:
            return [attributes[i].get(path[0]) for i in rows]
        return [dig(attributes[i], path) for i in rows]


@dataclass(frozen=True, slots=True)
class Truth:
    """Per-candidate result of a test: where it is true, and where it is unknown (None: nowhere)."""

    true: np.ndarray
    unknown: np.ndarray | None = None

    def false(self) -> np.ndarray:
        return ~self.true if self.unknown is None else ~(self.true | self.unknown)


class Node(Protocol):
    def truth(self, scope: RuleScope) -> Truth: ...


class Operand(Protocol):
    pos: int

    def resolve(self, scope: RuleScope) -> Any: ...


@dataclass(frozen=True, slots=True)
class Literal:
    value: Any  # lists are tuples; durations are seconds
    pos: int

    def resolve(self, scope: RuleScope) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class ContextRef:
    path: tuple[str, ...]
    pos: int

    def resolve(self, scope: RuleScope) -> Any:
        value = dig(scope.context, self.path)
        if value is None:
            return MISSING
        return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True, slots=True)
class ItemField:
    key: str  # id, title, categories, tags, publishedAt, status or attributes.<path>
    pos: int

    def resolve(self, scope: RuleScope) -> Column:
        return Column(scope.column(self.key))


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # == != < <= > >= in contains
    left: Operand
    right: Operand

    def truth(self, scope: RuleScope) -> Truth:
        a, b = self.left.resolve(scope), self.right.resolve(scope)
        if a is MISSING or b is MISSING:
            return _unknown(scope)
        if isinstance(a, Column) and not isinstance(b, Column) and isinstance(self.left, ItemField):
            fast = _against_scalar(self.op, self.left.key, a, b, scope)
            if fast is not None:
                return Truth(fast)
        return Truth(broadcast(PAIRWISE[self.op], len(scope), a, b))


def _against_scalar(op: str, key: str, column: Column, value: Any, scope: RuleScope) -> np.ndarray | None:
    """Return the mask of `field op value` by a vectorised route, or None when there is none."""
    n = len(scope)
    if is_number(value) and op in _NUMPY_OPS:
        return _NUMPY_OPS[op](scope.numbers(key), value)
    if op == "in":
        return np.fromiter(map(membership(value), column.values), dtype=bool, count=n)
    if isinstance(value, str) and op in ("==", "!="):
        # A string equals only a string, so plain == per value already has the rules' meaning.
        same = np.fromiter(map(operator.eq, column.values, repeat(value)), dtype=bool, count=n)
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


@dataclass(frozen=True, slots=True)
class Exists:
    value: Operand

    def truth(self, scope: RuleScope) -> Truth:
        value = self.value.resolve(scope)
        if value is MISSING:
            return Truth(np.zeros(len(scope), dtype=bool))
        return Truth(broadcast(present, len(scope), value))


@dataclass(frozen=True, slots=True)
class Truthy:
    value: Operand

    def truth(self, scope: RuleScope) -> Truth:
        value = self.value.resolve(scope)
        if value is MISSING:
            return _unknown(scope)
        return Truth(broadcast(bool, len(scope), value))


@dataclass(frozen=True, slots=True)
class Not:
    node: Node

    def truth(self, scope: RuleScope) -> Truth:
        inner = self.node.truth(scope)
        return Truth(inner.false(), inner.unknown)


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
