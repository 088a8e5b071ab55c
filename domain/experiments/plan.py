"""How many users an experiment needs to detect a relative lift with the asked power (`experimentPlan`).

Proportions (binary metrics and rates, no standard deviation given) use statsmodels
`samplesize_proportions_2indep_onetail`: the normal approximation of the two-proportion test on the difference, with
the pooled proportion's variance under the null and each arm's own under the alternative (Fleiss, Levin, Paik 2003,
ch. 4, without continuity correction). We pick it over `NormalIndPower` with Cohen's arcsine effect size because
it plans for the test the results run on (a test of p_t - p_c, not of arcsine-transformed proportions). With
`alternative="two-sided"` it halves alpha and ignores the far tail, which holds at any useful power.
Everything else uses the per-user standard deviation: `tt_ind_solve_power` with Cohen's d = mde * baseline / sd
(Welch's test has the same power at equal group sizes and large n).
With more than two variants each treatment is compared with the control at alpha / (variants - 1) (Bonferroni), so
the family-wise error over the comparisons stays at alpha.
"""

from __future__ import annotations

import math

import numpy as np

from domain.errors import BadInput
from domain.experiments.metrics import MetricSpec
from domain.experiments.stats import is_rate


def _check(*, alpha: float, power: float, mde: float, variants: int) -> None:
    """Raise BadInput for a design parameter out of range."""
    if not 0 < alpha < 1:
        raise BadInput("alpha must be between 0 and 1", field="alpha")
    if not 0 < power < 1:
        raise BadInput("power must be between 0 and 1", field="power")
    if not mde > 0 or not math.isfinite(mde):
        raise BadInput("minimumDetectableEffect must be a positive relative lift", field="minimumDetectableEffect")
    if variants < 2:
        raise BadInput("an experiment needs at least 2 variants", field="variants")


def _proportions(spec: MetricSpec, baseline: float, mde: float, alpha: float, power: float) -> float:
    """Return users per variant for a two-sided test of two proportions."""
    # statsmodels takes 1-2 s to import: loaded when first used, so serving processes and the CLI start without it
    from statsmodels.stats.proportion import samplesize_proportions_2indep_onetail
    diff = baseline * mde if spec.higher_is_better else -baseline * mde
    if not 0 < baseline + diff < 1:
        raise BadInput("the lifted rate must stay between 0 and 1", field="minimumDetectableEffect")
    return samplesize_proportions_2indep_onetail(diff=diff, prop2=baseline, power=power, ratio=1, alpha=alpha,
                                                 alternative="two-sided")


def plan(spec: MetricSpec, *, baseline: float, baseline_sd: float | None, mde: float, alpha: float, power: float,
         variants: int) -> tuple[int, int]:
    """Return (users per variant, total users) to detect a relative lift `mde` of `baseline` at `power`."""
    from statsmodels.stats.power import tt_ind_solve_power  # 1-2 s to import: loaded when first used
    _check(alpha=alpha, power=power, mde=mde, variants=variants)
    rate = is_rate(spec)
    if rate and not 0 < baseline < 1:
        raise BadInput("a rate's baseline must be between 0 and 1", field="baseline")
    if baseline_sd is None and not rate:
        raise BadInput(f"{spec.name} is a mean per user: give baselineStdDev", field="baselineStdDev")
    if baseline_sd is not None and not (baseline_sd > 0 and math.isfinite(baseline_sd)):
        raise BadInput("baselineStdDev must be positive", field="baselineStdDev")
    if not baseline or not math.isfinite(baseline):
        raise BadInput("baseline must be non-zero (the effect is relative to it)", field="baseline")
    per_comparison = alpha / (variants - 1)
    if baseline_sd is None:
        n = _proportions(spec, baseline, mde, per_comparison, power)
    else:
        effect = mde * abs(baseline) / baseline_sd
        n = tt_ind_solve_power(effect_size=effect, alpha=per_comparison, power=power, ratio=1.0,
                               alternative="two-sided")
    n = float(np.asarray(n))
    if not math.isfinite(n) or n <= 0:
        raise BadInput("no sample size reaches that power", field="minimumDetectableEffect")
    per_variant = max(2, math.ceil(round(n, 6)))  # round first: 64.0000000001 is 64 users, not 65
    return per_variant, per_variant * variants
