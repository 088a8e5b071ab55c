"""Business rules: a small, safe expression language over item fields and the request context.

The `rules` filter keeps an item only when every expression of the scenario holds. An expression is read by a
tokenizer and a recursive-descent parser (never `eval`), compiled once per text (`compile_rule` is cached) and
evaluated over a whole candidate array at once (`rule_eval`). Tests that depend on the item alone are answered
once per item and catalogue and kept (`columns`). Config validation calls `check_rule(text)`.

Examples:
    publishedAt within 72h
    attributes.price between 10 and 50 and attributes.currency == 'EUR'
    'sports' in categories or tags contains "featured"
    categories not in ['adult', 'gambling']
    attributes.region == context.region
    not (attributes.ageRating >= 18) or context.adult == true
    attributes.discount exists and status == 'ACTIVE'
    publishedAt > '2024-01-01T00:00:00Z' and attributes.durationSeconds <= 10m

Grammar (keywords are case-insensitive; `and` binds tighter than `or`, `not` tighter than both):
    rule     := or
    or       := and ('or' and)*
    and      := not ('and' not)*
    not      := 'not' not | '(' or ')' | test
    test     := operand [check]
    check    := ('==' | '!=' | '<' | '<=' | '>' | '>=') operand
              | ['not'] 'in' operand          | ['not'] 'contains' operand
              | ['not'] 'between' operand 'and' operand
              | ['not'] 'within' DURATION     | ['not'] 'exists'
    operand  := field | 'context.' name ('.' name)* | literal | '[' [literal (',' literal)* [',']] ']'
    field    := 'id' | 'title' | 'categories' | 'tags' | 'publishedAt' | 'status' | 'attributes.' name ('.' name)*
    literal  := NUMBER | 'string' | "string" | true | false | null | DURATION (45s, 30m, 72h, 7d, 2w; in seconds)

Meaning:
- `==` holds for two equal numbers, strings, booleans or lists, and for null == null (an absent attribute is
  null); mixed types are never equal; `!=` is exactly `not ==`.
- `<`, `<=`, `>`, `>=` and `between` (inclusive) hold only for two numbers or two strings, never with null.
- `x in list`: x equals an element; a list field (categories, tags) is `in` a list when any of its labels is;
  `'sports' in categories` tests one label; `x in 'text'` tests a substring.
- `list contains x`: the list holds x (every element of x, given a list); `title contains 'live'` is a substring.
- `within D`: the time (publishedAt, or an attribute holding ISO-8601 text or epoch seconds) lies in the D before
  the request time. Up to 5 minutes ahead still counts (clock skew); anything later is not within, so embargoed
  items stay out. An unknown time is not within.
- `exists`: the value is present and not null, '' or []. A bare operand tests truthiness (`attributes.featured`).
- `status` is 'ACTIVE' or 'INACTIVE'. `publishedAt` is epoch seconds and compares with an ISO-8601 string literal.
- `context.region` reads the request context. A test against a context key that is absent or null is *unknown*:
  not unknown = unknown, unknown and false = false, unknown or true = true, and a rule that ends unknown holds.
  So a request without context never empties the feed; `context.x exists` is plainly false when it is absent.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from domain.errors import BadInput
from domain.recommend.rule_eval import (
    And,
    Between,
    Compare,
    ContextRef,
    Exists,
    ItemField,
    Literal,
    Node,
    Not,
    Operand,
    Or,
    RuleScope,
    Truthy,
    Within,
    cache_static,
)
from domain.recommend.rule_values import to_epoch

if TYPE_CHECKING:
    from collections.abc import Mapping

    from domain.recommend.base import CatalogueView

__all__ = ["CompiledRule", "RuleError", "RuleScope", "check_rule", "compile_rule", "to_epoch"]

DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
ITEM_FIELDS = frozenset({"id", "title", "categories", "tags", "publishedAt", "status"})
MAX_DEPTH = 32  # nesting of parentheses and `not`; keeps recursion far from Python's limit
_NEGATABLE = frozenset({"in", "contains", "between", "within", "exists"})
_KEYWORDS = frozenset({"and", "or", "not", *_NEGATABLE})
_CONSTANTS = {"true": True, "false": False, "null": None}
_HINTS = {"&": "use 'and'", "|": "use 'or'", "!": "use 'not' or '!='", "=": "use '==' to compare"}

MAX_NUMBER_CHARS = 64
# ASCII digits only: `\d` also matches "²" (which int() refuses) and the digits of other scripts.
_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<duration>[0-9]+(?:\.[0-9]+)?[smhdw](?!\w))
  | (?P<number>-?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?(?![\w.]))
  | (?P<word>-?[0-9][\w.]*)
  | (?P<string>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
  | (?P<open>['"])
  | (?P<name>[A-Za-z_]\w*(?:\.\w+)*)
  | (?P<op>==|!=|<=|>=|<|>)
  | (?P<punct>[()\[\],])
  | (?P<bad>.)
    """,
    re.VERBOSE | re.DOTALL,
)


class RuleError(BadInput):
    """A rule that does not parse: the message and the 0-based character position at fault."""

    def __init__(self, message: str, position: int) -> None:
        super().__init__(f"{message} (at position {position})")
        self.reason = message
        self.position = position


@dataclass(frozen=True, slots=True)
class Token:
    kind: str  # name, kw, number, duration, string, const, op, punct, end
    text: str
    pos: int
    value: Any = None


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A parsed rule, ready to evaluate over candidate arrays."""

    text: str
    root: Node

    def mask(self, scope: RuleScope) -> np.ndarray:
        """Return a bool mask over the scope's candidates: True where the rule holds (or is unknown)."""
        truth = self.root.truth(scope)
        return truth.true if truth.unknown is None else truth.true | truth.unknown

    def evaluate(
        self, idx: np.ndarray, catalogue: CatalogueView, context: Mapping[str, Any] | None, now: float
    ) -> np.ndarray:
        """Return the mask for candidates idx at request time now (epoch seconds)."""
        return self.mask(RuleScope(idx, catalogue, context or {}, now))


@functools.lru_cache(maxsize=1024)
def compile_rule(text: str) -> CompiledRule:
    """Parse a rule into a CompiledRule, or raise RuleError; cached by text so requests never re-parse."""
    return CompiledRule(text, cache_static(_Parser(text).parse()))


def check_rule(text: str) -> None:
    """Raise RuleError when text is not a valid rule (for config validation)."""
    compile_rule(text)


def tokenize(text: str) -> list[Token]:
    """Split a rule into tokens, ending with an `end` token at len(text)."""
    tokens = [tok for tok in _tokens(text) if tok.kind != "space"]
    tokens.append(Token("end", "", len(text)))
    return tokens


def _tokens(text: str) -> Iterator[Token]:
    for match in _TOKEN.finditer(text):
        kind, raw, pos = match.lastgroup or "bad", match.group(), match.start()
        if kind == "word":
            raise RuleError(f"{raw!r} is not a number or a duration (units: s, m, h, d, w)", pos)
        if kind == "open":
            raise RuleError("unterminated string", pos)
        if kind == "bad":
            hint = _HINTS.get(raw)
            raise RuleError(f"unexpected character {raw!r}" + (f"; {hint}" if hint else ""), pos)
        yield _token(kind, raw, pos)


def _token(kind: str, raw: str, pos: int) -> Token:
    if kind == "number":
        if len(raw) > MAX_NUMBER_CHARS:  # int() refuses thousands of digits with a ValueError, not a RuleError
            raise RuleError(f"a number has at most {MAX_NUMBER_CHARS} characters", pos)
        return Token(kind, raw, pos, float(raw) if any(c in raw for c in ".eE") else int(raw))
    if kind == "duration":
        return Token(kind, raw, pos, float(raw[:-1]) * DURATION_UNITS[raw[-1]])
    if kind == "string":
        return Token(kind, raw, pos, _unescape(raw[1:-1]))
    if kind == "name" and "." not in raw:
        word = raw.lower()
        if word in _CONSTANTS:
            return Token("const", raw, pos, _CONSTANTS[word])
        if word in _KEYWORDS:
            return Token("kw", raw, pos, word)
    return Token(kind, raw, pos, raw)


def _unescape(body: str) -> str:
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t"}.get(m[1], m[1]), body, flags=re.DOTALL)


class _Parser:
    """Recursive descent over the grammar in the module docstring."""

    def __init__(self, text: str) -> None:
        self.tokens = tokenize(text)
        self.at = 0
        self.depth = 0

    def parse(self) -> Node:
        if self.peek().kind == "end":
            raise RuleError("empty rule", 0)
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            raise RuleError(f"unexpected {_describe(tok)}; expected 'and', 'or' or the end of the rule", tok.pos)
        return node

    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.at + ahead, len(self.tokens) - 1)]

    def next(self) -> Token:
        tok = self.peek()
        self.at += 1
        return tok

    def accept(self, kind: str, value: Any) -> bool:
        tok = self.peek()
        if tok.kind == kind and tok.value == value:
            self.at += 1
            return True
        return False

    def nest(self, pos: int) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise RuleError(f"rule nests deeper than {MAX_DEPTH} levels", pos)

    def or_(self) -> Node:
        node = self.and_()
        while self.accept("kw", "or"):
            node = Or(node, self.and_())
        return node

    def and_(self) -> Node:
        node = self.not_()
        while self.accept("kw", "and"):
            node = And(node, self.not_())
        return node

    def not_(self) -> Node:
        tok = self.peek()
        if self.accept("kw", "not"):
            self.nest(tok.pos)
            node: Node = Not(self.not_())
        elif self.accept("punct", "("):
            self.nest(tok.pos)
            node = self.or_()
            if not self.accept("punct", ")"):
                raise RuleError(f"expected ')' to close the '(' at {tok.pos}, found {_describe(self.peek())}",
                                self.peek().pos)
        else:
            return self.test()
        self.depth -= 1
        return node

    def test(self) -> Node:
        left = self.operand()
        tok = self.peek()
        if tok.kind == "op":
            self.next()
            right = self.operand()
            return Compare(tok.value, _as_time(right, left), _as_time(left, right))
        after = self.peek(1)
        negate = tok.kind == "kw" and tok.value == "not" and after.kind == "kw" and after.value in _NEGATABLE
        if negate:
            self.next()
            tok = self.peek()
        if tok.kind != "kw" or tok.value not in _NEGATABLE:
            return Truthy(left)
        self.next()
        node = self.check(tok.value, left, tok)
        return Not(node) if negate else node

    def check(self, word: str, left: Operand, tok: Token) -> Node:
        if word == "exists":
            return Exists(_dynamic(left, tok))
        if word == "within":
            return Within(_dynamic(left, tok), self.duration())
        if word == "between":
            low = self.operand()
            if not self.accept("kw", "and"):
                raise RuleError(f"expected 'and' in 'between', found {_describe(self.peek())}", self.peek().pos)
            high = self.operand()
            return Between(left, _as_time(left, low), _as_time(left, high))
        right = self.operand()
        if word == "in" and isinstance(right, Literal) and not isinstance(right.value, (tuple, str)):
            raise RuleError("'in' needs a list like ['a', 'b'], a list field or a string", right.pos)
        return Compare(word, left, right)

    def duration(self) -> float:
        tok = self.next()
        if tok.kind != "duration":
            raise RuleError(f"'within' needs a duration like 72h, 30m or 7d, found {_describe(tok)}", tok.pos)
        return tok.value

    def operand(self) -> Operand:
        tok = self.next()
        if tok.kind in ("number", "duration", "string", "const"):
            return Literal(tok.value, tok.pos)
        if tok.kind == "name":
            return _reference(tok)
        if tok.kind == "punct" and tok.value == "[":
            return Literal(self.items(tok), tok.pos)
        raise RuleError(f"expected a field, a value or '(', found {_describe(tok)}", tok.pos)

    def items(self, opening: Token) -> tuple[Any, ...]:
        values: list[Any] = []
        while not self.accept("punct", "]"):
            tok = self.next()
            if tok.kind not in ("number", "duration", "string", "const"):
                raise RuleError(f"expected a value or ']' in the list opened at {opening.pos}, found "
                                f"{_describe(tok)}", tok.pos)
            values.append(tok.value)
            if not self.accept("punct", ",") and self.peek().value != "]":
                raise RuleError(f"expected ',' or ']' in the list, found {_describe(self.peek())}", self.peek().pos)
        return tuple(values)


def _reference(tok: Token) -> Operand:
    head, _, rest = tok.text.partition(".")
    if head == "context":
        if not rest:
            raise RuleError("name a context key, e.g. context.region", tok.pos)
        return ContextRef(tuple(rest.split(".")), tok.pos)
    if head == "attributes":
        if not rest:
            raise RuleError("name an attribute, e.g. attributes.price", tok.pos)
        return ItemField(tok.text, tok.pos)
    if tok.text in ITEM_FIELDS:
        return ItemField(tok.text, tok.pos)
    known = ", ".join(sorted(ITEM_FIELDS))
    raise RuleError(f"unknown field {tok.text!r}; use {known}, attributes.<name> or context.<name>", tok.pos)


def _dynamic(operand: Operand, tok: Token) -> Operand:
    if isinstance(operand, Literal):
        raise RuleError(f"'{tok.value}' applies to a field or context key, not a literal", operand.pos)
    return operand


def _as_time(other: Operand, operand: Operand) -> Operand:
    """Return operand as epoch seconds when it is a date string compared with publishedAt."""
    is_published = isinstance(other, ItemField) and other.key == "publishedAt"
    if not (is_published and isinstance(operand, Literal) and isinstance(operand.value, str)):
        return operand
    epoch = to_epoch(operand.value)
    if epoch is None:
        raise RuleError("publishedAt compares with an ISO-8601 date like '2024-05-01T00:00:00Z'", operand.pos)
    return Literal(epoch, operand.pos)


def _describe(tok: Token) -> str:
    return "the end of the rule" if tok.kind == "end" else repr(tok.text)
