"""What `Experiment.results` answers: exposures, the split's health, each metric's effect, and the sums behind them.

Plain frozen dataclasses (the GraphQL types convert them with `from_domain`); `to_doc` / `from_doc` keep them in
the experiment's document (a stopped experiment's results are frozen there).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class Exposure:
    variant: str
    users: int


@dataclass(frozen=True, slots=True)
class SampleRatio:
    """The sample-ratio-mismatch check: a chi-square test of exposures against the planned weights."""

    p_value: float | None
    mismatch: bool
    expected: tuple[float, ...] = ()  # the planned share of each variant, in variant order


@dataclass(frozen=True, slots=True)
class MetricResult:
    """One metric of one treatment variant against the control (the control's own row has no difference)."""

    metric: str
    variant: str
    role: str  # PRIMARY SECONDARY GUARDRAIL
    users: int
    value: float | None
    control_value: float | None
    difference: float | None = None
    difference_lower: float | None = None
    difference_upper: float | None = None
    relative_difference: float | None = None
    relative_lower: float | None = None
    relative_upper: float | None = None
    p_value: float | None = None
    adjusted_p_value: float | None = None
    significant: bool | None = None
    method: str = ""
    cuped: bool = False
    variance_reduction: float | None = None


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """A one-sided non-inferiority test: the treatment is no worse than the control by more than `margin`
    (relative)."""

    metric: str
    variant: str
    margin: float
    p_value: float | None
    passed: bool | None  # None: not enough data to tell
    method: str = ""


@dataclass(frozen=True, slots=True)
class ArmPosterior:
    """THOMPSON: one arm's posterior on the primary metric, and its current share of new users."""

    variant: str
    mean: float | None
    lower: float | None
    upper: float | None
    probability_best: float | None
    weight: float


@dataclass(frozen=True, slots=True)
class Preference:
    """INTERLEAVE: users whose clicks favoured each variant, and the sign test over them."""

    control_wins: int
    treatment_wins: int
    ties: int
    share: float | None  # treatment wins / (wins of either)
    lower: float | None
    upper: float | None
    p_value: float | None
    method: str = ""


@dataclass(frozen=True, slots=True)
class VariantStatistics:
    """One variant's sufficient statistics, so anyone can recompute every figure."""

    variant: str
    n: int
    sums: dict[str, float]
    products: dict[str, float]  # "a*b" -> sum over users of a * b


@dataclass(frozen=True, slots=True)
class ExperimentResults:
    computed_at: datetime
    exposures: list[Exposure]
    srm: SampleRatio | None  # None under THOMPSON (weights move on purpose) and INTERLEAVE (one group)
    metrics: list[MetricResult]
    guardrails: list[GuardrailResult] = field(default_factory=list)
    arms: list[ArmPosterior] = field(default_factory=list)
    preference: Preference | None = None
    statistics: list[VariantStatistics] = field(default_factory=list)
    frozen: bool = False  # computed at stop and kept

    def to_doc(self) -> dict[str, Any]:
        """Return the results as a plain dict for MongoDB."""
        return asdict(self)

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> ExperimentResults:
        """Return results kept by `to_doc`."""
        srm = doc.get("srm")
        pref = doc.get("preference")
        return cls(
            computed_at=doc["computed_at"],
            exposures=[Exposure(**e) for e in doc.get("exposures", [])],
            srm=SampleRatio(**{**srm, "expected": tuple(srm.get("expected", ()))}) if srm else None,
            metrics=[MetricResult(**m) for m in doc.get("metrics", [])],
            guardrails=[GuardrailResult(**g) for g in doc.get("guardrails", [])],
            arms=[ArmPosterior(**a) for a in doc.get("arms", [])],
            preference=Preference(**pref) if pref else None,
            statistics=[VariantStatistics(**s) for s in doc.get("statistics", [])],
            frozen=bool(doc.get("frozen", False)),
        )
