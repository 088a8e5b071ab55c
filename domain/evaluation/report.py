"""The evaluation's result: one row per pipeline or baseline, and its Markdown rendering."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

COLUMNS = (("NDCG@{k}", "ndcg", 4), ("Recall@{k}", "recall", 4), ("MAP@{k}", "map", 4), ("Coverage", "coverage", 3),
           ("Diversity", "diversity", 3), ("Novelty", "novelty", 2), ("Train s", "train_s", 1),
           ("Score ms/user", "score_ms", 2))


@dataclass(frozen=True)
class Row:
    """One evaluated recommender: a scenario template's pipeline or a baseline."""

    name: str
    kind: str  # "template" or "baseline"
    metrics: dict[str, float]
    note: str = ""

    def value(self, key: str) -> float:
        return float(self.metrics.get(key, float("nan")))


@dataclass
class Report:
    """Every row of one run, with what the run was."""

    dataset: str
    split: str
    k: int
    facts: dict[str, Any] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    def best(self, kind: str) -> Row | None:
        """Return the row of a kind with the highest NDCG@k."""
        rows = [r for r in self.rows if r.kind == kind]
        return max(rows, key=lambda r: r.value("ndcg"), default=None)

    def ratio(self) -> float | None:
        """Return the best template's NDCG@k over the best baseline's."""
        template, baseline = self.best("template"), self.best("baseline")
        if template is None or baseline is None or baseline.value("ndcg") <= 0:
            return None
        return template.value("ndcg") / baseline.value("ndcg")

    def below_popularity(self) -> list[str]:
        """Return the templates whose NDCG@k is below the popularity baseline's."""
        popularity = next((r for r in self.rows if r.name == "popularity"), None)
        if popularity is None:
            return []
        return [r.name for r in self.rows if r.kind == "template" and r.value("ndcg") < popularity.value("ndcg")]

    def headers(self) -> list[str]:
        """Return the table's column titles."""
        return ["Pipeline", "Kind", *(title.format(k=self.k) for title, _, _ in COLUMNS), "Notes"]

    def cells(self, row: Row) -> list[str]:
        """Return one row's formatted cells."""
        values = [f"{row.value(key):.{digits}f}" for _, key, digits in COLUMNS]
        return [row.name, row.kind, *values, row.note]

    def to_markdown(self) -> str:
        """Render the run as a Markdown document with one table."""
        lines = [f"# Offline evaluation: {self.dataset}", "",
                 f"Split: {self.split}; k = {self.k}; full-catalogue ranking, training items excluded; "
                 "relevance: any held-out interaction.", ""]
        lines += [f"- {key}: {value}" for key, value in self.facts.items()]
        lines += ["", "| " + " | ".join(self.headers()) + " |", "|" + "---|" * len(self.headers())]
        lines += ["| " + " | ".join(self.cells(row)) + " |" for row in self.rows]
        lines += ["", *self.verdict()]
        return "\n".join(lines) + "\n"

    def verdict(self) -> list[str]:
        """Return the summary lines: best template vs best baseline, and templates below popularity."""
        template, baseline, ratio = self.best("template"), self.best("baseline"), self.ratio()
        out = []
        if template and baseline and ratio is not None:
            out.append(f"Best template **{template.name}** NDCG@{self.k} {template.value('ndcg'):.4f} = "
                       f"**{ratio:.2f}x** the best baseline ({baseline.name}, {baseline.value('ndcg'):.4f}).")
        below = self.below_popularity()
        out.append("Templates below popularity: " + (", ".join(below) if below else "none") + ".")
        return out
