"""The evaluation's result: one row per pipeline, model or baseline with its value at each seed, and its Markdown
rendering (mean ± sample standard deviation over the seeds)."""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

COLUMNS = (("NDCG@{k}", "ndcg", 4), ("Recall@{k}", "recall", 4), ("MAP@{k}", "map", 4), ("Coverage", "coverage", 3),
           ("Diversity", "diversity", 3), ("Novelty", "novelty", 2), ("Train s", "train_s", 1),
           ("Score ms/user", "score_ms", 2))
TIMINGS = ("train_s", "score_ms")  # shown as means only: their spread is the machine's, not the model's
EASE = "EASE"  # the baseline the best template is measured against
SASREC = "sasrec"
SASREC_TARGET = 0.135  # NDCG@10 the sasrec model alone is to reach on the temporal split
TUNED_ON_TEST = "tuned on the test split (upper bound)"


@dataclass(frozen=True)
class Row:
    """One evaluated recommender: a scenario template's pipeline, a model alone, or a baseline."""

    name: str
    kind: str  # "template", "model" or "baseline"
    samples: dict[str, tuple[float, ...]]  # metric -> its value at each seed, in seed order
    note: str = ""

    @classmethod
    def of_run(cls, name: str, kind: str, metrics: Mapping[str, float], note: str = "") -> Row:
        """Return the row of one seed's run."""
        return cls(name=name, kind=kind, samples={key: (float(v),) for key, v in metrics.items()}, note=note)

    @classmethod
    def combine(cls, runs: Sequence[Row], seeds: Sequence[int]) -> Row:
        """Return one row holding the runs' values (one run per seed, same recommender); notes that differ
        between seeds are kept, each with its seed, after the head ("...: ") they share."""
        first = runs[0]
        samples = {key: tuple(v for run in runs for v in run.samples.get(key, (float("nan"),)))
                   for key in first.samples}
        return cls(name=first.name, kind=first.kind, samples=samples, note=_combined_note(runs, seeds))

    @property
    def runs(self) -> int:
        return max((len(v) for v in self.samples.values()), default=0)

    def value(self, key: str) -> float:
        """Return the metric's mean over the seeds (NaN when not measured)."""
        values = self.samples.get(key)
        return statistics.fmean(values) if values else float("nan")

    def spread(self, key: str) -> float:
        """Return the metric's sample standard deviation over the seeds (0 with one seed)."""
        values = self.samples.get(key, ())
        return statistics.stdev(values) if len(values) >= 2 else 0.0

    def text(self, key: str, digits: int) -> str:
        """Return the metric as "mean ± sd" (the mean alone for one seed or a timing)."""
        if self.runs < 2 or key in TIMINGS:
            return f"{self.value(key):.{digits}f}"
        return f"{self.value(key):.{digits}f} ± {self.spread(key):.{digits}f}"


def _combined_note(runs: Sequence[Row], seeds: Sequence[int]) -> str:
    notes = [run.note for run in runs]
    if len(set(notes)) == 1:
        return notes[0]
    heads = {note.partition(": ")[0] for note in notes}
    head = f"{heads.pop()}: " if len(heads) == 1 and all(": " in note for note in notes) else ""
    return head + "; ".join(f"seed {seed}: {note[len(head):]}" for seed, note in zip(seeds, notes, strict=True))


@dataclass
class Report:
    """Every row of one run, with what the run was."""

    dataset: str
    split: str
    k: int
    seeds: tuple[int, ...] = (7,)
    facts: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def row(self, name: str) -> Row | None:
        """Return the row of that name."""
        return next((r for r in self.rows if r.name == name), None)

    def best(self, kind: str) -> Row | None:
        """Return the row of a kind with the highest mean NDCG@k."""
        rows = [r for r in self.rows if r.kind == kind]
        return max(rows, key=lambda r: r.value("ndcg"), default=None)

    def ratio(self) -> float | None:
        """Return the best template's mean NDCG@k over EASE's (tuned on the test split, an upper bound)."""
        template, ease = self.best("template"), self.row(EASE)
        if template is None or ease is None or not ease.value("ndcg") > 0:
            return None
        return template.value("ndcg") / ease.value("ndcg")

    def below_popularity(self) -> list[str]:
        """Return the templates whose mean NDCG@k is below the popularity baseline's."""
        popularity = self.row("popularity")
        if popularity is None:
            return []
        return [r.name for r in self.rows if r.kind == "template" and r.value("ndcg") < popularity.value("ndcg")]

    def headers(self) -> list[str]:
        """Return the table's column titles."""
        return ["Pipeline", "Kind", *(title.format(k=self.k) for title, _, _ in COLUMNS), "Notes"]

    def cells(self, row: Row) -> list[str]:
        """Return one row's formatted cells."""
        return [row.name, row.kind, *(row.text(key, digits) for _, key, digits in COLUMNS), row.note]

    def spread_line(self) -> str:
        """Return what a cell is: one seed's value, or the mean and spread over several."""
        seeds = ", ".join(str(s) for s in self.seeds)
        if len(self.seeds) < 2:
            return f"Seed {seeds}: one run, so no spread."
        return (f"Seeds {seeds}: each cell is the mean ± the sample standard deviation over the {len(self.seeds)} "
                "runs (timings: the mean).")

    def to_markdown(self) -> str:
        """Render the run as a Markdown document with one table."""
        lines = [f"# Offline evaluation: {self.dataset}", "",
                 f"Split: {self.split}; k = {self.k}; full-catalogue ranking, training items excluded; "
                 "relevance: any held-out interaction.", "", self.spread_line(),
                 f"Rows noted \"{TUNED_ON_TEST}\" chose their settings by NDCG@{self.k} on the held-out "
                 "interactions themselves: what that method reaches at best here, not a fair competitor.", ""]
        lines += [f"- {key}: {value}" for key, value in self.facts.items()]
        lines += ["", "| " + " | ".join(self.headers()) + " |", "|" + "---|" * len(self.headers())]
        lines += ["| " + " | ".join(self.cells(row)) + " |" for row in self.rows]
        lines += ["", *self.verdict()]
        return "\n".join(lines) + "\n"

    def verdict(self) -> list[str]:
        """Return the summary lines: the best template against EASE tuned on the test split, sasrec alone against
        its target (temporal split, NDCG@10), and the templates below popularity."""
        out = []
        template, ease, ratio = self.best("template"), self.row(EASE), self.ratio()
        if template and ease and ratio is not None:
            out.append(f"Best template **{template.name}** NDCG@{self.k} {template.text('ndcg', 4)} = "
                       f"**{ratio:.2f}x** EASE's {ease.text('ndcg', 4)}, EASE being {TUNED_ON_TEST}.")
        sasrec = self.row(SASREC)
        if sasrec and self.split == "temporal" and self.k == 10:
            met = "met" if sasrec.value("ndcg") >= SASREC_TARGET else "not met"
            out.append(f"sasrec alone NDCG@10 {sasrec.text('ndcg', 4)} against its target {SASREC_TARGET}: "
                       f"**{met}**.")
        below = self.below_popularity()
        out.append("Templates below popularity: " + (", ".join(below) if below else "none") + ".")
        return out
