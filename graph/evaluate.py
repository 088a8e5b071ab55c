"""The `recograph evaluate` command: every scenario template's pipeline, each model alone and the baselines, evaluated
offline over several seeds."""

from __future__ import annotations

import asyncio
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table

from domain.errors import DomainError
from domain.evaluation.report import Report
from domain.evaluation.runner import Settings, evaluate, first_seeds

DEFAULT_DATASET = Path(__file__).resolve().parent.parent / "demo" / "ml-latest-small"
DEFAULT_OUTPUT = Path("bench/results/evaluate.md")


class SplitKind(str, Enum):
    temporal = "temporal"
    random = "random"
    loo = "loo"


def register(app: typer.Typer) -> None:
    """Add the `evaluate` command to the CLI."""
    app.command("evaluate")(evaluate_command)


def evaluate_command(
    dataset: Path = typer.Option(DEFAULT_DATASET, "--dataset", help="A dataset in the MovieLens layout."),
    split: SplitKind = typer.Option(SplitKind.temporal, "--split", help="temporal: each user's latest 20% held "
                                    "out; random: a random 20%; loo: each user's newest interaction (users with at "
                                    "least 5 interactions)."),
    k: int = typer.Option(10, "--k", min=1, max=200, help="List length the metrics are computed at."),
    seed_count: int = typer.Option(3, "--seeds", min=1, max=20, help="Runs, with seeds 7, 8, 9, ...: each cell "
                                   "is the mean ± the sample standard deviation over them (--seeds 1: one quick run)."),
    output: Path = typer.Option(DEFAULT_OUTPUT, "--output", help="Where to write the table as Markdown."),
) -> None:
    """Train every template's pipeline, each model alone and the baselines on a split of a dataset, once per seed;
    print and save the comparison (mean ± sample standard deviation over the seeds)."""
    errors = Console(stderr=True)
    settings = Settings(dataset=dataset, split=split.value, k=k, seeds=first_seeds(seed_count))
    try:
        report = _run(settings, errors)
    except DomainError as exc:
        errors.print(f"[red]recograph: {exc.message}[/red]")
        raise typer.Exit(1) from None
    Console().print(_table(report))
    for line in report.verdict():
        Console().print(line)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(report.to_markdown(), encoding="utf-8")
    errors.print(f"written to {output}")


def _run(settings: Settings, console: Console) -> Report:
    columns = (TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bars:
        tasks: dict[str, TaskID] = {}

        def progress(task: str, done: int, total: int) -> None:
            if task not in tasks:
                tasks[task] = bars.add_task(task, total=total)
            bars.update(tasks[task], completed=done, total=total)

        return asyncio.run(evaluate(settings, progress))


def _table(report: Report) -> Table:
    runs = f"seeds {', '.join(str(s) for s in report.seeds)}"
    table = Table(title=f"{report.dataset} ({report.split} split, k={report.k}, {runs})")
    for header in report.headers():
        table.add_column(header, justify="left" if header in ("Pipeline", "Kind", "Notes") else "right")
    for row in report.rows:
        table.add_row(*report.cells(row))
    return table
