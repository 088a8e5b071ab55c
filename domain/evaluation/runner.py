"""Run the offline evaluation: split, train each template through the serving code, rank, score, compare; once per
seed, the rows then holding each metric's value at every seed."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from threadpoolctl import threadpool_limits

from domain.evaluation.baselines import (
    EASE_LAMBDAS,
    EASE_MAX_ITEMS,
    RECENT_DAYS,
    AlsGrid,
    EaseBasis,
    Lists,
    Matrix,
    Tuned,
    als_top_k,
    fit_als,
    popularity_top_k,
    ranked_top_k,
    recent_counts,
    recent_popularity_order,
    tune,
)
from domain.evaluation.dataset import Ratings, load_ratings
from domain.evaluation.metrics import MetricSums, self_information
from domain.evaluation.report import EASE, TUNED_ON_TEST, Report, Row
from domain.evaluation.split import DESCRIPTIONS, MIN_INTERACTIONS, Split, depends_on_seed, split_interactions
from domain.learning.model import ScenarioModel
from domain.learning.train import TrainingData, train_scenario_model
from domain.recommend.base import RecRequest
from domain.recommend.engine import Engine
from domain.scenarios.config import build_config, validate_config
from domain.scenarios.templates import TEMPLATES

Progress = Callable[[str, int, int], None]  # (task, done, total)
MODELS = ("sasrec", "two_tower")
MODEL_LIMIT = 200  # candidates a model alone recalls (its fallback, popularity, fills only for unknown users)
FIRST_SEED = 7
SEEDED_SOURCES = ("sasrec", "two_tower")  # recall sources whose training draws from a seed their params can set


def first_seeds(count: int) -> tuple[int, ...]:
    """Return the first `count` seeds (7, 8, 9, ...)."""
    return tuple(range(FIRST_SEED, FIRST_SEED + count))


@dataclass(frozen=True)
class Settings:
    """What to evaluate and how."""

    dataset: Path
    split: str = "temporal"
    k: int = 10
    seeds: tuple[int, ...] = first_seeds(3)  # each drives the random split, the seeded sources and ALS
    templates: Sequence[str] = tuple(TEMPLATES)
    models: Sequence[str] = MODELS  # learned recall sources evaluated alone
    # Params merged into every recall source of that name, in the templates and alone (a test's tiny sasrec).
    source_params: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    als_grid: AlsGrid = field(default_factory=AlsGrid)
    recent_days: tuple[float, ...] = RECENT_DAYS
    ease_lambdas: tuple[float, ...] = EASE_LAMBDAS
    ease_max_items: int = EASE_MAX_ITEMS
    tuning_budget_s: float | None = None  # each template's `models.tuningBudgetSeconds` (None: the template's own)


@dataclass(frozen=True)
class _Run:
    """The loaded dataset and one seed's split, shared by every row of that seed."""

    seed: int
    ratings: Ratings
    split: Split
    matrix: Matrix  # the training part, users x catalogue items
    users: list[str]
    train_items: dict[str, frozenset[str]]
    categories: dict[str, tuple[str, ...]]
    information: dict[str, float]
    catalogue_size: int


async def evaluate(settings: Settings, progress: Progress | None = None) -> Report:
    """Evaluate every template's pipeline, each model alone and the baselines on the dataset, once per seed."""
    if not settings.seeds:
        raise ValueError("evaluate needs at least one seed")
    report_progress = progress or (lambda task, done, total: None)
    ratings = load_ratings(settings.dataset)
    runs: list[list[Row]] = []
    facts: dict[str, object] = {}
    for seed in settings.seeds:
        run = _prepare(ratings, settings, seed)
        facts = facts or _facts(run, settings)
        runs.append(await _rows(run, settings, _for_seed(report_progress, seed, len(settings.seeds))))
    rows = [Row.combine([per_seed[i] for per_seed in runs], settings.seeds) for i in range(len(runs[0]))]
    return Report(dataset=str(settings.dataset), split=settings.split, k=settings.k, seeds=tuple(settings.seeds),
                  facts=facts, rows=rows)


def _for_seed(progress: Progress, seed: int, seed_count: int) -> Progress:
    if seed_count == 1:
        return progress
    return lambda task, done, total: progress(f"{task} (seed {seed})", done, total)


async def _rows(run: _Run, settings: Settings, progress: Progress) -> list[Row]:
    rows = [await _template_row(run, settings, template, progress) for template in settings.templates]
    rows += [await _model_row(run, settings, name, progress) for name in settings.models]
    rows += [_popularity_row(run, settings, progress), _recent_popularity_row(run, settings, progress),
             _ease_row(run, settings, progress), _als_row(run, settings, progress)]
    return rows


def _prepare(ratings: Ratings, settings: Settings, seed: int) -> _Run:
    split = split_interactions(ratings.user_ids, ratings.item_ids, ratings.timestamps, how=settings.split, seed=seed)
    train_items: dict[str, set[str]] = {}
    for user, item in zip(ratings.user_ids[split.train].tolist(), ratings.item_ids[split.train].tolist(), strict=True):
        train_items.setdefault(user, set()).add(item)
    matrix = Matrix.build(ratings.user_ids[split.train], ratings.item_ids[split.train],
                          [i["item_id"] for i in ratings.items])
    counts = matrix.user_counts()
    return _Run(
        seed=seed, ratings=ratings, split=split, matrix=matrix, users=split.users,
        train_items={u: frozenset(s) for u, s in train_items.items()},
        categories={i["item_id"]: tuple(i["categories"]) for i in ratings.items},
        information=self_information(dict(zip(matrix.items, counts.astype(int).tolist(), strict=True)),
                                     len(matrix.users)),
        catalogue_size=sum(1 for i in ratings.items if i.get("status", "ACTIVE") == "ACTIVE"),
    )


def _facts(run: _Run, settings: Settings) -> dict[str, object]:
    train = int(run.split.train.sum())
    same = "a new draw at each seed" if depends_on_seed(settings.split) else "the same at every seed"
    split = f"{DESCRIPTIONS[settings.split]}, of users with at least {MIN_INTERACTIONS} interactions ({same})"
    return {"split": split, "items": len(run.ratings.items),
            "interactions": len(run.ratings), "training interactions": train,
            "held-out interactions": len(run.ratings) - train, "evaluated users": len(run.users),
            "seeds": ", ".join(str(s) for s in settings.seeds)}


def _training_data(run: _Run) -> TrainingData:
    r, mask = run.ratings, run.split.train
    return TrainingData(items=r.items, user_ids=r.user_ids[mask].tolist(), item_ids=r.item_ids[mask].tolist(),
                        types=["RATING"] * int(mask.sum()), values=r.values[mask].tolist(),
                        timestamps=r.timestamps[mask])


def _config(run: _Run, settings: Settings, template: str, overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return the template's config with the run's seed and the settings' params in its recall sources, and the
    training's validation slice drawn as the split draws its test part (a random split is scored on items drawn at
    random, so the fit is too: a time-ordered slice would fit the blend to what the test does not ask)."""
    config = build_config(template, overrides)
    config["models"]["validation"] = "random" if settings.split == "random" else "temporal"
    if settings.tuning_budget_s is not None:
        config["models"]["tuningBudgetSeconds"] = settings.tuning_budget_s
    for source in config["recall"]:
        extra = dict(settings.source_params.get(source["source"], {}))
        if source["source"] in SEEDED_SOURCES:
            extra["seed"] = run.seed
        source["params"] = {**(source.get("params") or {}), **extra}
    return validate_config(config)


async def _template_row(run: _Run, settings: Settings, template: str, progress: Progress) -> Row:
    config = _config(run, settings, template, None)
    model, sums, train_s, scoring = await _pipeline(run, settings, template, config, progress)
    return _row(run, template, "template", sums, train_s, scoring, f"{model.nbytes() / 1e6:.1f} MB model")


async def _model_row(run: _Run, settings: Settings, name: str, progress: Progress) -> Row:
    """Evaluate one learned recall source alone, through the serving code (popularity answers unknown users)."""
    config = _config(run, settings, "CUSTOM", {
        "recall": [{"source": name, "weight": 1.0, "limit": MODEL_LIMIT}], "rerank": [],
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
                                 exclude=run.train_items.get(user, frozenset()), now=model.newest_event,
                                 history_events=model.user_events(user))
            start = time.perf_counter()
            result = await engine.recommend(request)
            scoring += time.perf_counter() - start
            _score(run, sums, user, [r.item_id for r in result.items])
            progress(f"score {name}", done, len(run.users))
    return model, sums, train_s, scoring


def _popularity_row(run: _Run, settings: Settings, progress: Progress) -> Row:
    started = time.perf_counter()
    lists = popularity_top_k(run.matrix, run.users, settings.k)
    scoring = time.perf_counter() - started
    return _lists_row(run, settings, "popularity", lists, 0.0, scoring, "users per item, all time", progress)


def _recent_popularity_row(run: _Run, settings: Settings, progress: Progress) -> Row:
    """Popularity over the last N days of the training part, N chosen from a grid on the test split."""
    r, mask = run.ratings, run.split.train
    users, items, times = r.user_ids[mask], r.item_ids[mask], r.timestamps[mask]
    tuned = tune(settings.recent_days,
                 lambda days: recent_popularity_order(run.matrix, recent_counts(run.matrix, users, items, times, days)),
                 lambda order: ranked_top_k(run.matrix, order, run.users, settings.k), run.split.test, settings.k,
                 lambda done, total: progress("tune recent popularity", done, total))
    note = (f"{TUNED_ON_TEST} over {_grid(settings.recent_days)} days: users per item in the last {tuned.best:g} "
            "days of training")
    return _tuned_row(run, settings, "recent popularity", tuned, 0.0, note, progress)


def _ease_row(run: _Run, settings: Settings, progress: Progress) -> Row:
    """EASE in closed form (Steck 2019) over the items with training interactions, lambda chosen on the test split."""
    started = time.perf_counter()
    basis = EaseBasis.fit(run.matrix, settings.ease_max_items)
    decomposed = time.perf_counter() - started
    tuned = tune(settings.ease_lambdas, lambda lam: lam,
                 lambda lam: basis.top_k(run.matrix, lam, run.users, settings.k), run.split.test, settings.k,
                 lambda done, total: progress("tune ease", done, total))
    items = len(basis.vocabulary)
    scope = (f"the {items} most popular of the {basis.with_training} items with training interactions"
             if items < basis.with_training else f"the {items} items with training interactions")
    note = f"{TUNED_ON_TEST} over lambda {_grid(settings.ease_lambdas)}, on {scope}: lambda={tuned.best:g}"
    return _tuned_row(run, settings, EASE, tuned, decomposed, note, progress)


def _als_row(run: _Run, settings: Settings, progress: Progress) -> Row:
    """implicit's ALS, its factors and regularization chosen from a grid on the test split."""
    tuned = tune(settings.als_grid.settings(), lambda values: fit_als(run.matrix.values, values, run.seed),
                 lambda model: als_top_k(model, run.matrix, run.users, settings.k), run.split.test, settings.k,
                 lambda done, total: progress("tune als", done, total))
    grid = settings.als_grid.settings()
    varied = {key for key in tuned.best if len({values[key] for values in grid}) > 1}
    fixed = ", ".join(f"{key}={value:g}" for key, value in tuned.best.items() if key not in varied)
    chosen = ", ".join(f"{key}={value:g}" for key, value in tuned.best.items() if key in varied) or "the only one"
    note = f"{TUNED_ON_TEST} over {len(grid)} settings{f' ({fixed})' if fixed else ''}: {chosen}"
    return _tuned_row(run, settings, "als (implicit)", tuned, 0.0, note, progress)


def _grid(values: Sequence[float]) -> str:
    return "/".join(f"{v:g}" for v in values)


def _tuned_row(run: _Run, settings: Settings, name: str, tuned: Tuned[Any], extra_train_s: float, note: str,
               progress: Progress) -> Row:
    """Score a tuned baseline's best lists; its training time is the whole search (every setting fitted and
    scored: that is what the row costs), plus any shared preparation."""
    return _lists_row(run, settings, name, tuned.lists, extra_train_s + tuned.grid_seconds, tuned.score_seconds,
                      note, progress)


def _lists_row(run: _Run, settings: Settings, name: str, lists: Lists, train_s: float, scoring_s: float, note: str,
               progress: Progress) -> Row:
    sums = MetricSums(k=settings.k)
    for done, user in enumerate(run.users, start=1):
        _score(run, sums, user, lists.get(user, []))
        progress(f"score {name}", done, len(run.users))
    return _row(run, name, "baseline", sums, train_s, scoring_s, note)


def _score(run: _Run, sums: MetricSums, user: str, ranked: list[str]) -> None:
    sums.add(ranked, run.split.test[user], run.categories, run.information)


def _row(run: _Run, name: str, kind: str, sums: MetricSums, train_s: float, scoring_s: float, note: str) -> Row:
    metrics = sums.summary(run.catalogue_size)
    metrics.update(train_s=train_s, score_ms=scoring_s * 1000 / max(sums.users, 1))
    return Row.of_run(name=name, kind=kind, metrics=metrics, note=note)
