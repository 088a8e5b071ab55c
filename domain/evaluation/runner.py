"""Run the offline evaluation: split, train each template through the serving code, rank, score, compare."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from domain.evaluation.baselines import AlsGrid, Matrix, als_top_k, fit_als, popularity_top_k, tune_als
from domain.evaluation.dataset import Ratings, load_ratings
from domain.evaluation.metrics import MetricSums, self_information
from domain.evaluation.report import Report, Row
from domain.evaluation.split import Split, split_interactions
from domain.learning.model import ScenarioModel
from domain.learning.train import TrainingData, train_scenario_model
from domain.recommend.base import RecRequest
from domain.recommend.engine import Engine
from domain.scenarios.config import build_config
from domain.scenarios.templates import TEMPLATES

Progress = Callable[[str, int, int], None]  # (task, done, total)
MODELS = ("sasrec",)
MODEL_LIMIT = 200  # candidates a model alone recalls (its fallback, popularity, fills only for unknown users)


@dataclass(frozen=True)
class Settings:
    """What to evaluate and how."""

    dataset: Path
    split: str = "temporal"
    k: int = 10
    templates: Sequence[str] = tuple(TEMPLATES)
    als_grid: AlsGrid = field(default_factory=AlsGrid)
    seed: int = 7
    models: Sequence[str] = MODELS  # learned recall sources evaluated alone


@dataclass(frozen=True)
class _Run:
    """The loaded dataset and its split, shared by every row."""

    ratings: Ratings
    split: Split
    users: list[str]
    train_items: dict[str, frozenset[str]]
    categories: dict[str, tuple[str, ...]]
    information: dict[str, float]
    catalogue_size: int


async def evaluate(settings: Settings, progress: Progress | None = None) -> Report:
    """Evaluate every template's pipeline and the baselines on one split of the dataset."""
    report_progress = progress or (lambda task, done, total: None)
    run = _prepare(settings)
    report = Report(dataset=str(settings.dataset), split=settings.split, k=settings.k, facts=_facts(run))
    for template in settings.templates:
        report.rows.append(await _template_row(run, settings, template, report_progress))
    for name in settings.models:
        report.rows.append(await _model_row(run, settings, name, report_progress))
    report.rows.append(_popularity_row(run, settings, report_progress))
    report.rows.append(_als_row(run, settings, report_progress))
    return report


def _prepare(settings: Settings) -> _Run:
    ratings = load_ratings(settings.dataset)
    split = split_interactions(ratings.user_ids, ratings.item_ids, ratings.timestamps, how=settings.split,
                               seed=settings.seed)
    train_items: dict[str, set[str]] = {}
    for user, item in zip(ratings.user_ids[split.train].tolist(), ratings.item_ids[split.train].tolist(), strict=True):
        train_items.setdefault(user, set()).add(item)
    users_of = Matrix.build(ratings.user_ids[split.train], ratings.item_ids[split.train],
                            [i["item_id"] for i in ratings.items])
    counts = np.asarray(users_of.values.sum(axis=0)).ravel()
    return _Run(
        ratings=ratings, split=split, users=split.users,
        train_items={u: frozenset(s) for u, s in train_items.items()},
        categories={i["item_id"]: tuple(i["categories"]) for i in ratings.items},
        information=self_information(dict(zip(users_of.items, counts.astype(int).tolist(), strict=True)),
                                     len(users_of.users)),
        catalogue_size=sum(1 for i in ratings.items if i.get("status", "ACTIVE") == "ACTIVE"),
    )


def _facts(run: _Run) -> dict[str, object]:
    train = int(run.split.train.sum())
    return {"items": len(run.ratings.items), "interactions": len(run.ratings), "training interactions": train,
            "held-out interactions": len(run.ratings) - train, "evaluated users": len(run.users)}


def _training_data(run: _Run) -> TrainingData:
    r, mask = run.ratings, run.split.train
    return TrainingData(items=r.items, user_ids=r.user_ids[mask].tolist(), item_ids=r.item_ids[mask].tolist(),
                        types=["RATING"] * int(mask.sum()), values=r.values[mask].tolist(),
                        timestamps=r.timestamps[mask])


async def _template_row(run: _Run, settings: Settings, template: str, progress: Progress) -> Row:
    model, sums, train_s, scoring = await _pipeline(run, settings, template, build_config(template, None), progress)
    return _row(run, template, "template", sums, train_s, scoring, f"{model.nbytes() / 1e6:.1f} MB model")


async def _model_row(run: _Run, settings: Settings, name: str, progress: Progress) -> Row:
    """Evaluate one learned recall source alone, through the serving code (popularity answers unknown users)."""
    config = build_config("CUSTOM", {"recall": [{"source": name, "weight": 1.0, "limit": MODEL_LIMIT}], "rerank": [],
                                     "fallback": {"sources": ["popular"], "minItems": settings.k}})
    model, sums, train_s, scoring = await _pipeline(run, settings, name, config, progress)
    info = model.info.get(name) or {}
    note = (f"validation NDCG@10 {info.get('valNdcg10')}, best epoch {info.get('bestEpoch')} of "
            f"{info.get('epochs')} ({info.get('stopped')}), {info.get('device')}")
    return _row(run, name, "model", sums, train_s, scoring, note)


async def _pipeline(run: _Run, settings: Settings, name: str, config: dict,
                    progress: Progress) -> tuple[ScenarioModel, MetricSums, float, float]:
    """Train a scenario config on the split's training part and score its lists; return the timings too."""
    started = time.perf_counter()
    model = train_scenario_model(_training_data(run), config, scenario_id=f"eval-{name.lower()}", version=1,
                                 progress=lambda fraction, stage: progress(f"train {name}", int(fraction * 100), 100))
    train_s = time.perf_counter() - started
    engine = Engine(config, model)
    sums = MetricSums(k=settings.k)
    scoring = 0.0
    # One request uses one core, as in serving: BLAS threads would only contend on these small products.
    with threadpool_limits(1, "blas"):
        for done, user in enumerate(run.users, start=1):
            request = RecRequest(user_id=user, limit=settings.k, history=model.user_history(user),
                                 exclude=run.train_items.get(user, frozenset()), now=model.newest_event)
            start = time.perf_counter()
            result = await engine.recommend(request)
            scoring += time.perf_counter() - start
            _score(run, sums, user, [r.item_id for r in result.items])
            progress(f"score {name}", done, len(run.users))
    return model, sums, train_s, scoring


def _popularity_row(run: _Run, settings: Settings, progress: Progress) -> Row:
    started = time.perf_counter()
    r, mask = run.ratings, run.split.train
    matrix = Matrix.build(r.user_ids[mask], r.item_ids[mask], [i["item_id"] for i in r.items])
    trained = time.perf_counter()
    lists = popularity_top_k(matrix, run.users, settings.k)
    scoring = time.perf_counter() - trained
    sums = MetricSums(k=settings.k)
    for done, user in enumerate(run.users, start=1):
        _score(run, sums, user, lists[user])
        progress("score popularity", done, len(run.users))
    return _row(run, "popularity", "baseline", sums, trained - started, scoring, "users per item, all time")


def _als_row(run: _Run, settings: Settings, progress: Progress) -> Row:
    r, mask = run.ratings, run.split.train
    items = [i["item_id"] for i in r.items]
    started = time.perf_counter()
    best, _ = tune_als(r.user_ids[mask], r.item_ids[mask], r.timestamps[mask], items, settings.als_grid,
                       settings.k, settings.split, progress=lambda done, total: progress("tune als", done, total))
    matrix = Matrix.build(r.user_ids[mask], r.item_ids[mask], items)
    model = fit_als(matrix.values, best)
    trained = time.perf_counter()
    lists = als_top_k(model, matrix, run.users, settings.k)
    scoring = time.perf_counter() - trained
    sums = MetricSums(k=settings.k)
    for user in run.users:
        _score(run, sums, user, lists.get(user, []))
    note = "tuned: " + ", ".join(f"{key}={value:g}" for key, value in best.items())
    return _row(run, "als (implicit)", "baseline", sums, trained - started, scoring, note)


def _score(run: _Run, sums: MetricSums, user: str, ranked: list[str]) -> None:
    sums.add(ranked, run.split.test[user], run.categories, run.information)


def _row(run: _Run, name: str, kind: str, sums: MetricSums, train_s: float, scoring_s: float, note: str) -> Row:
    metrics = sums.summary(run.catalogue_size)
    metrics.update(train_s=train_s, score_ms=scoring_s * 1000 / max(sums.users, 1))
    return Row(name=name, kind=kind, metrics=metrics, note=note)
