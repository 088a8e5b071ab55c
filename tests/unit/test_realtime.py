"""Real-time pieces on fakes: stream entries, XAUTOCLAIM replies of Redis 6.2 and 7, metric amounts, and what
ingest does when MongoDB fails part way or Redis is down."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from pymongo.errors import BulkWriteError, ServerSelectionTimeoutError

from domain import events as events_module
from domain.errors import Unavailable
from domain.events import EventService, InteractionData
from domain.realtime import contracts as c
from domain.realtime.apply import metric_amounts
from domain.realtime.consumer import claimed_messages, tenant_of
from domain.realtime.stream import StreamEvent, StreamImpression, decode
from models.cache import CacheUnavailable, InMemoryCache, ItemMeta

EVENT = StreamEvent("e1", "sc", "u1", "i1", "WATCH", 30.0, 1_700_000_000_000, 1_700_000_001_000, "r1")
PAGE = StreamImpression("r1", "sc", "u1", "B", 1_700_000_000_000, (("i1", ("als", "popular")), ("i2", ())))


def test_entries_round_trip_through_one_field():
    assert decode(EVENT.encode()) == EVENT
    assert decode(EVENT.encode().encode()) == EVENT
    assert decode(PAGE.encode()) == PAGE
    assert EVENT.marker == "e:e1" and PAGE.marker == "i:r1"


@pytest.mark.parametrize("raw", ["", "nope", "[]", '["x", 1]', '["e", "only"]', "{}"])
def test_unreadable_entries_decode_to_none(raw):
    assert decode(raw) is None


def test_xautoclaim_replies_of_redis_6_and_7():
    six = [b"0-0", [(b"1-0", {b"d": b"x"}), (None, None), (b"3-0", {b"d": b"y"})]]
    seven = [b"5-0", [(b"1-0", {b"d": b"x"})], [b"2-0"]]
    assert claimed_messages(six) == ("0-0", [(b"1-0", {b"d": b"x"}), (b"3-0", {b"d": b"y"})])
    assert claimed_messages(seven) == ("5-0", [(b"1-0", {b"d": b"x"})])


def test_tenant_of_a_stream_key():
    assert tenant_of(b"t:{t_abc}:events") == "t_abc"


def test_metric_amounts_by_type():
    meta = ItemMeta(scenarios=("sc",), duration_seconds=60.0)
    assert metric_amounts(EVENT, meta) == {c.INTERACTIONS: 1, c.WATCHES: 1, c.WATCH_SECONDS: 30.0,
                                           c.COMPLETIONS: 1, c.COMPLETION_SUM: 0.5}
    long = StreamEvent("e2", "sc", "u", "i", "WATCH", 600.0, 0, 0)
    assert metric_amounts(long, meta)[c.COMPLETION_SUM] == 1.0
    assert c.COMPLETIONS not in metric_amounts(EVENT, ItemMeta(scenarios=("sc",)))
    click = StreamEvent("e3", "sc", "u", "i", "CLICK", None, 0, 0)
    assert metric_amounts(click, meta) == {c.INTERACTIONS: 1, c.CLICKS: 1}
    buy = StreamEvent("e4", "sc", "u", "i", "PURCHASE", None, 0, 0)
    assert metric_amounts(buy, meta) == {c.INTERACTIONS: 1, c.CONVERSIONS: 1}


class FakeStream:
    def __init__(self, up: bool = True) -> None:
        self.entries: list = []
        self.up = up

    async def append(self, entries, *, tenant_id):
        if not self.up:
            raise CacheUnavailable("down")
        self.entries.extend(entries)


class FakeCollection:
    def __init__(self, error: Exception | None) -> None:
        self.error = error
        self.docs: list = []

    async def insert_many(self, docs, ordered):
        self.docs.extend(docs)
        if self.error is not None:
            raise self.error


def service(monkeypatch, error: Exception | None, stream: FakeStream, cache=None) -> tuple[EventService, FakeCollection]:
    collection = FakeCollection(error)
    monkeypatch.setattr(events_module.Interaction, "get_pymongo_collection", classmethod(lambda cls: collection))
    scenario = SimpleNamespace(id="sc", config={})

    async def get_many(ids, *, tenant_id):
        return [scenario if i == "sc" else None for i in ids]

    async def metas(ids, *, tenant_id):
        return {i: ItemMeta(scenarios=("sc",)) for i in ids}

    svc = EventService(cache or InMemoryCache(), SimpleNamespace(get_many=get_many), SimpleNamespace(metas=metas),
                       stream)
    return svc, collection


def batch(n: int) -> list[InteractionData]:
    ts = datetime(2025, 1, 1, tzinfo=UTC)
    return [InteractionData("sc", "u", f"i{k}", "VIEW", timestamp=ts, event_id=f"e{k}") for k in range(n)]


async def test_a_partly_stored_batch_is_published_and_reported(monkeypatch):
    failure = BulkWriteError({"writeErrors": [{"index": 1, "code": 91, "errmsg": "shutting down"},
                                              {"index": 2, "code": 91, "errmsg": "shutting down"}], "nInserted": 1})
    stream = FakeStream()
    svc, _ = service(monkeypatch, failure, stream)
    with pytest.raises(Unavailable) as caught:
        await svc.record(batch(3), tenant_id="t")
    assert caught.value.code == "SERVICE_UNAVAILABLE"
    assert "1 of 3" in caught.value.message and "send the whole batch again" in caught.value.message
    assert [e.event_id for e in stream.entries] == ["e0"]  # what was stored still reaches the consumer


async def test_mongo_unreachable_stores_nothing_and_says_so(monkeypatch):
    stream = FakeStream()
    svc, _ = service(monkeypatch, ServerSelectionTimeoutError("no servers"), stream)
    with pytest.raises(Unavailable) as caught:
        await svc.record(batch(2), tenant_id="t")
    assert "send the batch again" in caught.value.message and stream.entries == []


async def test_redis_down_still_accepts_what_mongo_stored(monkeypatch):
    cache = InMemoryCache(up=False)
    svc, collection = service(monkeypatch, None, FakeStream(up=False), cache)
    result = await svc.record(batch(2), tenant_id="t")
    assert result.accepted == 2 and len(collection.docs) == 2


async def test_duplicates_are_not_published_again(monkeypatch):
    dup = BulkWriteError({"writeErrors": [{"index": 0, "code": 11000, "errmsg": "dup"}], "nInserted": 1})
    stream = FakeStream()
    svc, _ = service(monkeypatch, dup, stream)
    result = await svc.record(batch(2), tenant_id="t")
    assert (result.accepted, result.duplicates) == (1, 1)
    assert [e.event_id for e in stream.entries] == ["e1"]


async def test_no_consumer_runs_without_redis_and_metrics_still_answer():
    from workers.consumer import consumer_metrics, consumer_running

    before = consumer_metrics()  # other tests' app may run a consumer in this process
    async with consumer_running(SimpleNamespace(realtime=None)) as consumer:
        assert consumer is None
        assert consumer_metrics()["recograph_consumers_running"] == before["recograph_consumers_running"]
    assert set(before) >= {"recograph_consumer_read_total", "recograph_consumer_applied_total",
                           "recograph_consumer_claimed_total", "recograph_consumer_errors_total"}


def test_a_batch_payload_sends_each_repeated_string_once():
    import json

    from domain.erasure import digest
    from domain.realtime.apply import EVENT_WIDTH, Planned, encode

    meta = ItemMeta(scenarios=("sc",), categories=("drama",), tags=("a", "b"), duration_seconds=60.0)
    second = StreamEvent("e2", "sc", "u1", "i1", "CLICK", None, 1_700_000_002_000, 1_700_000_003_000)
    payload = encode([Planned(EVENT), Planned(second), Planned(PAGE)], {"i1": meta}, {}, tenant_id="T",
                     hash_key=b"k")
    strings, label_sets, metric_sets, pages, events, erased = json.loads(payload.json)
    # the erasure marker of the events' user is named by a keyed hash, never the id
    assert erased == {"u1": f"t:{{T}}:erased:{digest(b'k', 'u1')}"} and "u1" not in erased["u1"]
    assert len(events) == 2 * EVENT_WIDTH and len(pages) == 1
    assert strings.count("u1") == 1 and strings.count("i1") == 1 and strings.count("sc") == 1
    assert label_sets == [["c:drama", "t:a", "t:b"]]
    assert len(metric_sets) == 2  # a WATCH and a CLICK
    assert payload.newest_ms == 1_700_000_003_000 and payload.size == 3
    assert events[2] == "e:e1" and pages[0][2] == "i:r1"
    assert encode([], {}, {}, tenant_id="T").size == 0


def test_interaction_inputs_convert_like_strawberry_would():
    from graphql import coerce_input_value
    from strawberry.types.arguments import convert_argument

    from graph.schema import schema
    from graph.types.interaction import InteractionInput

    raw = {"scenarioId": "s", "userId": "u", "itemId": "i", "type": "WATCH", "value": 3, "eventId": "e",
           "timestamp": "2026-01-01T00:00:00Z", "context": {"page": 2}}
    value = coerce_input_value(raw, schema._schema.get_type("InteractionInput"))
    args = (schema.schema_converter.scalar_registry, schema.config)
    definition = InteractionInput.__strawberry_definition__
    fast = convert_argument(value, InteractionInput, *args)
    hook, definition.from_input = definition.from_input, None
    try:
        generic = convert_argument(value, InteractionInput, *args)
    finally:
        definition.from_input = hook
    assert hook is not None and fast == generic
    assert fast.to_domain() == InteractionData("s", "u", "i", "WATCH", 3.0, datetime(2026, 1, 1, tzinfo=UTC),
                                               {"page": 2}, None, "e")
