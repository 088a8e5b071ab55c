"""The offline evaluation end to end: the runner on a sample of the demo MovieLens data (every template above
popularity, the best measured against EASE tuned on the test split), two seeds of the leave-one-out split of a small
synthetic dataset, and the `evaluate` command on another."""

from __future__ import annotations

import csv
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from domain.evaluation.baselines import AlsGrid
from domain.evaluation.report import TIMINGS, Report
from domain.evaluation.runner import Settings, evaluate
from domain.evaluation.split import split_interactions
from domain.scenarios.templates import TEMPLATES
from graph.evaluate import register

DEMO = Path(__file__).resolve().parents[2] / "demo" / "ml-latest-small"
# A few seconds of sasrec training: enough for its row to exist and to depend on the seed.
TINY_SASREC = {"two_tower": {"dim": 16, "maxEpochs": 3, "patience": 2, "timeBudgetSeconds": 10.0, "targetsPerUser": 4},
               "sasrec": {"dim": 16, "blocks": 1, "maxEpochs": 4, "patience": 2, "timeBudgetSeconds": 10.0,
                          "targetSpan": 1, "minItemUsers": 1, "minUsers": 1}}
GENRES = ("Action", "Drama", "Comedy", "Horror", "Sci-Fi", "Romance")
GROUPS = 5  # latent tastes; genres are drawn independently of them, as coarse labels are in real catalogues
MOVIES_PER_GROUP = 12


def write_dataset(root: Path, users: int = 80, seed: int = 3) -> Path:
    """Write movies.csv and ratings.csv: each user rates mostly one taste group, a little of the next, with the
    group's popular movies more often."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    movies = [(g * MOVIES_PER_GROUP + n + 1, f"Movie {g}-{n} ({1990 + n})", "|".join(rng.choice(GENRES, 2, False)))
              for g in range(GROUPS) for n in range(MOVIES_PER_GROUP)]
    with (root / "movies.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["movieId", "title", "genres"])
        out.writerows(movies)
    skew = 1.0 / np.arange(1, MOVIES_PER_GROUP + 1)
    with (root / "ratings.csv").open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(["userId", "movieId", "rating", "timestamp"])
        for user in range(users):
            favourite, second = user % GROUPS, (user + 1) % GROUPS
            picks = [*_draw(rng, favourite, 9, skew), *_draw(rng, second, 3, skew)]
            for j in rng.permutation(len(picks)):
                out.writerow([user + 1, picks[j], float(rng.integers(2, 6)), 1_000_000 + user * 10_000 + j * 60])
    return root


def _draw(rng: np.random.Generator, group: int, count: int, skew: np.ndarray) -> list[int]:
    chosen = rng.choice(MOVIES_PER_GROUP, size=count, replace=False, p=skew / skew.sum())
    return [int(group * MOVIES_PER_GROUP + n + 1) for n in chosen]


def sample_movielens(root: Path, users: range, min_ratings: int = 3) -> Path:
    """Write the demo data's ratings of some users, on the movies they rated at least min_ratings times."""
    root.mkdir(parents=True, exist_ok=True)
    with (DEMO / "ratings.csv").open(newline="") as fh:
        reader = csv.reader(fh)
        header, rows = next(reader), [r for r in reader if int(r[0]) in users]
    counts = Counter(r[1] for r in rows)
    kept = {movie for movie, n in counts.items() if n >= min_ratings}
    for name, source, key in (("ratings.csv", rows, 1), ("movies.csv", None, 0)):
        with (root / name).open("w", newline="") as out:
            writer = csv.writer(out)
            if source is None:
                with (DEMO / name).open(newline="") as fh:
                    reader = csv.reader(fh)
                    header, source = next(reader), list(reader)
            writer.writerow(header)
            writer.writerows(r for r in source if r[key] in kept)
    return root


@pytest.fixture(scope="module")
async def report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    dataset = sample_movielens(tmp_path_factory.mktemp("data") / "ml-sample", range(1, 101), min_ratings=4)
    seen: list[str] = []
    grid = AlsGrid(factors=(16, 32), regularization=(0.1, 1.0))
    result = await evaluate(Settings(dataset=dataset, k=10, seeds=(7,), als_grid=grid, source_params=TINY_SASREC,
                                     tuning_budget_s=2.0),
                            progress=lambda task, done, total: seen.append(task))
    assert {"score VLOG", "train NEWS", "tune als", "tune ease", "tune recent popularity"} <= set(seen)
    return result


@pytest.fixture(scope="module")
async def seeded(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """Two seeds on the leave-one-out split of a small synthetic dataset, with a tiny sasrec."""
    dataset = write_dataset(tmp_path_factory.mktemp("data") / "synthetic", users=40)
    settings = Settings(dataset=dataset, split="loo", k=5, seeds=(7, 8), templates=("CUSTOM",),
                        source_params=TINY_SASREC, als_grid=AlsGrid(factors=(8, 16), regularization=(0.1,)))
    return await evaluate(settings)


def test_the_temporal_split_holds_out_each_users_latest_fifth():
    users = np.array(["a"] * 10 + ["b"] * 4)
    items = np.array([f"i{n}" for n in range(14)])
    times = np.array([*range(10, 0, -1), 1, 2, 3, 4], dtype=np.float64)
    split = split_interactions(users, items, times)
    assert split.test == {"a": frozenset({"i0", "i1"})}  # the two latest of ten; b has too few to hold out
    assert split.train.sum() == 12


def test_leave_one_out_holds_out_each_users_newest_interaction_ties_by_file_order():
    users = np.array(["a"] * 6 + ["b"] * 5 + ["c"] * 4)
    items = np.array([f"i{n}" for n in range(15)])
    times = np.array([5, 9, 1, 9, 2, 3, 1, 2, 3, 4, 0, 1, 2, 3, 4], dtype=np.float64)
    split = split_interactions(users, items, times, how="loo")
    # a: i1 and i3 share the newest time, the later line wins; b: its newest; c: too few interactions to test.
    assert split.test == {"a": frozenset({"i3"}), "b": frozenset({"i9"})}
    assert split.train.sum() == 13


def test_every_template_model_and_baseline_is_scored(report: Report):
    names = [row.name for row in report.rows]
    assert names == [*TEMPLATES, "sasrec", "two_tower", "popularity", "recent popularity", "EASE", "als (implicit)"]
    for row in report.rows:
        for key in ("ndcg", "recall", "map", "coverage", "diversity"):
            assert 0.0 <= row.value(key) <= 1.0, (row.name, key)
        assert row.value("novelty") > 0 and row.value("train_s") >= 0 and row.value("score_ms") > 0
    assert report.facts["evaluated users"] == 100


def test_no_template_ranks_below_popularity_and_the_best_is_measured_against_ease(report: Report):
    assert report.below_popularity() == []
    best = report.best("template")
    for name in ("popularity", "recent popularity"):
        assert best.value("ndcg") > 1.05 * report.row(name).value("ndcg"), name
    assert report.ratio() == pytest.approx(best.value("ndcg") / report.row("EASE").value("ndcg"))
    assert report.row("popularity").value("coverage") < best.value("coverage")


def test_the_markdown_has_one_table_and_the_verdict(report: Report):
    text = report.to_markdown()
    table = [line for line in text.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(report.rows)
    assert "NDCG@10" in table[0] and "Templates below popularity: none." in text
    assert "Seed 7: one run" in text and " ± " not in text
    assert f"EASE's {report.row('EASE').value('ndcg'):.4f}" in text and "sasrec alone NDCG@10" in text


def test_the_baselines_are_tuned_on_the_test_split_and_say_so(seeded: Report):
    ease, recent, als = (seeded.row(name) for name in ("EASE", "recent popularity", "als (implicit)"))
    for row in (ease, recent, als):
        assert row.kind == "baseline" and row.note.startswith("tuned on the test split (upper bound) over "), row.note
    lam = float(re.search(r"lambda=(\d+)", ease.note).group(1))
    assert lam in Settings(dataset=Path()).ease_lambdas and "on the 60 items with training interactions" in ease.note
    assert re.search(r"last (7|30|90|365) days of training", recent.note)
    grid, _, chosen = als.note.partition(": ")  # the values both seeds chose, each with its seed if they differ
    assert "over 2 settings (regularization=0.1, iterations=15, alpha=1)" in grid
    assert "factors=" in chosen and "regularization" not in chosen


def test_leave_one_out_evaluates_one_held_out_interaction_per_user(seeded: Report):
    assert seeded.facts["held-out interactions"] == seeded.facts["evaluated users"] == 40
    assert seeded.facts["split"].startswith("leave-one-out") and "the same at every seed" in seeded.facts["split"]
    assert "sasrec alone" not in "\n".join(seeded.verdict())  # its target is for the temporal split


def test_each_cell_is_the_mean_and_spread_over_the_seeds(seeded: Report):
    text = seeded.to_markdown()
    assert "Seeds 7, 8: each cell is the mean ± the sample standard deviation" in text
    sasrec = seeded.row("sasrec")
    assert all(len(values) == 2 for values in sasrec.samples.values())
    ndcg = sasrec.samples["ndcg"]
    assert sasrec.value("ndcg") == pytest.approx(np.mean(ndcg))
    assert sasrec.spread("ndcg") == pytest.approx(np.std(ndcg, ddof=1))
    row = next(line for line in text.splitlines() if line.startswith("| sasrec |"))
    assert f"{np.mean(ndcg):.4f} ± {np.std(ndcg, ddof=1):.4f}" in row


def test_the_seed_changes_the_seeded_model_and_not_what_draws_nothing(seeded: Report):
    sasrec = seeded.row("sasrec")
    per_seed = [tuple(values[i] for key, values in sorted(sasrec.samples.items()) if key not in TIMINGS)
                for i in range(2)]
    assert per_seed[0] != per_seed[1]
    for name in ("popularity", "recent popularity", "EASE"):  # a leave-one-out split does not depend on the seed
        row = seeded.row(name)
        assert all(row.spread(key) == 0.0 for key in ("ndcg", "recall", "coverage", "novelty")), name


def test_the_evaluate_command_prints_and_writes_the_table(tmp_path: Path):
    dataset = write_dataset(tmp_path / "small", users=30)
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    output = tmp_path / "out" / "evaluate.md"
    result = CliRunner().invoke(app, ["evaluate", "--dataset", str(dataset), "--split", "random", "--k", "3",
                                      "--seeds", "1", "--output", str(output)], env={"COLUMNS": "240"})
    assert result.exit_code == 0, result.output
    for name in ("popularity", "recent popularity", "EASE", "als (implicit)", "seeds 7"):
        assert name in result.output
    assert output.read_text().startswith("# Offline evaluation") and "Split: random; k = 3" in output.read_text()


def test_the_evaluate_command_fails_cleanly_without_a_dataset(tmp_path: Path):
    app = typer.Typer()
    register(app)
    app.callback()(lambda: None)
    result = CliRunner().invoke(app, ["evaluate", "--dataset", str(tmp_path / "nothing")])
    assert result.exit_code == 1
