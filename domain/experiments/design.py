"""An experiment's design as an admin sends it: validated with exact field paths and normalised to stored fields.

Input keys are the GraphQL input's (`trafficPercent`, `variants.0.config`), so `BadInput.field` is the path the
client sent, prefixed `input.`. A key that is absent, or null, takes its default; `name`, `variants` and
`primaryMetric` have none. Pure functions: nothing here reads a store.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

from domain.errors import BadInput
from domain.experiments.assignment import INTERLEAVED
from domain.learning.versions import ALIASES
from domain.experiments.metrics import METRICS
from domain.scenarios.config import merge_config, validate_config
from models.documents import Experiment

ALLOCATIONS = ("USER_HASH", "THOMPSON", "INTERLEAVE")
MAX_NAME = 200
MAX_VARIANT_NAME = 100
MAX_HYPOTHESIS = 4000
MAX_VARIANTS = 20
MAX_LAYER = 200
TUNING_N = 5000  # users a variant needs before the sequential test's boundary is tuned for it (locked at start)
PREFIX = "input"


def default_layer(scenario_id: str) -> str:
    """Return the layer of a scenario's experiments that name none: one per scenario."""
    return f"scenario:{scenario_id}"


def check_design(given: Mapping[str, Any], *, scenario_config: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a whole design and return the Experiment fields it sets (`layer` None: the scenario's default)."""
    name = _text(given.get("name"), "name", limit=MAX_NAME, required=True)
    variants = _variants(given.get("variants"), scenario_config)
    allocation = _choice(given.get("allocation"), ALLOCATIONS, "allocation", default="USER_HASH")
    if allocation == "INTERLEAVE" and len(variants) != 2:
        raise BadInput("INTERLEAVE compares exactly 2 variants", field=f"{PREFIX}.variants")
    primary = _choice(given.get("primaryMetric"), tuple(METRICS), "primaryMetric")
    percent, offset = _traffic(given)
    return {
        "name": name,
        "hypothesis": _text(given.get("hypothesis"), "hypothesis", limit=MAX_HYPOTHESIS) or None,
        "variants": variants,
        "traffic_percent": percent,
        "traffic_offset": offset,
        "layer": _text(given.get("layer"), "layer", limit=MAX_LAYER) or None,
        "allocation": allocation,
        "primary_metric": primary,
        "secondary_metrics": _secondary(given.get("secondaryMetrics"), primary),
        "guardrails": _guardrails(given.get("guardrails")),
        "alpha": _probability(given.get("alpha"), "alpha", default=0.05),
        "power": _probability(given.get("power"), "power", default=0.8),
        "minimum_detectable_effect": _positive(given.get("minimumDetectableEffect"), "minimumDetectableEffect"),
        "sequential": _flag(given.get("sequential"), "sequential"),
        "cuped": _flag(given.get("cuped"), "cuped"),
    }


def design_input(exp: Experiment) -> dict[str, Any]:
    """Return a stored experiment's design in input form, so an update can be merged over it and re-checked."""
    return {
        "name": exp.name, "hypothesis": exp.hypothesis,
        "variants": [{"name": v["name"], "weight": v["weight"], "config": v.get("config") or {},
                      "model": v.get("model")} for v in exp.variants],
        "trafficPercent": exp.traffic_percent, "trafficOffset": exp.traffic_offset,
        "layer": None if exp.layer == default_layer(exp.scenario_id) else exp.layer,
        "allocation": exp.allocation, "primaryMetric": exp.primary_metric,
        "secondaryMetrics": list(exp.secondary_metrics), "guardrails": [dict(g) for g in exp.guardrails],
        "alpha": exp.alpha, "power": exp.power, "minimumDetectableEffect": exp.minimum_detectable_effect,
        "sequential": exp.sequential, "cuped": exp.cuped,
    }


def check_variant_configs(variants: Sequence[Mapping[str, Any]], scenario_config: Mapping[str, Any], *,
                          prefix: str) -> None:
    """Raise BadInput when a variant's overrides no longer make a valid config over the scenario's current one."""
    for i, variant in enumerate(variants):
        validate_config(merge_config(scenario_config, variant.get("config") or {}), field_prefix=f"{prefix}.{i}.config")


def locked_method(exp: Experiment) -> dict[str, Any]:
    """Return what the statistics are computed with, fixed when the experiment starts."""
    return {
        "alpha": exp.alpha, "power": exp.power, "sequential": exp.sequential, "cuped": exp.cuped,
        "tuning_n": TUNING_N, "allocation": exp.allocation, "primary_metric": exp.primary_metric,
        "secondary_metrics": list(exp.secondary_metrics), "guardrails": [dict(g) for g in exp.guardrails],
    }


def normalised_weights(variants: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Return each variant's share of the summed weights (THOMPSON's starting arm weights)."""
    total = float(sum(v["weight"] for v in variants))
    return {v["name"]: float(v["weight"]) / total for v in variants}


def _path(name: str) -> str:
    return f"{PREFIX}.{name}"


def _variants(value: Any, scenario_config: Mapping[str, Any]) -> list[dict[str, Any]]:
    field = _path("variants")
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) < 2:
        raise BadInput("an experiment needs at least 2 variants (the first is the control)", field=field)
    if len(value) > MAX_VARIANTS:
        raise BadInput(f"an experiment has at most {MAX_VARIANTS} variants", field=field)
    variants, names = [], set()
    for i, raw in enumerate(value):
        variant = _variant(raw, i, scenario_config)
        if variant["name"] in names:
            raise BadInput(f"variant name {variant['name']!r} is used twice", field=f"{field}.{i}.name")
        names.add(variant["name"])
        variants.append(variant)
    if sum(v["weight"] for v in variants) <= 0:
        raise BadInput("variant weights must not all be 0", field=field)
    return variants


def _variant(raw: Any, i: int, scenario_config: Mapping[str, Any]) -> dict[str, Any]:
    field = _path(f"variants.{i}")
    if not isinstance(raw, Mapping):
        raise BadInput("a variant is an object {name, weight, config}", field=field)
    name = _text(raw.get("name"), f"variants.{i}.name", limit=MAX_VARIANT_NAME, required=True)
    if name == INTERLEAVED:
        raise BadInput(f"{INTERLEAVED!r} is reserved (what an INTERLEAVE list's variant reads)", field=f"{field}.name")
    weight = _number(raw.get("weight"), f"variants.{i}.weight", default=1.0)
    if weight < 0:
        raise BadInput("a variant's weight must not be negative", field=f"{field}.weight")
    overrides = raw.get("config")
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise BadInput("config must be a JSON object", field=f"{field}.config")
    validate_config(merge_config(scenario_config, overrides), field_prefix=f"{field}.config")
    variant = {"name": name, "weight": weight, "config": copy.deepcopy(dict(overrides))}
    if (pin := _pin(raw.get("model"), f"{field}.model")) is not None:
        variant["model"] = pin
    return variant


def _pin(value: Any, field: str) -> dict[str, Any] | None:
    """Return a variant's model pin, `{"version": n}` or `{"alias": name}` (exactly one), or None for no pin."""
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise BadInput("model is an object {version} or {alias}", field=field)
    version, alias = value.get("version"), value.get("alias")
    if (version is None) == (alias is None):
        raise BadInput("a model pin names exactly one of version or alias", field=field)
    if version is not None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise BadInput(f"must be a version number (1 or more), got {version!r}", field=f"{field}.version")
        return {"version": version}
    if alias not in ALIASES:
        raise BadInput(f"must be one of {', '.join(ALIASES)}, got {alias!r}", field=f"{field}.alias")
    return {"alias": alias}


def _traffic(given: Mapping[str, Any]) -> tuple[float, float]:
    percent = _number(given.get("trafficPercent"), "trafficPercent", default=100.0)
    if not 0 <= percent <= 100:
        raise BadInput("trafficPercent must be between 0 and 100", field=_path("trafficPercent"))
    offset = _number(given.get("trafficOffset"), "trafficOffset", default=0.0)
    if not 0 <= offset <= 100 or offset + percent > 100 + 1e-9:
        raise BadInput(f"trafficOffset + trafficPercent must be at most 100 (the layer's buckets), got {offset} + "
                       f"{percent}", field=_path("trafficOffset"))
    return percent, offset


def _secondary(value: Any, primary: str) -> list[str]:
    metrics: list[str] = []
    for i, raw in enumerate(_list(value, "secondaryMetrics")):
        metric = _choice(raw, tuple(METRICS), f"secondaryMetrics.{i}")
        if metric == primary or metric in metrics:
            raise BadInput(f"{metric} is named twice (primary and secondary metrics are distinct)",
                           field=_path(f"secondaryMetrics.{i}"))
        metrics.append(metric)
    return metrics


def _guardrails(value: Any) -> list[dict[str, Any]]:
    guardrails: list[dict[str, Any]] = []
    for i, raw in enumerate(_list(value, "guardrails")):
        if not isinstance(raw, Mapping):
            raise BadInput("a guardrail is an object {metric, margin}", field=_path(f"guardrails.{i}"))
        metric = _choice(raw.get("metric"), tuple(METRICS), f"guardrails.{i}.metric")
        if any(g["metric"] == metric for g in guardrails):
            raise BadInput(f"{metric} has a guardrail already", field=_path(f"guardrails.{i}.metric"))
        margin = _number(raw.get("margin"), f"guardrails.{i}.margin")
        if margin <= 0:
            raise BadInput("a guardrail's margin (relative: 0.05 = 5% worse) must be above 0",
                           field=_path(f"guardrails.{i}.margin"))
        guardrails.append({"metric": metric, "margin": margin})
    return guardrails


def _list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, Sequence) or isinstance(value, (str, bytes)):
        raise BadInput("must be a list", field=_path(name))
    return list(value)


def _text(value: Any, name: str, *, limit: int, required: bool = False) -> str:
    text = value.strip() if isinstance(value, str) else value
    if text is None or text == "":
        if required:
            raise BadInput(f"{name.rsplit('.', 1)[-1]} must be 1-{limit} characters", field=_path(name))
        return ""
    if not isinstance(text, str) or len(text) > limit:
        raise BadInput(f"{name.rsplit('.', 1)[-1]} must be 1-{limit} characters", field=_path(name))
    return text


def _choice(value: Any, allowed: tuple[str, ...], name: str, *, default: str | None = None) -> str:
    if value is None and default is not None:
        return default
    if value not in allowed:
        raise BadInput(f"must be one of {', '.join(allowed)}, got {value!r}", field=_path(name))
    return str(value)


def _number(value: Any, name: str, *, default: float | None = None) -> float:
    if value is None and default is not None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadInput("must be a finite number", field=_path(name))
    return float(value)


def _probability(value: Any, name: str, *, default: float) -> float:
    number = _number(value, name, default=default)
    if not 0 < number < 1:
        raise BadInput(f"{name} must be strictly between 0 and 1, got {number}", field=_path(name))
    return number


def _positive(value: Any, name: str) -> float | None:
    if value is None:
        return None
    number = _number(value, name)
    if number <= 0:
        raise BadInput(f"{name} must be above 0 (relative: 0.1 = a 10% lift)", field=_path(name))
    return number


def _flag(value: Any, name: str) -> bool:
    if value is None:
        return True
    if not isinstance(value, bool):
        raise BadInput("must be true or false", field=_path(name))
    return value
