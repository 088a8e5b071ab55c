"""The model registry's rules on the embedded MongoDB: promotion by margin, aliases per kind, challengers, rollback
along the promotions, what pruning keeps, the migration of the old statuses, experiment pins (their validation and
the pinned models serving loads), and a swap notice of another kind."""

from __future__ import annotations

import pytest

from domain.errors import BadInput
from domain.experiments.design import check_design, design_input
from domain.ids import new_id, utcnow
from domain.learning import versions
from domain.learning.registry import check_pins
from domain.learning.versions import beats
from domain.recommend.pinned import PinnedModels
from domain.recommend.serving import SwapChannel
from domain.scenarios.templates import TEMPLATES
from models.documents import Experiment, ModelVersion


@pytest.fixture
async def scope(served) -> tuple[str, str]:  # `served` initialises Beanie on the embedded MongoDB
    return new_id("tn"), new_id("sc")


async def stored(tenant: str, sid: str, number: int, *, status: str = versions.TRAINING, kind: str = "scenario",
                 artifact: bool = True, applied: bool = False, **fields) -> ModelVersion:
    doc = ModelVersion(id=new_id("mv"), tenant_id=tenant, scenario_id=sid, kind=kind, version=number, status=status,
                       artifact=f"{tenant}/{sid}/{kind}/v{number}" if artifact else None, created_at=utcnow(),
                       applied_at=utcnow() if applied else None, **fields)
    await doc.insert()
    return doc


async def trained(tenant: str, sid: str, number: int, ndcg: float | None = None, *, margin: float = 0.0,
                  kind: str = "scenario", **metrics: float) -> bool:
    """Store a version as training does (TRAINING, then READY, then applied); return whether it became champion."""
    doc = await stored(tenant, sid, number, kind=kind)
    await versions.mark_ready(doc)
    figures = ({} if ndcg is None else {"ndcg@10": ndcg}) | metrics
    return await versions.apply(doc, spaces={}, metrics=figures, margin=margin)


async def states(tenant: str, sid: str, kind: str = "scenario") -> list[tuple[int, str, list[str]]]:
    docs = await ModelVersion.find({"tenant_id": tenant, "scenario_id": sid, "kind": kind}).sort("version").to_list()
    return [(d.version, d.status, d.aliases) for d in docs]


async def get(tenant: str, sid: str, number: int, kind: str = "scenario") -> ModelVersion:
    return await ModelVersion.find_one({"tenant_id": tenant, "scenario_id": sid, "kind": kind, "version": number})


# --- promotion ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("new", "champion", "margin", "expected"), [
    ({"ndcg@10": 0.12}, {"ndcg@10": 0.10}, 0.0, True),
    ({"ndcg@10": 0.10}, {"ndcg@10": 0.10}, 0.0, True),  # as good, on fresher data
    ({"ndcg@10": 0.09}, {"ndcg@10": 0.10}, 0.0, False),
    ({"ndcg@10": 0.104}, {"ndcg@10": 0.10}, 0.005, False),  # better, but not by the margin
    ({"ndcg@10": 0.106}, {"ndcg@10": 0.10}, 0.005, True),
    ({"ndcg@10": 0.11, "champion_ndcg@10": 0.12}, {"ndcg@10": 0.05}, 0.0, False),  # the same slice decides
    # ... on the users the champion never trained on, the new version's figure on the same users
    ({"ndcg@10": 0.20, "champion_ndcg@10": 0.12, "compared_ndcg@10": 0.11}, {"ndcg@10": 0.05}, 0.0, False),
    ({"ndcg@10": 0.10, "champion_ndcg@10": 0.12, "compared_ndcg@10": 0.13}, {"ndcg@10": 0.30}, 0.0, True),
    ({"interactions": 300.0}, {"ndcg@10": 0.10}, 0.0, True),  # nothing comparable: the newer one
    ({"ndcg@10": 0.05}, {}, 0.0, True),
    ({"ndcg@10": float("nan")}, {"ndcg@10": 0.10}, 0.0, True),
])
def test_a_new_version_beats_the_champion_by_the_margin_on_validation_ndcg(new, champion, margin, expected):
    assert beats(new, champion, margin) is expected


async def test_the_first_version_is_champion_and_a_better_one_replaces_it(scope):
    tenant, sid = scope
    assert await trained(tenant, sid, 1, 0.10) is True
    assert await states(tenant, sid) == [(1, "READY", ["champion"])]
    assert await trained(tenant, sid, 2, 0.12) is True
    assert await states(tenant, sid) == [(1, "RETIRED", []), (2, "READY", ["champion"])]
    first, second = await get(tenant, sid, 1), await get(tenant, sid, 2)
    assert second.previous == first.id and (await versions.champion(tenant, sid)).id == second.id
    assert second.trained_at is not None and second.applied_at is not None


async def test_a_version_short_of_the_margin_is_the_challenger_until_a_newer_one(scope):
    tenant, sid = scope
    await trained(tenant, sid, 1, 0.10)
    assert await trained(tenant, sid, 2, 0.104, margin=0.005) is False
    assert await states(tenant, sid) == [(1, "READY", ["champion"]), (2, "READY", ["challenger"])]
    assert await trained(tenant, sid, 3, 0.103, margin=0.005) is False
    assert await states(tenant, sid) == [(1, "READY", ["champion"]), (2, "RETIRED", []), (3, "READY", ["challenger"])]
    assert await trained(tenant, sid, 4, 0.2, margin=0.005) is True  # an older challenger retires with the champion
    assert await states(tenant, sid) == [(1, "RETIRED", []), (2, "RETIRED", []), (3, "RETIRED", []),
                                         (4, "READY", ["champion"])]


async def test_promoting_the_challenger_retires_the_champion_and_keeps_newer_challengers(scope):
    tenant, sid = scope
    await trained(tenant, sid, 1, 0.10)
    await trained(tenant, sid, 2, 0.05)
    await versions.promote(await get(tenant, sid, 2))
    assert await states(tenant, sid) == [(1, "RETIRED", []), (2, "READY", ["champion"])]
    await trained(tenant, sid, 3, 0.01)  # the challenger
    await versions.promote(await get(tenant, sid, 1))  # back to an older one: the newer challenger stays
    assert await states(tenant, sid) == [(1, "READY", ["champion"]), (2, "RETIRED", []), (3, "READY", ["challenger"])]


async def test_aliases_are_held_per_kind(scope):
    tenant, sid = scope
    await trained(tenant, sid, 1, 0.10)
    assert await trained(tenant, sid, 1, 0.30, kind="sasrec") is True  # its own first version: champion
    await trained(tenant, sid, 2, 0.20)
    await trained(tenant, sid, 2, 0.01, kind="sasrec")
    assert await states(tenant, sid) == [(1, "RETIRED", []), (2, "READY", ["champion"])]
    assert await states(tenant, sid, "sasrec") == [(1, "READY", ["champion"]), (2, "READY", ["challenger"])]
    assert (await versions.champion(tenant, sid, "sasrec")).version == 1


async def test_of_two_racing_promotions_the_later_one_wins(scope):
    tenant, sid = scope
    await trained(tenant, sid, 1)
    second, third = await stored(tenant, sid, 2, status="READY", applied=True), \
        await stored(tenant, sid, 3, status="READY", applied=True)
    await versions.promote(second)
    await versions.promote(third)
    assert [v for v, _, aliases in await states(tenant, sid) if aliases] == [3]


# --- rollback and pruning ----------------------------------------------------------------------------------------


async def test_rollback_walks_back_the_promotions_and_skips_pruned_versions(scope):
    tenant, sid = scope
    for number in (1, 2, 3):
        await trained(tenant, sid, number)
    third = await versions.champion(tenant, sid)
    target = await versions.rollback_target(third)
    assert target.version == 2
    await versions.promote(target, remember=False)
    assert await states(tenant, sid) == [(1, "RETIRED", []), (2, "READY", ["champion"]), (3, "RETIRED", [])]
    assert (await versions.rollback_target(await versions.champion(tenant, sid))).version == 1  # one more step back
    await ModelVersion.get_pymongo_collection().update_one({"_id": target.id}, {"$set": {"artifact": None}})
    assert (await versions.rollback_target(third)).version == 1  # version 2 lost its artifact: the one before it
    first = await get(tenant, sid, 1)
    assert await versions.rollback_target(first) is None  # it replaced nothing


async def test_prune_keeps_the_newest_retired_the_rollback_target_and_pinned_versions(scope, tmp_path):
    tenant, sid = scope
    docs = [await stored(tenant, sid, n, status="RETIRED", applied=True) for n in range(1, 6)]
    await stored(tenant, sid, 6, status="READY", applied=True, aliases=["champion"], previous=docs[0].id)
    await stored(tenant, sid, 1, kind="sasrec", status="RETIRED", applied=True)  # another kind counts on its own
    for doc in await ModelVersion.find({"tenant_id": tenant, "scenario_id": sid}).to_list():
        (tmp_path / doc.artifact).mkdir(parents=True)
    await Experiment(id=new_id("exp"), tenant_id=tenant, scenario_id=sid, name="old model", status="RUNNING",
                     variants=[{"name": "a"}, {"name": "b", "model": {"version": 2}}], primary_metric="CTR",
                     layer="l", salt="s", created_at=utcnow(), updated_at=utcnow()).insert()
    assert await versions.prune(tenant, sid, tmp_path, keep=1) == 2
    kept = {(d.kind, d.version) for d in await ModelVersion.find({"tenant_id": tenant, "artifact": {"$ne": None}})
            .to_list()}
    assert kept == {("scenario", 1), ("scenario", 2), ("scenario", 5), ("scenario", 6), ("sasrec", 1)}
    assert not (tmp_path / docs[2].artifact).exists() and not (tmp_path / docs[3].artifact).exists()
    assert (tmp_path / docs[4].artifact).exists()


async def test_discard_fails_only_what_its_training_never_applied(scope, tmp_path):
    tenant, sid = scope
    applied = await stored(tenant, sid, 1, status="READY", applied=True, aliases=["champion"])
    halfway = await stored(tenant, sid, 2, status="READY")
    for doc in (applied, halfway):
        await versions.discard(doc, tmp_path, "stopped")
    assert await states(tenant, sid) == [(1, "READY", ["champion"]), (2, "FAILED", [])]
    assert (await get(tenant, sid, 2)).artifact is None and (await get(tenant, sid, 1)).artifact is not None


async def test_the_old_statuses_are_rewritten_once(scope):
    tenant, sid = scope
    for number, old in enumerate(("retired", "active", "ready", "training", "failed"), start=1):
        await stored(tenant, sid, number, status=old, activated_at=utcnow() if old in ("retired", "active") else None)
    assert await versions.upgrade_statuses() >= 5
    assert await states(tenant, sid) == [(1, "RETIRED", []), (2, "READY", ["champion"]), (3, "READY", []),
                                         (4, "TRAINING", []), (5, "FAILED", [])]
    assert (await get(tenant, sid, 2)).applied_at is not None and (await get(tenant, sid, 3)).applied_at is None
    assert await versions.upgrade_statuses() == 0
    assert (await versions.champion(tenant, sid)).version == 2


# --- experiment pins ---------------------------------------------------------------------------------------------


def design(pin) -> dict:
    return {"name": "models", "primaryMetric": "CTR", "variants": [{"name": "champion"}, {"name": "old", "model": pin}]}


@pytest.mark.parametrize(("pin", "field"), [
    ({"version": 1, "alias": "champion"}, "input.variants.1.model"),
    ({}, "input.variants.1.model"),
    ({"version": 0}, "input.variants.1.model.version"),
    ({"version": True}, "input.variants.1.model.version"),
    ({"alias": "best"}, "input.variants.1.model.alias"),
    ("v1", "input.variants.1.model"),
])
def test_a_pin_names_exactly_one_version_or_alias(pin, field):
    with pytest.raises(BadInput) as caught:
        check_design(design(pin), scenario_config=TEMPLATES["VLOG"])
    assert caught.value.field == field


def test_a_pin_is_stored_and_read_back_for_an_update():
    fields = check_design(design({"version": 3}), scenario_config=TEMPLATES["VLOG"])
    assert fields["variants"][1] == {"name": "old", "weight": 1.0, "config": {}, "model": {"version": 3}}
    assert "model" not in fields["variants"][0]
    exp = Experiment(id="exp_x", tenant_id="t", scenario_id="s", name="n", primary_metric="CTR",
                     variants=fields["variants"], layer="scenario:s", salt="x", created_at=utcnow(),
                     updated_at=utcnow())
    again = check_design(design_input(exp), scenario_config=TEMPLATES["VLOG"])
    assert again["variants"] == fields["variants"]


async def test_a_pin_must_name_a_version_that_can_serve(scope):
    tenant, sid = scope
    await trained(tenant, sid, 1)
    await trained(tenant, sid, 2)  # version 1 retires with its artifact: it can still serve a variant
    await stored(tenant, sid, 3, status="FAILED", artifact=False)

    async def refused(pin) -> str:
        with pytest.raises(BadInput) as caught:
            await check_pins([{"name": "a"}, {"name": "b", "model": pin}], tenant_id=tenant, scenario_id=sid)
        return caught.value.field

    for pin in ({"version": 1}, {"version": 2}, {"alias": "champion"}):
        await check_pins([{"name": "a"}, {"name": "b", "model": pin}], tenant_id=tenant, scenario_id=sid)
    assert await refused({"version": 3}) == "input.variants.1.model.version"  # FAILED
    assert await refused({"version": 9}) == "input.variants.1.model.version"  # no such version
    assert await refused({"alias": "challenger"}) == "input.variants.1.model.alias"  # nobody holds it
    with pytest.raises(BadInput):  # another tenant's scenario has no such version
        await check_pins([{"name": "b", "model": {"version": 1}}], tenant_id=new_id("tn"), scenario_id=sid)


async def test_pinned_models_load_once_per_revision_and_follow_their_alias(scope):
    tenant, sid = scope
    await trained(tenant, sid, 1, 0.2)
    await trained(tenant, sid, 2, 0.1)  # the challenger
    loads: list[tuple[int, int]] = []
    broken: set[int] = set()

    async def read(doc: ModelVersion):
        loads.append((doc.version, doc.revision))
        return None if doc.version in broken else object()

    pins = PinnedModels(read, ttl_s=3600)
    doc = await pins.resolve(tenant, sid, {"alias": "challenger"})
    first = await pins.model(doc)
    assert first.version == 2 and await pins.model(await pins.resolve(tenant, sid, {"alias": "challenger"})) is first
    assert loads == [(2, 0)]
    await ModelVersion.get_pymongo_collection().update_one({"_id": doc.id}, {"$inc": {"revision": 1}})
    assert (await pins.resolve(tenant, sid, {"alias": "challenger"})).revision == 0  # resolved within the TTL
    pins.forget(tenant, sid)  # a swap notice: the rewritten artifact loads again
    assert (await pins.model(await pins.resolve(tenant, sid, {"alias": "challenger"}))).revision == 1
    assert loads == [(2, 0), (2, 1)]
    await trained(tenant, sid, 3, 0.05)  # the alias moves
    broken.add(3)
    pins.forget(tenant, sid)
    moved = await pins.resolve(tenant, sid, {"alias": "challenger"})
    assert moved.version == 3 and await pins.model(moved) is None and await pins.model(moved) is None
    assert loads[-1] == (3, 0) and len(loads) == 3  # a failed load is not retried within the TTL
    assert await pins.resolve(tenant, sid, {"version": 7}) is None


async def test_swap_notices_of_other_kinds_do_not_reach_the_scenario_registry(served):
    heard: list[tuple] = []
    channel = SwapChannel(served.runtime.cache.client)
    data = [{"tenant_id": "t", "scenario_id": "s", "version": 2, "revision": 0, "kind": "sasrec"},
            {"tenant_id": "t", "scenario_id": "s", "version": 3, "revision": 1, "kind": "scenario"},
            {"tenant_id": "t", "scenario_id": "s", "version": 4}]  # sent before notices named their kind

    async def handle(*notice) -> None:
        heard.append(notice)

    class Replay:
        async def listen(self, callback, *, retry_s: float) -> None:
            for item in data:
                await callback(item)

    channel._channel = Replay()
    await channel.listen(handle)
    assert heard == [("t", "s", 3, 1), ("t", "s", 4, 0)]


async def test_versions_are_numbered_per_kind_and_other_kinds_store_beside_the_bundle(scope, tmp_path):
    tenant, sid = scope
    await trained(tenant, sid, 1)
    bundle = await versions.new_version("job_a", tenant_id=tenant, scenario_id=sid, models_dir=tmp_path)
    learned = await versions.new_version("job_b", tenant_id=tenant, scenario_id=sid, models_dir=tmp_path,
                                         kind="sasrec")
    assert (bundle.version, bundle.artifact, bundle.status) == (2, f"{tenant}/{sid}/v2", "TRAINING")
    assert (learned.version, learned.artifact) == (1, f"{tenant}/{sid}/sasrec/v1")
