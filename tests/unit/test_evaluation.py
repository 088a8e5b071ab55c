"""The offline evaluation's parts without training: EASE's one-decomposition grid against the textbook inverse, the
test-split tuning, recent popularity, and rows that hold one value per seed."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from domain.evaluation.baselines import (
    EaseBasis,
    Matrix,
    ranked_top_k,
    recent_counts,
    recent_popularity_order,
    tune,
)
from domain.evaluation.report import Report, Row

DAY = 86_400.0


def _matrix(values: np.ndarray) -> Matrix:
    users, items = values.shape
    return Matrix([f"u{i}" for i in range(users)], [f"i{j}" for j in range(items)], sp.csr_matrix(values))


@pytest.mark.parametrize(("users", "items"), [(30, 50), (80, 40)])  # the user side and the item side decomposed
def test_ease_matches_the_closed_form_at_every_lambda(users: int, items: int) -> None:
    values = (np.random.default_rng(users).random((users, items)) < 0.15).astype(np.float32)
    values[:, -3:] = 0.0  # items nobody trained on stay out of the model
    matrix = _matrix(values)
    basis = EaseBasis.fit(matrix)
    assert basis.with_training == len(basis.vocabulary) == np.count_nonzero(values.sum(axis=0))
    x = values[:, basis.vocabulary].astype(np.float64)
    for lam in (5.0, 500.0):
        p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
        scores = x @ (np.eye(x.shape[1]) - p / np.diag(p)[None, :])  # B = I - P / diag(P)
        assert np.allclose(basis.weights(lam)[1], np.diag(p))
        lists = basis.top_k(matrix, lam, matrix.users, 5)
        for row, user in enumerate(matrix.users):
            expected = np.where(x[row] > 0, -np.inf, scores[row])
            assert lists[user] == [matrix.items[basis.vocabulary[j]] for j in np.argsort(-expected)[:5]]


def test_ease_keeps_the_most_popular_items_up_to_its_cap() -> None:
    values = np.zeros((4, 6), dtype=np.float32)
    values[:, 2] = values[:3, 4] = values[:2, 0] = values[:1, 5] = 1.0
    basis = EaseBasis.fit(_matrix(values), max_items=3)
    assert basis.vocabulary.tolist() == [2, 4, 0] and basis.with_training == 4


def test_tuning_keeps_the_setting_that_scores_best_on_the_test_split() -> None:
    test = {"a": frozenset({"x"}), "b": frozenset({"y"})}
    lists = {1: {"a": ["z", "x"], "b": ["z"]}, 2: {"a": ["x"], "b": ["y"]}, 3: {"a": ["x"], "b": ["y"]}}
    seen: list[tuple[int, int]] = []
    tuned = tune([1, 2, 3], lambda c: c, lambda c: lists[c], test, k=2, progress=lambda d, t: seen.append((d, t)))
    assert tuned.best == 2 and tuned.ndcg == 1.0 and tuned.lists == lists[2]  # the first of equals
    assert seen == [(1, 3), (2, 3), (3, 3)] and tuned.grid_seconds >= tuned.score_seconds >= 0


def test_recent_popularity_counts_the_window_and_breaks_ties_by_all_time_users() -> None:
    users = np.array(["a", "b", "c", "a", "b", "c"], dtype=object)
    items = np.array(["old", "old", "old", "new", "mid", "mid"], dtype=object)
    times = np.array([0, 0, 0, 100, 95, 60]) * DAY
    matrix = Matrix.build(users, items, ["new", "mid", "old", "none"])
    assert recent_counts(matrix, users, items, times, 7).tolist() == [1, 1, 0, 0]
    assert recent_counts(matrix, users, items, times, 365).tolist() == [1, 2, 3, 0]
    order = recent_popularity_order(matrix, recent_counts(matrix, users, items, times, 7))
    assert [matrix.items[i] for i in order] == ["mid", "new", "old", "none"]  # mid: two users all time
    assert ranked_top_k(matrix, order, ["a", "z"], 2) == {"a": ["mid", "none"], "z": ["mid", "new"]}


def test_a_row_holds_each_seeds_value_and_reads_as_mean_and_sample_deviation() -> None:
    runs = [Row.of_run("sasrec", "model", {"ndcg": v, "train_s": t}, note=f"epochs {e}")
            for v, t, e in ((0.1350, 60.0, 9), (0.1372, 62.0, 9), (0.1361, 61.0, 11))]
    row = Row.combine(runs, (7, 8, 9))
    assert row.samples["ndcg"] == (0.1350, 0.1372, 0.1361) and row.runs == 3
    assert row.value("ndcg") == pytest.approx(0.1361) and row.spread("ndcg") == pytest.approx(0.0011)
    assert row.text("ndcg", 4) == "0.1361 ± 0.0011" and row.text("train_s", 1) == "61.0"
    assert row.note == "seed 7: epochs 9; seed 8: epochs 9; seed 9: epochs 11"
    tuned = [Row.of_run("EASE", "baseline", {"ndcg": 0.2}, note=f"tuned: lambda={lam}") for lam in (100, 200)]
    assert Row.combine(tuned, (7, 8)).note == "tuned: seed 7: lambda=100; seed 8: lambda=200"
    assert Row.combine(tuned[:1], (7,)).text("ndcg", 4) == "0.2000"


def _report(split: str, sasrec: float) -> Report:
    rows = [Row.of_run("VLOG", "template", {"ndcg": 0.15}), Row.of_run("sasrec", "model", {"ndcg": sasrec}),
            Row.of_run("popularity", "baseline", {"ndcg": 0.09}), Row.of_run("EASE", "baseline", {"ndcg": 0.12})]
    return Report(dataset="d", split=split, k=10, rows=rows)


def test_the_verdict_measures_the_best_template_against_ease_and_sasrec_against_its_target() -> None:
    lines = _report("temporal", 0.14).verdict()
    assert lines[0].startswith("Best template **VLOG** NDCG@10 0.1500 = **1.25x** EASE's 0.1200")
    assert lines[1] == "sasrec alone NDCG@10 0.1400 against its target 0.135: **met**."
    assert "**not met**" in _report("temporal", 0.12).verdict()[1]
    assert not any("sasrec" in line for line in _report("loo", 0.14).verdict())  # the target is a temporal one
    assert lines[-1] == "Templates below popularity: none."
