"""Pure functions: per-event validation, profile key escaping and decay math, cursors and page sizes."""

from __future__ import annotations

import dataclasses
import math
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace

import pytest

from domain.errors import BadInput
from domain.events import InteractionData, check_event
from domain.ids import check_first, decode_cursor, encode_cursor
from domain.profiles import (
    EPOCH, HALF_LIFE_SECONDS, ProfileEvent, event_weight, label_deltas, shifted, view,
)
from models.cache import ItemMeta

NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
OK = InteractionData(scenario_id="sc_1", user_id="u1", item_id="i1", type="VIEW", timestamp=NOW - timedelta(hours=1))


def check(**changes) -> tuple[str, str] | None:
    return check_event(dataclasses.replace(OK, **changes), NOW)


def field(**changes) -> str | None:
    problem = check(**changes)
    return None if problem is None else problem[0]


# --- check_event ----------------------------------------------------------------------------------------------


def test_valid_event_passes():
    assert check() is None
    assert check(timestamp=None) is None
    assert check(context={"page": "home"}, request_id="r1", event_id="e1") is None


@pytest.mark.parametrize("name,attr", [("userId", "user_id"), ("itemId", "item_id"), ("scenarioId", "scenario_id")])
@pytest.mark.parametrize("value", ["", "   ", "x" * 257, None, 5])
def test_blank_long_or_non_string_ids(name, attr, value):
    problem = check(**{attr: value})
    assert problem is not None and problem[0] == name and problem[1]


def test_id_of_256_characters_is_fine():
    assert check(user_id="u" * 256, item_id="i" * 256) is None


@pytest.mark.parametrize("name,attr", [("eventId", "event_id"), ("requestId", "request_id")])
def test_optional_ids_must_not_be_blank_when_given(name, attr):
    assert field(**{attr: ""}) == name
    assert field(**{attr: "  "}) == name
    assert field(**{attr: "e" * 257}) == name
    assert field(**{attr: "e" * 256}) is None


def test_unknown_type():
    assert field(type="HOVER") == "type"
    assert field(type="view") == "type"


@pytest.mark.parametrize(
    "kind,value,ok",
    [
        ("RATING", None, False), ("RATING", 0, True), ("RATING", 10, True), ("RATING", 10.5, False),
        ("RATING", 11, False), ("RATING", -0.5, False), ("RATING", 4.5, True),
        ("WATCH", None, False), ("WATCH", 0, True), ("WATCH", 30.5, True), ("WATCH", -1, False),
        ("WATCH", 86_400, True), ("WATCH", 86_401, False),
        ("VIEW", None, True), ("VIEW", 3, True), ("VIEW", -1, False),
        ("PURCHASE", 19.99, True), ("LIKE", None, True), ("DISLIKE", None, True), ("SKIP", 2, True),
        ("RATING", math.nan, False), ("WATCH", math.inf, False), ("VIEW", True, False),
    ],
)
def test_value_rules(kind, value, ok):
    assert field(type=kind, value=value) == (None if ok else "value")


def test_future_timestamps():
    assert field(timestamp=NOW + timedelta(minutes=5)) is None
    assert field(timestamp=NOW + timedelta(minutes=4, seconds=59)) is None
    assert field(timestamp=NOW + timedelta(minutes=5, seconds=1)) == "timestamp"
    assert field(timestamp=NOW + timedelta(days=1)) == "timestamp"
    assert field(timestamp=NOW - timedelta(days=3650)) is None


def test_future_timestamp_with_an_offset_is_compared_in_utc():
    plus_two = timezone(timedelta(hours=2))
    # 14:04 at +02:00 is 12:04 UTC: within tolerance; 14:10 at +02:00 is 12:10 UTC: too far ahead.
    assert field(timestamp=datetime(2025, 6, 1, 14, 4, tzinfo=plus_two)) is None
    assert field(timestamp=datetime(2025, 6, 1, 14, 10, tzinfo=plus_two)) == "timestamp"
    # 11:00 at -02:00 is 13:00 UTC.
    assert field(timestamp=datetime(2025, 6, 1, 11, 0, tzinfo=timezone(timedelta(hours=-2)))) == "timestamp"


def test_context_must_be_an_object():
    assert field(context=[1, 2]) == "context"
    assert field(context="text") == "context"
    assert field(context={}) is None


def deep(levels: int) -> dict:
    """Return an object `levels` levels deep (the outer object is level 1)."""
    value: dict = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"next": value}
    return value


@pytest.mark.parametrize("context", [
    deep(5),
    {"a": [[[["five levels"]]]]},
    {f"k{n}": n for n in range(65)},
    {"list": list(range(64))},  # 65 entries: the key and 64 elements
    {"text": "x" * 4100},
])
def test_event_context_beyond_its_depth_entries_or_size_is_refused(context):
    problem = check(context=context)
    assert problem is not None and problem[0] == "context" and "context" in problem[1]


@pytest.mark.parametrize("context", [
    deep(4), {f"k{n}": n for n in range(64)}, {"list": list(range(63))}, {"text": "x" * 4000},
])
def test_event_context_within_its_bounds_passes(context):
    assert check(context=context) is None


def test_first_problem_is_reported_in_field_order():
    assert field(user_id="", item_id="", type="NOPE") == "userId"
    assert field(type="RATING", value=None, timestamp=NOW + timedelta(hours=1)) == "value"


# --- profile decay -----------------------------------------------------------------------------------------


def test_shifted_doubles_every_half_life():
    assert shifted(3.0, EPOCH) == pytest.approx(3.0)
    assert shifted(3.0, EPOCH + timedelta(seconds=HALF_LIFE_SECONDS)) == pytest.approx(6.0)
    assert shifted(3.0, EPOCH + timedelta(seconds=2 * HALF_LIFE_SECONDS)) == pytest.approx(12.0)
    assert shifted(3.0, EPOCH - timedelta(seconds=HALF_LIFE_SECONDS)) == pytest.approx(1.5)


def meta(categories=("c",), tags=(), duration=None) -> ItemMeta:
    return ItemMeta(scenarios=("s",), categories=tuple(categories), tags=tuple(tags), duration_seconds=duration)


def pevent(kind="VIEW", value=None, ts=NOW, item="i", categories=("c",), tags=(), duration=None) -> ProfileEvent:
    return ProfileEvent("u", "s", item, kind, value, ts, meta(categories, tags, duration))


def test_event_weight_uses_scenario_weights_then_defaults():
    assert event_weight(pevent("LIKE"), {}) == 4.0
    assert event_weight(pevent("LIKE"), {"LIKE": 7}) == 7.0
    assert event_weight(pevent("DISLIKE"), {}) == -4.0
    assert event_weight(pevent("RATING", 5), {"RATING": 3}) == pytest.approx(3.0)
    assert event_weight(pevent("RATING", 2.5), {"RATING": 3}) == pytest.approx(0.0)
    assert event_weight(pevent("RATING", 1), {"RATING": 3}) < 0
    assert event_weight(pevent("WATCH", 30, duration=60), {"WATCH": 4}) == pytest.approx(2.0)
    assert event_weight(pevent("WATCH", 600, duration=60), {"WATCH": 4}) == pytest.approx(4.0)  # capped at 1
    assert event_weight(pevent("WATCH", 30), {"WATCH": 4}) == pytest.approx(4.0)  # duration unknown


def doc_from_updates(events: list[ProfileEvent], weights=None) -> tuple[SimpleNamespace, dict[str, float]]:
    """Fold events into a stored profile as the consumer's snapshot holds it, and sum their label deltas."""
    by_type: dict[str, int] = {}
    for e in events:
        by_type[e.type] = by_type.get(e.type, 0) + 1
    recent = [{"i": e.item_id, "s": e.scenario_id, "y": e.type, "t": e.ts} for e in sorted(events, key=lambda e: e.ts)]
    profile = SimpleNamespace(
        user_id="u", interaction_count=len(events), counts_by_type=by_type, counts_by_scenario={"s": len(events)},
        recent=recent[-50:], first_seen=min(e.ts for e in events), last_seen=max(e.ts for e in events),
        active_hours={str(e.ts.hour): 1 for e in events},
    )
    return profile, label_deltas(events, {"s": weights or {}})["u"]


def test_decayed_scores_read_at_last_activity():
    half = timedelta(seconds=HALF_LIFE_SECONDS)
    later = NOW + half
    events = [pevent("LIKE", ts=NOW, categories=("old",)), pevent("LIKE", ts=later, categories=("new",))]
    p = view(*doc_from_updates(events))
    scores = dict(p.top_categories)
    # Read at the last activity: the newer like counts fully, the one a half-life older counts half.
    assert scores["new"] == pytest.approx(4.0, rel=1e-9)
    assert scores["old"] == pytest.approx(2.0, rel=1e-9)
    assert [k for k, _ in p.top_categories] == ["new", "old"]
    assert p.first_seen == NOW and p.last_seen == later


def test_view_orders_preferences_and_drops_non_positive():
    events = [
        pevent("LIKE", categories=("x", "a.b")), pevent("LIKE", categories=("x",)),
        pevent("VIEW", categories=("y",)), pevent("DISLIKE", categories=("z",)),
        pevent("VIEW", categories=("$w",), tags=("t.1",)),
    ]
    p = view(*doc_from_updates(events))
    assert [k for k, _ in p.top_categories] == ["x", "a.b", "$w", "y"]
    assert [k for k, _ in p.top_tags] == ["t.1"]
    assert p.interaction_count == 5
    assert p.counts_by_type == {"LIKE": 2, "VIEW": 2, "DISLIKE": 1}


def test_view_returns_recent_newest_first_and_keeps_50():
    events = [pevent(item=f"i{n}", ts=NOW + timedelta(seconds=n)) for n in range(60)]
    p = view(*doc_from_updates(events))
    assert [r["i"] for r in p.recent] == [f"i{n}" for n in range(59, 9, -1)]


def test_view_top_limits_the_lists():
    events = [pevent("LIKE", categories=(f"c{n}",)) for n in range(15)]
    assert len(view(*doc_from_updates(events)).top_categories) == 10
    assert len(view(*doc_from_updates(events), top=3).top_categories) == 3


# --- cursors and page sizes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["sc_0001", "Item/ä 1", "", "v1:nested", "=" * 5, "x" * 300])
def test_cursor_round_trip(key):
    cursor = encode_cursor(key)
    assert "=" not in cursor
    assert decode_cursor(cursor) == key


def test_cursors_are_opaque_and_order_free():
    assert encode_cursor("a") != "a"
    assert decode_cursor(None) is None


@pytest.mark.parametrize("garbage", ["", "garbage!", "dGhpcyBpcyBub3Q", "////", "%%%", "djE6"[:3], "\u00e4"])
def test_garbage_cursor_is_bad_input_naming_the_argument(garbage):
    with pytest.raises(BadInput) as caught:
        decode_cursor(garbage)
    assert caught.value.field == "after" and caught.value.code == "BAD_USER_INPUT"
    with pytest.raises(BadInput) as caught:
        decode_cursor(garbage, field="before")
    assert caught.value.field == "before"


def test_check_first():
    assert check_first(None, maximum=200) == 20
    assert check_first(None, maximum=200, default=7) == 7
    assert check_first(0, maximum=200) == 0
    assert check_first(200, maximum=200) == 200
    for bad in (201, -1, 10_000):
        with pytest.raises(BadInput) as caught:
            check_first(bad, maximum=200)
        assert caught.value.field == "first" and caught.value.extensions == {"code": "BAD_USER_INPUT",
                                                                              "field": "first"}
