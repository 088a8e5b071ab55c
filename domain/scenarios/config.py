"""Scenario config: its JSON Schema, validation with exact field paths, deep merge, and building from a template.

Semantics, decided once:
- `validate_config` returns a new plain dict with every schema default filled in (sections, stage params,
  interaction weights), so a stored config is complete and says exactly what the engines will do. Filling is
  idempotent: validating a validated config returns an equal dict.
- `merge_config` merges objects key by key; arrays and scalars in the overrides replace the base's; `null` in the
  overrides removes the key, which then takes its default on validation (every nullable setting defaults to null).
- Errors name the first problem in path order (array indices numerically), as `BadInput` with `field` set to
  `{field_prefix}.{dotted path}`: a missing or unknown property is named itself, e.g. `input.config.recall.0.source`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from domain.errors import BadInput
from domain.recommend.rules import RuleError, check_rule
from domain.scenarios.stages import (
    FALLBACK_SOURCES,
    FILTER_PARAMS,
    FILTERS,
    RANKER_PARAMS,
    RANKERS,
    RECALL_PARAMS,
    RECALL_SOURCES,
    RERANK_PARAMS,
    RERANKERS,
    params,
    prop,
)
from domain.scenarios.templates import TEMPLATES

Path = tuple[str | int, ...]
Problem = tuple[Path, str]

# Mirrors the GraphQL enum InteractionType.
INTERACTION_TYPES: tuple[str, ...] = (
    "VIEW", "CLICK", "LIKE", "SHARE", "COMMENT", "PURCHASE", "ADD_TO_CART", "RATING", "WATCH", "SKIP", "DISLIKE",
)
NEGATIVE_TYPES = frozenset({"SKIP", "DISLIKE"})
DEFAULT_WEIGHTS: dict[str, float] = {
    "VIEW": 1.0, "CLICK": 2.0, "LIKE": 4.0, "SHARE": 5.0, "COMMENT": 4.0, "PURCHASE": 8.0,
    "ADD_TO_CART": 4.0, "RATING": 3.0, "WATCH": 3.0, "SKIP": -1.0, "DISLIKE": -4.0,
}
_UNIQUE_STAGES = (("recall", "source"), ("filters", "name"), ("rerank", "name"))
_MAX_MESSAGE = 300
_FEATURE_NAME = prop("string", "A feature name.", pattern=r"^[A-Za-z][A-Za-z0-9_.]*$", maxLength=64)


def config_json_schema() -> dict[str, Any]:
    """Return the scenario config JSON Schema (draft 2020-12), a fresh copy the caller may change."""
    return copy.deepcopy(_schema())


def validate_config(config: Mapping, *, field_prefix: str = "input.config") -> dict[str, Any]:
    """Validate a scenario config and return a copy with defaults filled in; raise BadInput at the first error."""
    plain = _plain(config)
    if not isinstance(plain, dict):
        raise BadInput("config must be a JSON object", field=field_prefix)
    problem = _first(_schema_problems(plain)) or _first(_semantic_problems(plain))
    if problem is not None:
        raise _bad_input(problem, field_prefix)
    _fill_defaults(_schema(), plain)
    return plain


def merge_config(base: Mapping, overrides: Mapping) -> dict[str, Any]:
    """Deep-merge overrides over base into a new dict: objects merge, arrays replace, null removes the key. An object
    naming another stage (`{"ranker": {"name": "dcn"}}` over fusion) replaces the old one: its params are not the
    other stage's."""
    merged = _plain(base)
    for key, value in overrides.items():
        if value is None:
            merged.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(merged.get(key), dict) and not _renamed(merged[key], value):
            merged[key] = merge_config(merged[key], value)
        else:
            merged[key] = _plain(value)
    return merged


def _renamed(base: Mapping, override: Mapping) -> bool:
    return "name" in base and "name" in override and base["name"] != override["name"]


def build_config(
    template: str, overrides: Mapping | None = None, *, field_prefix: str = "input.config"
) -> dict[str, Any]:
    """Merge overrides over a template's config and return it validated, defaults filled in."""
    if template not in TEMPLATES:
        raise BadInput(f"unknown template {template!r}; expected one of: {', '.join(TEMPLATES)}",
                       field="input.template")
    if overrides is not None and not isinstance(overrides, Mapping):
        raise BadInput("config must be a JSON object", field=field_prefix)
    return validate_config(merge_config(TEMPLATES[template], overrides or {}), field_prefix=field_prefix)


# --- the schema ---------------------------------------------------------------------------------------------


@functools.cache
def _schema() -> dict[str, Any]:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "urn:recograph:scenario-config",
        "title": "Scenario config",
        "description": "How one scenario recommends: recall -> filters -> ranker -> rerank, with fallback, "
                       "signal weights and data policy. Only `recall` is required; the rest have defaults.",
        "type": "object",
        "additionalProperties": False,
        "required": ["recall"],
        "properties": {
            "features": _features(), "recall": _recall(), "filters": _filters(), "ranker": _ranker(),
            "rerank": _rerank(), "freshness": _freshness(), "popularity": _popularity(), "seen": _seen(),
            "fallback": _fallback(), "interactionWeights": _interaction_weights(), "retention": _retention(),
            "limits": _limits(), "models": _models(),
        },
    }


@functools.cache
def _validator() -> Draft202012Validator:
    return Draft202012Validator(_schema())


def _section(description: str, **properties: dict[str, Any]) -> dict[str, Any]:
    return {**params(**properties), "description": description, "default": {}}


def _stage(key: str, names: tuple[str, ...], params_by_name: Mapping[str, dict], description: str,
           **extra: dict[str, Any]) -> dict[str, Any]:
    properties = {
        key: prop("string", f"Stage name, one of: {', '.join(names)}.", enum=list(names)),
        **extra,
        "params": {"type": "object", "description": "Stage-specific settings; unknown ones are refused.",
                   "default": {}},
    }
    return {
        "type": "object", "description": description, "additionalProperties": False, "required": [key],
        "properties": properties,
        "allOf": [_params_branch(key, name, params_by_name.get(name, params())) for name in names],
    }


def _params_branch(key: str, name: str, params_schema: dict[str, Any]) -> dict[str, Any]:
    then: dict[str, Any] = {"properties": {"params": params_schema}}
    if "required" in params_schema:
        then["required"] = ["params"]
    return {"if": {"properties": {key: {"const": name}}, "required": [key]}, "then": then}


def _stage_list(entry: dict[str, Any], description: str) -> dict[str, Any]:
    return {"type": "array", "description": description, "items": entry, "default": []}


def _features() -> dict[str, Any]:
    def names(what: str) -> dict[str, Any]:
        return {"type": "array", "description": f"{what} feature names.", "items": _FEATURE_NAME,
                "uniqueItems": True, "default": []}

    return _section("Features the learned rankers and profiles use.", item=names("Item (attributes.*)"),
                    user=names("User profile"), context=names("Request context"))


def _recall() -> dict[str, Any]:
    entry = _stage(
        "source", RECALL_SOURCES, RECALL_PARAMS, "One candidate source, run in parallel with the others.",
        weight=prop("number", "The source's weight in fusion.", default=1.0, exclusiveMinimum=0, maximum=100),
        limit=prop("integer", "Most candidates this source returns.", default=200, minimum=1, maximum=2000),
    )
    return {"type": "array", "description": "Candidate sources; each source at most once.", "minItems": 1,
            "items": entry}


def _filters() -> dict[str, Any]:
    entry = _stage("name", FILTERS, FILTER_PARAMS, "One filter; `seen` is configured by the `seen` section.")
    return _stage_list(entry, "Filters applied to the candidates, in order; each at most once.")


def _ranker() -> dict[str, Any]:
    ranker = _stage("name", RANKERS, RANKER_PARAMS, "The ranker; `fusion` sums the sources' weighted scores, `dcn` "
                    "ranks by a DCN-v2 trained on the scenario's data (fusion where it does not beat it).")
    return {**ranker, "default": {"name": "fusion"}}


def _rerank() -> dict[str, Any]:
    entry = _stage("name", RERANKERS, RERANK_PARAMS, "One reranker.")
    return _stage_list(entry, "Rerankers applied to the ranked list, in order; each at most once.")


def _freshness() -> dict[str, Any]:
    return _section("Item freshness (from publishedAt, against the scenario's newest event).", halfLifeHours=prop(
        "number", "Half-life of the freshness score.", default=48.0, exclusiveMinimum=0, maximum=8760))


def _popularity() -> dict[str, Any]:
    return _section(
        "Popularity signals, in event time measured from the scenario's newest event.",
        halfLifeHours=prop("number", "Half-life of popularity decay.", default=72.0, exclusiveMinimum=0,
                           maximum=8760),
        trendingWindowHours=prop("number", "Sliding window of trending.", default=24.0, exclusiveMinimum=0,
                                 maximum=720),
    )


def _seen() -> dict[str, Any]:
    types = {"type": "array", "description": "Interaction types that make an item seen.", "minItems": 1,
             "uniqueItems": True, "items": {"enum": list(INTERACTION_TYPES)}, "default": list(INTERACTION_TYPES)}
    return _section(
        "Seen-items policy, applied by the `seen` filter.",
        exclude=prop("boolean", "Remove seen items (a request's excludeSeen=false turns it off for that call).",
                     default=True),
        windowHours=prop(["number", "null"], "Only interactions this recent count; null: any age.", default=None,
                         exclusiveMinimum=0, maximum=87600),
        types=types,
        excludeServedHours=prop("number", "Also exclude items served to the user within this many hours "
                                "(a feed without repeats); 0: off.", default=0, minimum=0, maximum=720),
    )


def _fallback() -> dict[str, Any]:
    sources = {"type": "array", "description": "Sources that fill the list, in order (they need no history).",
               "minItems": 1, "uniqueItems": True, "items": {"enum": list(FALLBACK_SOURCES)},
               "default": ["popular"]}
    return _section(
        "Fill from non-personal sources when personal ones return too little (a new user).",
        sources=sources,
        minItems=prop("integer", "Fill when fewer candidates than this remain after filtering.", default=10,
                      minimum=0, maximum=200),
    )


def _interaction_weights() -> dict[str, Any]:
    def weight(kind: str) -> dict[str, Any]:
        low = -100 if kind in NEGATIVE_TYPES else 0
        return prop("number", f"Weight of one {kind} in profiles and implicit feedback.",
                    default=DEFAULT_WEIGHTS[kind], minimum=low, maximum=100)

    return _section("Signal strength per InteractionType; only SKIP and DISLIKE may be negative.",
                    **{kind: weight(kind) for kind in INTERACTION_TYPES})


def _retention() -> dict[str, Any]:
    return _section("Data retention.", interactionsDays=prop(
        ["integer", "null"],
        "Interactions this many days older than the scenario's newest are deleted by the daily CLEANUP job; "
        "null: kept forever.",
        default=None,
        minimum=1, maximum=3650))


def _limits() -> dict[str, Any]:
    return _section(
        "Serving budgets.",
        recallTimeoutMs=prop("integer", "Time budget per recall source; a late source is dropped from the answer.",
                             default=50, minimum=1, maximum=10000),
        maxCandidates=prop("integer", "Most fused candidates passed to ranking.", default=1000, minimum=10,
                           maximum=20000),
    )


def _models() -> dict[str, Any]:
    return _section(
        "The scenario's model versions (the model registry).",
        promotionMargin=prop(
            "number", "How much higher a newly trained version's validation NDCG@10 must be than the champion's "
            "(absolute: 0.005 = half a point) for it to become champion; otherwise it is kept as the challenger. "
            "Without comparable figures a new version always becomes champion.",
            default=0.0, minimum=0, maximum=1),
        tune=prop(
            "boolean", "Fit the recall weights and each source's key settings (EASE lambda, ALS factors and "
            "regularisation, neighbours) on a time-ordered validation slice of this scenario's data at every training, "
            "starting from the values here; serving then uses the fitted weights. false: train and serve the values "
            "as written (an experiment variant that tests weights sets this).", default=True),
        validation=prop(
            "string", "The slice the fit is scored on: temporal (each user's newest items: what recommending the "
            "next ones needs) or random (items drawn from each history: for data whose order means little).",
            default="temporal", enum=["temporal", "random"]),
        tuningBudgetSeconds=prop(
            "number", "Most seconds the fit may take per training (SASRec's own training not counted); what was "
            "found by then is kept.", default=90.0, minimum=1, maximum=3600),
    )


# --- validation ---------------------------------------------------------------------------------------------


def _schema_problems(config: dict[str, Any]) -> Iterator[Problem]:
    for error in _validator().iter_errors(config):
        yield from _describe(error)


def _describe(error: ValidationError) -> Iterator[Problem]:
    path = tuple(error.absolute_path)
    if error.validator == "required":
        for name in error.validator_value:
            if name not in error.instance:
                yield (*path, name), f"required property {name!r} is missing"
    elif error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        for name in error.instance:
            if name not in allowed:
                yield (*path, name), f"unknown property {name!r}; expected one of: {', '.join(allowed)}"
    elif error.validator == "type":
        expected = error.validator_value
        wanted = " or ".join(expected) if isinstance(expected, list) else expected
        yield path, f"expected {wanted}, got {_json_type(error.instance)}"
    else:
        yield path, _shorten(error.message)


def _semantic_problems(config: dict[str, Any]) -> Iterator[Problem]:
    yield from _rule_problems(config)
    for section, key in _UNIQUE_STAGES:
        yield from _duplicates(config.get(section, []), (section,), key)
    for index, stage in enumerate(config.get("rerank", [])):
        if stage["name"] == "pins":
            pins = stage.get("params", {}).get("pins", [])
            yield from _duplicates(pins, ("rerank", index, "params", "pins"), "position")
            yield from _duplicates(pins, ("rerank", index, "params", "pins"), "itemId")


def _rule_problems(config: dict[str, Any]) -> Iterator[Problem]:
    """Report business rules that do not parse, at the exact expression."""
    for index, entry in enumerate(config.get("filters", [])):
        if entry.get("name") != "rules":
            continue
        for j, text in enumerate((entry.get("params") or {}).get("expressions", [])):
            try:
                check_rule(text)
            except RuleError as exc:
                yield ("filters", index, "params", "expressions", j), str(exc)


def _duplicates(entries: list[dict[str, Any]], path: Path, key: str) -> Iterator[Problem]:
    first_at: dict[Any, int] = {}
    for index, entry in enumerate(entries):
        value = entry[key]
        if value in first_at:
            yield (*path, index, key), f"duplicate {key} {value!r} (first at {_dotted((*path, first_at[value]))})"
        else:
            first_at[value] = index


def _first(problems: Iterable[Problem]) -> Problem | None:
    return min(problems, key=_problem_order, default=None)


def _problem_order(problem: Problem) -> tuple[Any, ...]:
    path, message = problem
    return tuple((0, p, "") if isinstance(p, int) else (1, 0, p) for p in path), message


def _bad_input(problem: Problem, field_prefix: str) -> BadInput:
    path, message = problem
    if not path:
        return BadInput(message, field=field_prefix)
    dotted = _dotted(path)
    return BadInput(f"{dotted}: {message}", field=f"{field_prefix}.{dotted}")


def _dotted(path: Path) -> str:
    return ".".join(str(p) for p in path)


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _validator().is_type(value, name):
            return name
    return type(value).__name__


def _shorten(message: str) -> str:
    return message if len(message) <= _MAX_MESSAGE else message[: _MAX_MESSAGE - 3] + "..."


# --- defaults and copies ------------------------------------------------------------------------------------


def _fill_defaults(schema: Mapping[str, Any], value: Any) -> None:
    if isinstance(value, dict):
        for name, sub in schema.get("properties", {}).items():
            if name not in value and "default" in sub:
                value[name] = copy.deepcopy(sub["default"])
            if name in value:
                _fill_defaults(sub, value[name])
        for branch in schema.get("allOf", ()):
            if "if" in branch and Draft202012Validator(branch["if"]).is_valid(value):
                _fill_defaults(branch["then"], value)
    elif isinstance(value, list) and "items" in schema:
        for item in value:
            _fill_defaults(schema["items"], item)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    return value
