"""Scenario config: templates, the JSON Schema, validation paths, merge and build semantics."""

from __future__ import annotations

import copy

import pytest
from jsonschema import Draft202012Validator

from domain.errors import BadInput
from domain.scenarios import stages
from domain.scenarios.config import build_config, config_json_schema, merge_config, validate_config
from domain.scenarios.templates import TEMPLATES


def _recall(*sources: str) -> list[dict]:
    return [{"source": source} for source in sources]


def _error(config: dict, **kwargs: str) -> BadInput:
    with pytest.raises(BadInput) as caught:
        validate_config(config, **kwargs)
    return caught.value


# --- templates and schema ------------------------------------------------------------------------------------


def test_template_names_are_the_graphql_enum() -> None:
    assert list(TEMPLATES) == ["VLOG", "NEWS", "ECOMMERCE", "MUSIC", "CUSTOM"]


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_each_template_is_valid_and_complete(name: str) -> None:
    template = TEMPLATES[name]
    assert validate_config(template) == template  # nothing left for defaults to fill
    Draft202012Validator(config_json_schema()).validate(template)  # the published schema agrees


@pytest.mark.parametrize("name", list(TEMPLATES))
def test_build_config_without_overrides_returns_a_copy_of_the_template(name: str) -> None:
    built = build_config(name, None)
    assert built == TEMPLATES[name]
    built["recall"][0]["weight"] = 99.0
    assert TEMPLATES[name]["recall"][0]["weight"] != 99.0


def test_templates_make_the_choices_their_kind_needs() -> None:
    vlog, news, shop, music = (TEMPLATES[n] for n in ("VLOG", "NEWS", "ECOMMERCE", "MUSIC"))
    assert vlog["interactionWeights"]["WATCH"] >= 5 and vlog["interactionWeights"]["SKIP"] < 0
    assert {"name": "mmr", "params": {"lambda": 0.85, "by": "category"}} in vlog["rerank"]
    assert news["freshness"]["halfLifeHours"] <= 12 and news["popularity"]["trendingWindowHours"] <= 6
    assert {"region", "language"} <= set(news["features"]["context"])
    assert {"name": "rules", "params": {"expressions": ["publishedAt within 72h"]}} in news["filters"]
    assert {"availability"} <= {f["name"] for f in shop["filters"]}
    assert {"item_cf", "ease", "als"} <= {r["source"] for r in shop["recall"]}
    assert {"category_cap", "pins"} <= {r["name"] for r in shop["rerank"]}
    assert shop["interactionWeights"]["PURCHASE"] > shop["interactionWeights"]["ADD_TO_CART"] > 1
    assert music["seen"]["exclude"] is False or music["seen"]["windowHours"] <= 24
    assert {"artist", "genre"} <= set(music["features"]["item"])
    assert [r["source"] for r in TEMPLATES["CUSTOM"]["recall"]] == ["popular", "item_cf", "fresh"]


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = config_json_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert list(schema["properties"]) == [
        "features", "recall", "filters", "ranker", "rerank", "freshness", "popularity", "seen", "fallback",
        "interactionWeights", "retention", "limits", "models",
    ]


def test_schema_enums_are_the_canonical_stage_names() -> None:
    props = config_json_schema()["properties"]
    assert props["recall"]["items"]["properties"]["source"]["enum"] == list(stages.RECALL_SOURCES)
    assert props["filters"]["items"]["properties"]["name"]["enum"] == list(stages.FILTERS)
    assert props["ranker"]["properties"]["name"]["enum"] == ["fusion", "dcn"]
    assert props["rerank"]["items"]["properties"]["name"]["enum"] == list(stages.RERANKERS)
    assert "two_tower" in stages.RECALL_SOURCES and "sequence" not in stages.RECALL_SOURCES


def test_stage_params_only_describe_known_stages() -> None:
    assert set(stages.RECALL_PARAMS) <= stages.RECALL_SET
    assert set(stages.FILTER_PARAMS) <= stages.FILTER_SET
    assert set(stages.RERANK_PARAMS) <= stages.RERANKER_SET
    assert set(stages.FALLBACK_SOURCES) <= stages.RECALL_SET


def test_config_json_schema_returns_a_fresh_copy() -> None:
    config_json_schema()["properties"].clear()
    assert "recall" in config_json_schema()["properties"]


# --- validation paths ------------------------------------------------------------------------------------------


def test_wrong_weight_at_index_2_names_exactly_that_field() -> None:
    config = {"recall": [{"source": "popular"}, {"source": "fresh"}, {"source": "als", "weight": -1}]}
    error = _error(config)
    assert error.field == "input.config.recall.2.weight"
    assert error.message == "recall.2.weight: -1 is less than or equal to the minimum of 0"
    assert error.code == "BAD_USER_INPUT"


def test_weight_above_100_and_limit_out_of_range_are_refused() -> None:
    assert _error({"recall": [{"source": "popular", "weight": 101}]}).field == "input.config.recall.0.weight"
    assert _error({"recall": [{"source": "popular", "limit": 2001}]}).field == "input.config.recall.0.limit"
    assert _error({"recall": [{"source": "popular", "limit": 0}]}).field == "input.config.recall.0.limit"


def test_unknown_recall_source_names_its_source_field() -> None:
    error = _error({"recall": _recall("popular", "item_cf", "gru4rec")})
    assert error.field == "input.config.recall.2.source"
    assert "'gru4rec' is not one of" in error.message


def test_unknown_top_level_key_is_named() -> None:
    error = _error({"recall": _recall("popular"), "reranks": []})
    assert error.field == "input.config.reranks"
    assert error.message.startswith("reranks: unknown property 'reranks'; expected one of: features, recall")


def test_unknown_param_is_named() -> None:
    error = _error({"recall": [{"source": "ease", "params": {"lamda": 100}}]})
    assert error.field == "input.config.recall.0.params.lamda"


def test_param_of_another_stage_is_refused() -> None:
    error = _error({"recall": [{"source": "popular", "params": {"neighbors": 10}}]})
    assert error.field == "input.config.recall.0.params.neighbors"


def test_missing_required_fields_name_the_missing_property() -> None:
    assert _error({"recall": [{"source": "popular"}, {"weight": 2}]}).field == "input.config.recall.1.source"
    assert _error({}).field == "input.config.recall"
    rules = {"recall": _recall("popular"), "filters": [{"name": "rules"}]}
    assert _error(rules).field == "input.config.filters.0.params"
    pin = {"recall": _recall("popular"), "rerank": [{"name": "pins", "params": {"pins": [{"itemId": "a"}]}}]}
    assert _error(pin).field == "input.config.rerank.0.params.pins.0.position"


def test_empty_recall_and_blank_rule_are_refused() -> None:
    assert _error({"recall": []}).field == "input.config.recall"
    blank = {"recall": _recall("popular"), "filters": [{"name": "rules", "params": {"expressions": ["  "]}}]}
    assert _error(blank).field == "input.config.filters.0.params.expressions.0"


def test_duplicate_recall_source_is_reported_at_the_repeat() -> None:
    error = _error({"recall": _recall("popular", "item_cf", "fresh", "item_cf")})
    assert error.field == "input.config.recall.3.source"
    assert error.message == "recall.3.source: duplicate source 'item_cf' (first at recall.1)"


def test_duplicate_filter_reranker_and_pin_position_are_reported() -> None:
    base = {"recall": _recall("popular")}
    filters = {**base, "filters": [{"name": "seen"}, {"name": "seen"}]}
    assert _error(filters).field == "input.config.filters.1.name"
    rerank = {**base, "rerank": [{"name": "mmr"}, {"name": "dedupe"}, {"name": "mmr"}]}
    assert _error(rerank).field == "input.config.rerank.2.name"
    pins = [{"itemId": "a", "position": 1}, {"itemId": "b", "position": 1}]
    assert _error({**base, "rerank": [{"name": "pins", "params": {"pins": pins}}]}).field == (
        "input.config.rerank.0.params.pins.1.position"
    )


def test_fallback_only_accepts_sources_that_need_no_history() -> None:
    error = _error({"recall": _recall("popular"), "fallback": {"sources": ["trending", "item_cf"]}})
    assert error.field == "input.config.fallback.sources.1"
    assert _error({"recall": _recall("popular"), "fallback": {"sources": ["popular", "popular"]}}).field == (
        "input.config.fallback.sources"
    )


def test_only_skip_and_dislike_may_weigh_negative() -> None:
    ok = validate_config({"recall": _recall("popular"), "interactionWeights": {"SKIP": -3, "DISLIKE": -8}})
    assert ok["interactionWeights"]["SKIP"] == -3 and ok["interactionWeights"]["VIEW"] == 1.0
    error = _error({"recall": _recall("popular"), "interactionWeights": {"VIEW": -1}})
    assert error.field == "input.config.interactionWeights.VIEW"
    assert _error({"recall": _recall("popular"), "interactionWeights": {"BUY": 1}}).field == (
        "input.config.interactionWeights.BUY"
    )


def test_seen_types_must_be_interaction_types() -> None:
    error = _error({"recall": _recall("popular"), "seen": {"types": ["VIEW", "watch"]}})
    assert error.field == "input.config.seen.types.1"


def test_first_error_is_the_earliest_path_with_numeric_indices() -> None:
    recall = [{"source": "popular"} for _ in range(11)]
    recall[10]["limit"] = -5
    recall[2]["weight"] = 0
    error = _error({"recall": recall, "zzz": 1, "features": {"item": [3]}})
    assert error.field == "input.config.features.item.0"
    assert _error({"recall": recall}).field == "input.config.recall.2.weight"  # 2 before 10, not string order


def test_wrong_type_messages_are_short() -> None:
    error = _error({"recall": "x" * 5000})
    assert error.message == "recall: expected array, got string"
    assert _error({"recall": [{"source": "popular", "limit": True}]}).message == (
        "recall.0.limit: expected integer, got boolean"
    )


def test_non_object_config_and_custom_prefix() -> None:
    assert _error([1, 2]).field == "input.config"  # type: ignore[arg-type]
    error = _error({"recall": [{"source": "popular", "weight": 0}]}, field_prefix="variants.1.overrides")
    assert error.field == "variants.1.overrides.recall.0.weight"


# --- defaults ------------------------------------------------------------------------------------------------


def test_defaults_are_filled_and_validation_is_idempotent() -> None:
    config = {"recall": [{"source": "item_cf", "weight": 2}], "filters": [{"name": "blocklist"}]}
    before = copy.deepcopy(config)
    result = validate_config(config)
    assert config == before
    assert result["recall"] == [
        {"source": "item_cf", "weight": 2, "limit": 200,
         "params": {"neighbors": 50, "seedItems": 20, "historyHalfLife": None, "historyItems": None}}
    ]
    assert result["filters"] == [{"name": "blocklist", "params": {"itemIds": [], "categories": []}}]
    assert result["ranker"] == {"name": "fusion", "params": {"method": "weighted", "normalize": "minmax", "rrfK": 60.0}}
    assert result["seen"]["windowHours"] is None and result["seen"]["exclude"] is True
    assert result["fallback"] == {"sources": ["popular"], "minItems": 10}
    assert result["retention"] == {"interactionsDays": None}
    assert validate_config(result) == result


# --- merge and build ---------------------------------------------------------------------------------------


def test_merge_overrides_nested_keys_and_keeps_the_rest() -> None:
    base = {"seen": {"exclude": True, "windowHours": 24}, "freshness": {"halfLifeHours": 6}}
    merged = merge_config(base, {"seen": {"windowHours": 48}})
    assert merged == {"seen": {"exclude": True, "windowHours": 48}, "freshness": {"halfLifeHours": 6}}


def test_merge_replaces_lists_and_removes_keys_set_to_null() -> None:
    base = {"recall": _recall("popular", "fresh"), "retention": {"interactionsDays": 30}, "limits": {"x": 1}}
    overrides = {"recall": _recall("als"), "retention": {"interactionsDays": None}, "limits": None, "new": None}
    merged = merge_config(base, overrides)
    assert merged == {"recall": [{"source": "als"}], "retention": {}}


def test_merge_does_not_mutate_or_alias_its_inputs() -> None:
    base = {"recall": _recall("popular"), "seen": {"types": ["VIEW"]}}
    overrides = {"seen": {"exclude": False}, "features": {"item": ["price"]}}
    base_before, overrides_before = copy.deepcopy(base), copy.deepcopy(overrides)
    merged = merge_config(base, overrides)
    merged["seen"]["types"].append("CLICK")
    merged["features"]["item"].append("brand")
    merged["recall"][0]["source"] = "fresh"
    assert base == base_before and overrides == overrides_before


def test_build_config_merges_overrides_over_the_template() -> None:
    built = build_config("NEWS", {"freshness": {"halfLifeHours": 3}, "rerank": [{"name": "dedupe"}]})
    assert built["freshness"] == {"halfLifeHours": 3}
    assert built["rerank"] == [{"name": "dedupe", "params": {"by": "id"}}]
    assert built["recall"] == TEMPLATES["NEWS"]["recall"]
    assert TEMPLATES["NEWS"]["freshness"] == {"halfLifeHours": 6.0}


def test_build_config_null_override_restores_the_default() -> None:
    built = build_config("ECOMMERCE", {"retention": {"interactionsDays": None}, "popularity": None})
    assert built["retention"] == {"interactionsDays": None}
    assert built["popularity"] == {"halfLifeHours": 72.0, "trendingWindowHours": 24.0}


def test_build_config_reports_override_errors_at_the_merged_path() -> None:
    with pytest.raises(BadInput) as caught:
        build_config("VLOG", {"seen": {"windowHours": -5}})
    assert caught.value.field == "input.config.seen.windowHours"
    recall = copy.deepcopy(TEMPLATES["VLOG"]["recall"])
    recall[4]["weight"] = 500
    with pytest.raises(BadInput) as caught:
        build_config("VLOG", {"recall": recall})
    assert caught.value.field == "input.config.recall.4.weight"


def test_build_config_refuses_unknown_template_and_non_object_overrides() -> None:
    with pytest.raises(BadInput) as caught:
        build_config("PODCAST", None)
    assert caught.value.field == "input.template"
    with pytest.raises(BadInput) as caught:
        build_config("CUSTOM", ["recall"])  # type: ignore[arg-type]
    assert caught.value.field == "input.config"


def test_a_rule_that_does_not_parse_is_refused_at_its_path():
    from domain.errors import BadInput
    from domain.scenarios.config import build_config

    bad = {"filters": [{"name": "seen"}, {"name": "rules", "params": {"expressions": ["publishedAt within 72h", "price >> 3"]}}]}
    with pytest.raises(BadInput) as caught:
        build_config("CUSTOM", bad)
    assert caught.value.field == "input.config.filters.1.params.expressions.1"
