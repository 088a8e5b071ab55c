"""Erasure in saved models: a user's history and item -> users column go; everyone else's stay exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from domain.erasure import digest
from domain.learning.forget import forget_users
from domain.learning.model import ScenarioModel
from domain.learning.train import train_scenario_model
from tests.unit.test_learning import config, synthetic


def trained(tmp_path: Path) -> tuple[ScenarioModel, Path]:
    model = train_scenario_model(synthetic(), config("popular", "item_cf", "user_cf"), scenario_id="s", version=1)
    path = tmp_path / "v1"
    model.save(path)
    return model, path


def test_forgetting_a_user_rewrites_the_model_without_them(tmp_path: Path):
    before, path = trained(tmp_path)
    assert before.user_history("u7") and before.item_users is not None

    assert forget_users(path, {"u7"}.__contains__) == 1

    after = ScenarioModel.load(path)
    assert "u7" not in after.user_ids and after.user_history("u7") == []
    assert len(after.user_ids) == len(before.user_ids) - 1
    for user in before.user_ids:
        if user != "u7":
            assert after.user_history(user) == before.user_history(user)
    # the item -> users index lost u7's column and kept everyone else's, renumbered
    old_rows = {u: i for i, u in enumerate(before.user_ids)}
    new_rows = {u: i for i, u in enumerate(after.user_ids)}
    for item in range(after.item_users.shape[0]):
        kept = {before.user_ids[j] for j in before.item_users[item].indices} - {"u7"}
        assert {after.user_ids[j] for j in after.item_users[item].indices} == kept
    assert after.item_users.shape[1] == before.item_users.shape[1] - 1
    assert old_rows.keys() - new_rows.keys() == {"u7"}
    # aggregates keep no user: unchanged
    assert np.array_equal(after.counts, before.counts)
    assert b"u7\"" not in b"".join(p.read_bytes() for p in path.iterdir() if p.is_file())


def test_forgetting_nobody_leaves_the_files_untouched(tmp_path: Path):
    _, path = trained(tmp_path)
    stamps = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert forget_users(path, {"nobody"}.__contains__) == 0
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == stamps


def test_users_can_be_matched_by_keyed_hash(tmp_path: Path):
    _, path = trained(tmp_path)
    key = b"k" * 32
    erased = {digest(key, "u3"), digest(key, "u21")}
    assert forget_users(path, lambda user: digest(key, user) in erased) == 2
    assert {"u3", "u21"}.isdisjoint(ScenarioModel.load(path).user_ids)
    assert digest(key, "u3") != digest(b"x" * 32, "u3") and len(digest(key, "u3")) == 32
