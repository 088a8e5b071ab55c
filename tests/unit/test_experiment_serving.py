"""Serving under experiments on fakes: the arm's engine ranks, each variant's answers are cached apart, pages carry
the variant and experiment to the sink with the answer's latency, `after` keeps the arm, interleaved lists hold
both variants' items with the team that placed each, and a failing router serves the scenario as is."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from domain.experiments.routing import Arm
from domain.recommend.base import Recommendation, RecRequest, RecResult
from domain.recommend.service import RecommendationService
from models.cache import InMemoryCache
from tests.unit.test_recommend_service import TENANT, FakeScenarios, NoProfiles, Sink, ask, ids


class ListEngine:
    """An engine that ranks a fixed list (minus what the request excludes)."""

    model = None

    def __init__(self, items: list[str], tag: str) -> None:
        self.items, self.tag, self.calls = items, tag, 0

    async def recommend(self, request: RecRequest) -> RecResult:
        self.calls += 1
        kept = [i for i in self.items if i not in request.exclude][:request.limit]
        return RecResult(items=[Recommendation(i, 1.0 / (n + 1), (self.tag,)) for n, i in enumerate(kept)])


@dataclass
class VariantEngines:
    base: ListEngine
    variants: dict[str, ListEngine]
    asked: list[str] = field(default_factory=list)

    async def get(self, tenant_id: str, scenario_id: str, *, config_version: int | None = None) -> ListEngine:
        self.asked.append("base")
        return self.base

    async def variant(self, tenant_id: str, scenario_id: str, arm_key: str, overrides: Mapping[str, Any], *,
                      config_version: int | None = None) -> ListEngine:
        self.asked.append(arm_key)
        return self.variants[arm_key] if overrides else self.base


@dataclass
class Router:
    arms: dict[str, Arm | None]
    fail: bool = False

    async def route(self, *, tenant_id: str, scenario_id: str, user_id: str) -> Arm | None:
        if self.fail:
            raise RuntimeError("router broke")
        return self.arms.get(user_id)


CONTROL = Arm("exp1", "control", {}, "exp1:0")
FRESH = Arm("exp1", "fresh", {"freshness": {"weight": 2}}, "exp1:1")
BASE_ITEMS = [f"b{i}" for i in range(40)]
FRESH_ITEMS = [f"f{i}" for i in range(40)]


@pytest.fixture
def parts():
    engines = VariantEngines(ListEngine(BASE_ITEMS, "base"), {"exp1:1": ListEngine(FRESH_ITEMS, "fresh")})
    router = Router({"in-control": CONTROL, "in-fresh": FRESH,
                     "mixed": Arm("exp2", "interleaved", {}, "exp2:i", teams=(CONTROL, FRESH))})
    sink = Sink()
    service = RecommendationService(InMemoryCache(), FakeScenarios(), NoProfiles(), engines,  # type: ignore[arg-type]
                                    impressions=sink, router=router)
    return service, engines, router, sink


async def test_the_arms_engine_ranks_and_the_page_names_variant_and_experiment(parts) -> None:  # noqa: ANN001
    service, engines, _, sink = parts
    treated = await ask(service, "in-fresh", first=5)
    control = await ask(service, "in-control", first=5)
    outside = await ask(service, "nobody", first=5)
    assert ids(treated) == FRESH_ITEMS[:5] and ids(control) == BASE_ITEMS[:5] == ids(outside)
    assert (treated.variant, treated.experiment_id) == ("fresh", "exp1")
    assert (control.variant, control.experiment_id) == ("control", "exp1")
    assert (outside.variant, outside.experiment_id) == (None, None)
    pages = {p["user_id"]: p for p in sink.pages}
    assert pages["in-fresh"]["experiment"] == "exp1" and pages["in-fresh"]["variant"] == "fresh"
    assert pages["in-fresh"]["latency_ms"] > 0 and pages["nobody"]["experiment"] is None


async def test_each_variant_caches_its_own_answers(parts) -> None:  # noqa: ANN001
    service, engines, router, _ = parts
    await ask(service, "in-fresh", first=5)
    calls = engines.variants["exp1:1"].calls
    again = await ask(service, "in-fresh", first=5)
    assert engines.variants["exp1:1"].calls == calls and ids(again) == FRESH_ITEMS[:5]  # from the cache
    router.arms["in-fresh"] = None  # the experiment stopped: the scenario's own answer, not the variant's
    after_stop = await ask(service, "in-fresh", first=5)
    assert ids(after_stop) == BASE_ITEMS[:5] and after_stop.variant is None


async def test_after_pages_keep_the_variant(parts) -> None:  # noqa: ANN001
    service, _, _, sink = parts
    page = await ask(service, "in-fresh", first=5)
    seen = ids(page)
    while page.next_cursor and len(seen) < 40:
        page = await ask(service, "in-fresh", first=10, after=page.next_cursor)
        assert page.variant == "fresh" and page.experiment_id == "exp1"
        seen += ids(page)
    assert seen == FRESH_ITEMS
    assert all(p["experiment"] == "exp1" for p in sink.pages)


async def test_interleaved_lists_hold_both_teams(parts) -> None:  # noqa: ANN001
    service, _, _, sink = parts
    page = await ask(service, "mixed", first=10)
    assert page.variant == "interleaved" and page.experiment_id == "exp2"
    assert len(page.teams) == len(page.items) == 10 and set(page.teams) == {"A", "B"}
    for rec, team in zip(page.items, page.teams, strict=True):
        assert rec.item_id.startswith("b" if team == "A" else "f")
    # Team draft: after every pair of picks both teams placed the same number of items.
    assert abs(page.teams.count("A") - page.teams.count("B")) <= 1
    assert sink.pages[-1]["teams"] == list(page.teams)
    more = await ask(service, "mixed", first=10, after=page.next_cursor)
    assert len(more.teams) == len(more.items) and not set(ids(more)) & set(ids(page))


async def test_a_failing_router_serves_the_scenario_as_is(parts) -> None:  # noqa: ANN001
    service, _, router, _ = parts
    router.fail = True
    page = await ask(service, "in-fresh", first=5)
    assert ids(page) == BASE_ITEMS[:5] and page.variant is None
