"""Value semantics of business rules: equality, order, membership, presence and times (see domain.recommend.rules).

Each function compares two plain values the way the rules language defines, for one candidate at a time; the
evaluator in `rule_eval` applies them per candidate when no vectorised route exists.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import numpy as np

_MS_THRESHOLD = 1e11  # epoch numbers above this are milliseconds (1e11 seconds is the year 5138)


def dig(mapping: Any, path: tuple[str, ...] | list[str]) -> Any:
    """Return the value at a dotted path in nested mappings, or None."""
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def is_number(value: Any) -> bool:
    """Return whether value is a number (booleans are not)."""
    kind = type(value)
    if kind is int or kind is float:  # the common case, without isinstance's walk
        return True
    return kind is not bool and isinstance(value, (int, float, np.integer, np.floating))


def equal(a: Any, b: Any) -> bool:
    """Return whether a == b in the rules' sense: same kind of value and equal; null equals only null."""
    if is_number(a) or is_number(b):
        return is_number(a) and is_number(b) and a == b
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(map(equal, a, b))
    return type(a) is type(b) and a == b


def _ordered(a: Any, b: Any) -> bool:
    return (is_number(a) and is_number(b)) or (isinstance(a, str) and isinstance(b, str))


def _less(a: Any, b: Any) -> bool:
    return _ordered(a, b) and a < b


def _less_equal(a: Any, b: Any) -> bool:
    return _ordered(a, b) and a <= b


def between(value: Any, low: Any, high: Any) -> bool:
    """Return whether low <= value <= high."""
    return _less_equal(low, value) and _less_equal(value, high)


def member(value: Any, values: tuple[Any, ...] | list[Any]) -> bool:
    """Return whether value equals an element of values."""
    if isinstance(value, str):
        return value in values
    return any(equal(value, v) for v in values)


def is_in(a: Any, b: Any) -> bool:
    """Return `a in b`: membership in a list (any label of a list a), or a substring of a string."""
    if isinstance(b, str):
        return isinstance(a, str) and a in b
    if not isinstance(b, (list, tuple)):
        return False
    if isinstance(a, (list, tuple)):
        return any(member(x, b) for x in a)
    return member(a, b)


def membership(b: Any) -> Callable[[Any], bool]:
    """Return a test for `x in b` with b fixed, answering string members from a set."""
    if not isinstance(b, (list, tuple)):
        return functools.partial(_is_in_swapped, b)
    labels = frozenset(v for v in b if isinstance(v, str))
    others = [v for v in b if not isinstance(v, str)]

    def one(x: Any) -> bool:
        return x in labels if isinstance(x, str) else any(equal(x, v) for v in others)

    def test(a: Any) -> bool:
        return any(map(one, a)) if isinstance(a, (list, tuple)) else one(a)

    return test


def _is_in_swapped(b: Any, a: Any) -> bool:
    return is_in(a, b)


def contains(a: Any, b: Any) -> bool:
    """Return `a contains b`: list a holds b (every element of a list b), or string a has substring b."""
    if isinstance(a, str):
        return isinstance(b, str) and b in a
    if not isinstance(a, (list, tuple)):
        return False
    if isinstance(b, (list, tuple)):
        return all(member(x, a) for x in b)
    return member(b, a)


def present(value: Any) -> bool:
    """Return whether a value exists: not null, '' or an empty list."""
    return value is not None and not (isinstance(value, (str, list, tuple)) and len(value) == 0)


PAIRWISE: dict[str, Callable[[Any, Any], bool]] = {
    "==": equal,
    "!=": lambda a, b: not equal(a, b),
    "<": _less,
    "<=": _less_equal,
    ">": lambda a, b: _less(b, a),
    ">=": lambda a, b: _less_equal(b, a),
    "in": is_in,
    "contains": contains,
}


def to_epoch(value: Any) -> float | None:
    """Return a time (epoch seconds or milliseconds, ISO-8601 text, datetime) as epoch seconds, or None."""
    if is_number(value):
        seconds = float(value)
        if math.isnan(seconds):
            return None
        return seconds / 1000.0 if abs(seconds) > _MS_THRESHOLD else seconds
    if isinstance(value, str):
        return _parse_iso(value)
    if isinstance(value, datetime):
        return _aware(value).timestamp()
    return None


@functools.lru_cache(maxsize=8192)
def _parse_iso(text: str) -> float | None:
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return _aware(parsed).timestamp()


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
