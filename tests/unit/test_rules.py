"""Business rules: parsing, precedence, every operator, context semantics and syntax errors with positions."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from domain.errors import BadInput
from domain.recommend.base import CatalogueView
from domain.recommend.rules import RuleError, check_rule, compile_rule, tokenize

NOW = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)

# a: fresh sports item; b: old news item; c: inactive, undated, two categories; d: dated an hour ahead.
CATALOGUE = CatalogueView.from_items([
    {"item_id": "a", "title": "Alpha Match", "categories": ["sports"], "tags": ["live"],
     "attributes": {"price": 10, "region": "EU", "dims": {"w": 2}}, "published_at": NOW - timedelta(hours=1)},
    {"item_id": "b", "title": "Budget Report", "categories": ["news", "economy"], "tags": [],
     "attributes": {"price": 60, "region": "US"}, "published_at": NOW - timedelta(hours=100)},
    {"item_id": "c", "title": "Cup Final", "categories": ["sports", "news"], "tags": ["featured"],
     "attributes": {}, "published_at": None, "status": "INACTIVE"},
    {"item_id": "d", "title": "Delta", "categories": [], "tags": [],
     "attributes": {"price": 25, "region": "EU", "featured": True}, "published_at": NOW + timedelta(hours=1)},
])


def holds(text: str, context: dict | None = None) -> list[bool]:
    mask = compile_rule(text).evaluate(np.arange(4), CATALOGUE, context, NOW.timestamp())
    return mask.tolist()


T, F = True, False


@pytest.mark.parametrize(("text", "expected"), [
    ("publishedAt within 72h", [T, F, F, F]),
    ("publishedAt within 5d", [T, T, F, F]),
    ("publishedAt not within 72h", [F, T, T, T]),
    ("attributes.price between 10 and 50", [T, F, F, T]),
    ("attributes.price not between 10 and 50", [F, T, T, F]),
    ("attributes.price exists", [T, T, F, T]),
    ("not attributes.price exists", [F, F, T, F]),
    ("attributes.price not exists", [F, F, T, F]),
    ("categories in ['economy', 'music']", [F, T, F, F]),
    ("categories not in ['sports']", [F, T, F, T]),
    ("attributes.region in ['EU', 'APAC']", [T, F, F, T]),
    ("'sports' in categories", [T, F, T, F]),
    ("tags contains 'featured'", [F, F, T, F]),
    ("categories contains ['sports', 'news']", [F, F, T, F]),
    ("title contains 'Final'", [F, F, T, F]),
    ("status == 'ACTIVE'", [T, T, F, T]),
    ("status != 'ACTIVE'", [F, F, T, F]),
    ("attributes.price != 10", [F, T, T, T]),
    ("attributes.price >= 25", [F, T, F, T]),
    ("attributes.price < 1m", [T, F, F, T]),
    ("attributes.dims.w >= 2", [T, F, F, F]),
    ("attributes.featured", [F, F, F, T]),
    ("attributes.featured == true", [F, F, F, T]),
    ("attributes.region == 1", [F, F, F, F]),
    ("id in [\"a\", \"c\",]", [T, F, T, F]),
    ("publishedAt > '2024-04-29T10:00:00Z'", [T, F, F, T]),
    ("publishedAt between '2024-04-01' and '2024-05-01T12:00:00+00:00'", [T, T, F, F]),
    ("attributes.region == 'EU' AND NOT tags contains 'live'", [F, F, F, T]),
])
def test_expressions(text: str, expected: list[bool]) -> None:
    assert holds(text) == expected


def test_and_binds_tighter_than_or() -> None:
    assert holds("'news' in categories or 'sports' in categories and attributes.price > 20") == [F, T, T, F]
    assert holds("('news' in categories or 'sports' in categories) and attributes.price > 20") == [F, T, F, F]


def test_not_binds_tighter_than_and() -> None:
    assert holds("not 'sports' in categories and attributes.price exists") == [F, T, F, T]
    assert holds("not ('sports' in categories and attributes.price exists)") == [F, T, T, T]


def test_within_allows_five_minutes_of_clock_skew() -> None:
    skewed = CatalogueView.from_items([
        {"item_id": "soon", "published_at": NOW + timedelta(minutes=4)},
        {"item_id": "later", "published_at": NOW + timedelta(minutes=6)},
        {"item_id": "edge", "published_at": NOW - timedelta(hours=72)},
    ])
    mask = compile_rule("publishedAt within 72h").evaluate(np.arange(3), skewed, {}, NOW.timestamp())
    assert mask.tolist() == [T, F, T]


def test_within_reads_iso_and_epoch_attributes() -> None:
    dated = CatalogueView.from_items([
        {"item_id": "iso", "attributes": {"eventAt": "2024-05-01T06:00:00Z"}},
        {"item_id": "epoch", "attributes": {"eventAt": (NOW - timedelta(days=3)).timestamp()}},
        {"item_id": "millis", "attributes": {"eventAt": (NOW - timedelta(hours=2)).timestamp() * 1000}},
        {"item_id": "junk", "attributes": {"eventAt": "soon"}},
    ])
    mask = compile_rule("attributes.eventAt within 1d").evaluate(np.arange(4), dated, {}, NOW.timestamp())
    assert mask.tolist() == [T, F, T, F]


def test_context_comparison_when_present() -> None:
    assert holds("attributes.region == context.region", {"region": "EU"}) == [T, F, F, T]
    assert holds("attributes.region in context.regions", {"regions": ["US", "APAC"]}) == [F, T, F, F]
    assert holds("attributes.price < context.budget.max", {"budget": {"max": 30}}) == [T, F, F, T]


def test_missing_context_skips_the_test() -> None:
    assert holds("attributes.region == context.region") == [T, T, T, T]
    assert holds("attributes.region == context.region", {"region": None}) == [T, T, T, T]
    assert holds("not (attributes.region == context.region)") == [T, T, T, T]
    # Unknown and false is false, so the rest of the rule still applies.
    assert holds("attributes.region == context.region and attributes.price < 20") == [T, F, F, F]
    assert holds("attributes.region == context.region or attributes.price < 20") == [T, T, T, T]


def test_context_exists_is_false_when_absent() -> None:
    assert holds("context.region exists") == [F, F, F, F]
    assert holds("context.region exists", {"region": "EU"}) == [T, T, T, T]


def test_answers_kept_per_catalogue_fill_in_as_candidates_arrive() -> None:
    rule = compile_rule("attributes.price between 10 and 50 or 'news' in categories")
    first = rule.evaluate(np.array([2, 0]), CATALOGUE, {}, NOW.timestamp())
    again = rule.evaluate(np.array([3, 0, 1, 2, 0]), CATALOGUE, {}, NOW.timestamp())
    assert first.tolist() == [T, T]
    assert again.tolist() == [T, T, T, T, T]
    assert holds("attributes.price between 10 and 50 and not 'news' in categories") == [T, F, F, T]


def test_tests_that_look_alike_to_python_keep_separate_answers() -> None:
    # True == 1 in Python, so a cache keyed on the parsed tests themselves would mix these two up.
    flags = CatalogueView.from_items([{"item_id": "t", "attributes": {"x": True}},
                                      {"item_id": "one", "attributes": {"x": 1}}])
    idx = np.arange(2)
    assert compile_rule("attributes.x == true").evaluate(idx, flags, {}, 0.0).tolist() == [T, F]
    assert compile_rule("attributes.x == 1").evaluate(idx, flags, {}, 0.0).tolist() == [F, T]
    assert compile_rule("attributes.x in [1]").evaluate(idx, flags, {}, 0.0).tolist() == [F, T]
    assert compile_rule("attributes.x in [true]").evaluate(idx, flags, {}, 0.0).tolist() == [T, F]


def test_compiled_rules_are_cached_by_text() -> None:
    assert compile_rule("publishedAt within 7d") is compile_rule("publishedAt within 7d")


def test_tokenizer_reads_durations_strings_and_keywords() -> None:
    kinds = [(t.kind, t.value) for t in tokenize("x within 1.5h and 'it\\'s' IN [2, -3.5] or null")]
    assert kinds == [
        ("name", "x"), ("kw", "within"), ("duration", 5400.0), ("kw", "and"), ("string", "it's"), ("kw", "in"),
        ("punct", "["), ("number", 2), ("punct", ","), ("number", -3.5), ("punct", "]"), ("kw", "or"),
        ("const", None), ("end", None),
    ]


def test_check_rule_accepts_the_template_rule() -> None:
    assert check_rule("publishedAt within 72h") is None


@pytest.mark.parametrize(("text", "position", "words"), [
    ("attributes.price >", 18, "expected a field, a value"),
    ("attributes.price = 5", 17, "'=='"),
    ("attributes.price && tags", 17, "'and'"),
    ("publishedAt within 72", 19, "duration"),
    ("(attributes.price > 1", 21, "expected ')'"),
    ("foo == 1", 0, "unknown field 'foo'"),
    ("attributes == 1", 0, "name an attribute"),
    ("tags contains 'open", 14, "unterminated string"),
    ("attributes.price between 1 50", 27, "expected 'and'"),
    ("attributes.price > 1 attributes.price", 21, "unexpected 'attributes.price'"),
    ("publishedAt > 'yesterday'", 14, "ISO-8601"),
    ("attributes.price > 10x", 19, "'10x' is not a number"),
    ("status in 5", 10, "'in' needs a list"),
    ("tags in [1, status]", 12, "expected a value"),
    ("'x' exists", 0, "not a literal"),
    ("   ", 0, "empty rule"),
    ("not", 3, "expected a field"),
    ("(" * 40 + "status" + ")" * 40, 32, "nests deeper"),
])
def test_syntax_errors_name_the_position(text: str, position: int, words: str) -> None:
    with pytest.raises(RuleError) as caught:
        check_rule(text)
    assert caught.value.position == position
    assert words in caught.value.reason
    assert f"(at position {position})" in str(caught.value)


def test_rule_error_is_bad_user_input() -> None:
    with pytest.raises(BadInput) as caught:
        check_rule("publishedAt within")
    assert caught.value.code == "BAD_USER_INPUT"


@pytest.mark.parametrize("text", ["publishedAt > ²d", "attributes.n > ²", "attributes.n == ٣",
                                  "attributes.n > 9" + "9" * 5000])
def test_cursor_like_digits_in_a_rule_are_a_rule_error(text: str) -> None:
    # "²" passes isdigit() and \d but int()/float() refuse it; 5,000 digits pass int()'s own limit.
    with pytest.raises(RuleError):
        check_rule(text)
