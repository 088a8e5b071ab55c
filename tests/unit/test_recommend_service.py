"""The recommendation service on fakes: served lists a few pages deep, `after` extending them without repeats, the
answer cache per user version, impressions handed to the sink for every page, and answers without Redis."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from domain.errors import BadInput, NotFound
from domain.ids import encode_cursor
from domain.learning.model import ScenarioModel
from domain.learning.train import train_scenario_model
from domain.recommend import service as service_module
from domain.recommend.base import Recommendation
from domain.recommend.engine import Engine
from domain.recommend.served import ServedList
from domain.recommend.service import RecommendationService, served_depth
from models.cache import InMemoryCache
from tests.unit.test_engine import scenario
from tests.unit.test_learning import synthetic

TENANT, SCENARIO = "t1", "s1"


@dataclass
class FakeScenario:
    id: str
    config_version: int = 1


class FakeScenarios:
    """The one method serving reads: `cached`, NotFound for anything but the scenario it holds."""

    async def cached(self, scenario_id: str, *, tenant_id: str, field: str = "scenarioId") -> FakeScenario:
        if (tenant_id, scenario_id) != (TENANT, SCENARIO):
            raise NotFound(f"no scenario {scenario_id}", field=field)
        return FakeScenario(scenario_id)


class NoProfiles:
    async def get_many(self, user_ids: Sequence[str], *, tenant_id: str) -> list[None]:
        return [None] * len(user_ids)


@dataclass
class Engines:
    engine: Engine
    asked: int = 0

    async def get(self, tenant_id: str, scenario_id: str, *, config_version: int | None = None) -> Engine:
        self.asked += 1
        return self.engine


@dataclass
class Sink:
    pages: list[dict[str, Any]] = field(default_factory=list)
    fail: bool = False

    async def record(self, *, tenant_id: str, scenario_id: str, user_id: str, request_id: str, variant: str | None,
                     items: Sequence[Recommendation], experiment: str | None = None, latency_ms: float = 0.0,
                     teams: Sequence[str] = ()) -> None:
        if self.fail:
            raise RuntimeError("sink broke its promise")
        self.pages.append({"tenant_id": tenant_id, "scenario_id": scenario_id, "user_id": user_id,
                           "request_id": request_id, "variant": variant, "items": [r.item_id for r in items],
                           "experiment": experiment, "latency_ms": latency_ms, "teams": list(teams)})


@pytest.fixture(scope="module")
def model() -> ScenarioModel:
    return train_scenario_model(synthetic(), scenario(), scenario_id=SCENARIO, version=1)


@pytest.fixture
def parts(model: ScenarioModel) -> tuple[RecommendationService, InMemoryCache, Sink, Engines]:
    cache, sink = InMemoryCache(), Sink()
    engines = Engines(Engine(scenario(), model))
    service = RecommendationService(
        cache, FakeScenarios(), NoProfiles(), engines, impressions=sink  # type: ignore[arg-type]
    )
    return service, cache, sink, engines


async def ask(service: RecommendationService, user: str = "u0", *, first: int = 5, after: str | None = None,
              context: dict | None = None, **extra: Any):  # noqa: ANN201
    return await service.recommend(tenant_id=TENANT, scenario_id=SCENARIO, user_id=user, first=first, after=after,
                                   context=context, exclude_seen=True, debug=False, max_first=200, **extra)


def ids(page) -> list[str]:  # noqa: ANN001
    return [r.item_id for r in page.items]


def test_served_depth_is_a_few_pages_within_bounds() -> None:
    assert served_depth(20) == 60
    assert served_depth(5) == service_module.MIN_SERVED
    assert served_depth(200) == service_module.MAX_CHUNK
    assert served_depth(0) == service_module.MIN_SERVED


async def test_a_first_page_stores_a_list_a_few_pages_deep(parts) -> None:  # noqa: ANN001
    service, cache, _, _ = parts
    page = await ask(service, first=5)
    assert len(page.items) == 5 and page.next_cursor
    served = ServedList.decode(await cache.get_blob("served", page.request_id, tenant_id=TENANT))
    assert served is not None and served.item_ids[:5] == ids(page)
    # The synthetic catalogue holds 24 items u0 has not seen: fewer than the depth asked, so the list is complete.
    assert len(served) == 24 and served.complete


async def test_after_extends_the_list_past_its_end_without_repeats(parts, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(service_module, "MIN_SERVED", 4)
    monkeypatch.setattr(service_module, "SERVED_PAGES", 2)
    service, cache, _, engines = parts
    page = await ask(service, first=3)
    first_list = ServedList.decode(await cache.get_blob("served", page.request_id, tenant_id=TENANT))
    assert first_list is not None and len(first_list) == 6 and not first_list.complete
    seen = ids(page)
    while page.next_cursor:
        page = await ask(service, first=3, after=page.next_cursor)
        assert page.request_id == first_list.request_id
        seen += ids(page)
    assert len(seen) == len(set(seen)) == 24  # every unseen item once, then no cursor
    assert engines.asked > 2  # the list was extended, not computed whole at first


async def test_a_cursor_only_continues_its_own_users_list(parts) -> None:  # noqa: ANN001
    service, *_ = parts
    page = await ask(service, "u0", first=3)
    with pytest.raises(BadInput) as error:
        await ask(service, "u1", first=3, after=page.next_cursor)
    assert error.value.field == "after"


@pytest.mark.parametrize("offset", ["²", "٣", "-1", "1e3", "9" * 5000, ""])
async def test_a_cursor_offset_that_is_not_ascii_digits_is_bad_input_naming_after(parts, offset) -> None:  # noqa: ANN001
    service, *_ = parts
    page = await ask(service, "u0", first=3)
    forged = encode_cursor(f"{page.request_id}@{offset}")  # a real request id, so only the offset is wrong
    with pytest.raises(BadInput) as error:
        await ask(service, "u0", first=3, after=forged)
    assert error.value.field == "after"


@pytest.mark.parametrize("context", [
    {"a": {"b": {"c": {"d": {"e": 1}}}}}, {f"k{n}": n for n in range(65)}, {"text": "x" * 4100}, [1],
])
async def test_a_recommendations_context_beyond_its_bounds_is_bad_input(parts, context) -> None:  # noqa: ANN001
    service, *_ = parts
    with pytest.raises(BadInput) as error:
        await ask(service, "u0", first=3, context=context)
    assert error.value.field == "context"
    assert (await ask(service, "u0", first=3, context={"a": {"b": {"c": 1}}, "page": "home"})).items


async def test_answers_are_cached_until_the_user_version_moves(parts) -> None:  # noqa: ANN001
    service, cache, _, engines = parts
    first = await ask(service, first=5)
    again = await ask(service, first=5)
    assert again.request_id == first.request_id and ids(again) == ids(first) and engines.asked == 1
    top = ids(first)[0]
    await cache.record_seen([(SCENARIO, "u0", top)], tenant_id=TENANT)
    after = await ask(service, first=5)
    assert after.request_id != first.request_id and top not in ids(after)


async def test_a_cached_answer_too_short_for_a_bigger_page_is_recomputed(parts, monkeypatch) -> None:  # noqa: ANN001
    monkeypatch.setattr(service_module, "MIN_SERVED", 4)
    monkeypatch.setattr(service_module, "SERVED_PAGES", 2)
    service, *_ = parts
    small = await ask(service, first=2)  # computes 4
    big = await ask(service, first=10)
    assert big.request_id != small.request_id and len(big.items) == 10


async def test_every_page_answered_is_an_impression(parts) -> None:  # noqa: ANN001
    service, _, sink, _ = parts
    computed = await ask(service, first=3)
    cached = await ask(service, first=3)
    continued = await ask(service, first=3, after=computed.next_cursor)
    similar = await service.similar(tenant_id=TENANT, scenario_id=SCENARIO, item_id="a0", first=4, max_first=200)
    assert [p["request_id"] for p in sink.pages] == [computed.request_id, cached.request_id, continued.request_id,
                                                     similar.request_id]
    assert [p["items"] for p in sink.pages] == [ids(computed), ids(cached), ids(continued), ids(similar)]
    assert [p["user_id"] for p in sink.pages] == ["u0", "u0", "u0", ""]
    assert all(p["tenant_id"] == TENANT and p["scenario_id"] == SCENARIO and p["variant"] is None for p in sink.pages)


class CountingCache(InMemoryCache):
    """The fake cache, noting each call (each is one Redis round trip on the real one)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def __getattribute__(self, name: str) -> Any:
        value = super().__getattribute__(name)
        if not name.startswith("_") and callable(value) and name not in ("calls", "record_seen"):
            super().__getattribute__("calls").append(name)
        return value


async def test_an_answer_costs_one_cache_read_and_at_most_one_write(model: ScenarioModel) -> None:
    cache, sink = CountingCache(), Sink()
    service = RecommendationService(
        cache, FakeScenarios(), NoProfiles(), Engines(Engine(scenario(), model)), impressions=sink  # type: ignore[arg-type]
    )
    first = await ask(service, first=5)
    assert cache.calls == ["user_state", "put_blobs"]  # version, cached answer and seen set read at once
    top = ids(first)[0]
    await cache.record_seen([(SCENARIO, "u0", top)], tenant_id=TENANT)
    cache.calls.clear()
    computed = await ask(service, first=5)
    assert cache.calls == ["user_state", "put_blobs"]
    assert top not in ids(computed)  # the seen set read with the version excludes what u0 just saw
    cache.calls.clear()
    cached = await ask(service, first=5)
    assert cache.calls == ["user_state"] and cached.request_id == computed.request_id
    assert len(sink.pages) == 3


async def test_a_failing_sink_never_fails_the_answer(parts) -> None:  # noqa: ANN001
    service, _, sink, _ = parts
    sink.fail = True
    assert len((await ask(service, first=3)).items) == 3


async def test_answers_keep_coming_without_redis(parts) -> None:  # noqa: ANN001
    service, cache, _, _ = parts
    cache.up = False
    page = await ask(service, first=5)
    assert len(page.items) == 5


async def test_an_unknown_scenario_is_not_found(parts) -> None:  # noqa: ANN001
    service, *_ = parts
    with pytest.raises(NotFound):
        await service.recommend(tenant_id="other", scenario_id=SCENARIO, user_id="u0", first=5, after=None,
                                context=None, exclude_seen=True, debug=False, max_first=200)


def test_a_served_list_round_trips_and_refuses_garbage() -> None:
    served = ServedList(request_id="r1", scenario_id="s", user_id="u", exclude_seen=True, context={"region": "EU"})
    served.extend([Recommendation("a", 0.5, ("ease", "item_cf")), Recommendation("b", 0.25, ("ease",)),
                   Recommendation("c\t\"x", 0.125, ("ease", "item_cf"))], complete=False)
    back = ServedList.decode(served.encode())
    assert back == served
    assert back.page(1, 5) == [Recommendation("b", 0.25, ("ease",)),
                               Recommendation("c\t\"x", 0.125, ("ease", "item_cf"))]
    assert back.has_more(3)
    done = ServedList.decode(ServedList("r", "s", "u", True, {}, complete=True).encode())
    assert done is not None and not done.has_more(0)
    for raw in (None, "", "not json", "[1, 2]", '{"f": 0}', '{"f": 1, "r": "x"}'):
        assert ServedList.decode(raw) is None


class TtlCache(InMemoryCache):
    """The fake cache, keeping the time to live of each cached answer written."""

    def __init__(self) -> None:
        super().__init__()
        self.answer_ttls: list[int] = []

    async def put_blobs(self, writes, *, tenant_id: str) -> None:  # noqa: ANN001
        self.answer_ttls += [w.ttl_s for w in writes if w.parts[0] == "answer"]
        await super().put_blobs(writes, tenant_id=tenant_id)


async def test_a_cold_users_answer_is_kept_briefly_as_live_popularity_moves(model: ScenarioModel) -> None:
    cache = TtlCache()
    service = RecommendationService(
        cache, FakeScenarios(), NoProfiles(), Engines(Engine(scenario(), model)), impressions=Sink()  # type: ignore[arg-type]
    )
    await ask(service, "u3")  # a user the model was trained on
    await ask(service, "newcomer")  # nobody knows anything about
    assert cache.answer_ttls == [service_module.ANSWER_TTL_S, service_module.COLD_ANSWER_TTL_S]
    assert service_module.COLD_ANSWER_TTL_S < service_module.ANSWER_TTL_S
