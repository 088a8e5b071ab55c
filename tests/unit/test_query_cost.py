"""The static cost estimate on documents: weights, `first` multipliers, fragments, variables, `_entities`."""

from __future__ import annotations

import pytest
from graphql import parse

from graph.cost import CostLimits, Estimate, QueryTooCostly, estimate_cost
from graph.schema import schema

SDL = schema._schema


def cost(query: str, variables: dict | None = None, **options) -> int:
    return estimate_cost(SDL, parse(query), variables, **options).cost


def test_scalars_cost_nothing_and_objects_cost_one():
    assert cost('{ item(id: "i") { id title categories } }') == 1
    assert cost('{ profile(userId: "u") { interactionCount recent { item { id } } } }') == 3


def test_a_list_multiplies_its_selection_by_first():
    q = 'query { items(scenarioId: "s", first: 50) { edges { node { id } } } }'
    assert cost(q) == 1 + 50 * 2


def test_first_defaults_to_the_schema_default():
    assert cost('{ items(scenarioId: "s") { edges { node { id } } } }') == 1 + 20 * 2
    assert cost('{ recommendations(scenarioId: "s", userId: "u") { items { item { id } } } }') == 10 + 20 * 2


def test_first_from_a_variable_and_from_a_variable_default():
    q = 'query($n: Int) { items(scenarioId: "s", first: $n) { edges { node { id } } } }'
    assert cost(q, {"n": 7}) == 1 + 7 * 2
    assert cost(q, {}) == 1 + 20 * 2  # an absent variable: the argument's default
    assert cost(q, {"n": 150.0}) == 1 + 150 * 2  # graphql-core takes an integral float for an Int
    q = 'query($n: Int = 3) { items(scenarioId: "s", first: $n) { edges { node { id } } } }'
    assert cost(q) == 1 + 3 * 2
    assert cost(q, {"n": 9}) == 1 + 9 * 2


def test_first_above_the_maximum_counts_as_the_maximum():
    # A larger `first` is refused by the resolver before any work, so it never costs more than the maximum.
    q = 'query($n: Int) { items(scenarioId: "s", first: $n) { edges { node { id } } } }'
    assert cost(q, {"n": 10_000}) == cost(q, {"n": 200}) == 1 + 200 * 2
    assert cost(q, {"n": -5}) == 1


def test_work_fields_carry_their_weight():
    assert cost('{ similarItems(scenarioId: "s", itemId: "i", first: 10) { requestId } }') == 5
    assert cost('{ metrics(scenarioId: "s") { clicks } }') == 5
    assert cost('{ scenarios { totalCount } }') == 1 + 20 * 2


def test_nested_lists_multiply():
    q = """{ items(scenarioId: "s", first: 200) { edges { node {
              similar(first: 200) { items { item { similar(first: 200) { items { item { id } } } } } } } } } }"""
    inner = 5 + 200 * 2
    middle = 5 + 200 * (2 + inner)
    assert cost(q) == 1 + 200 * (2 + middle)
    assert cost(q) > 16_000_000


def test_fragments_and_inline_fragments_are_followed():
    direct = '{ items(scenarioId: "s", first: 10) { edges { node { similar(first: 5) { items { item { id } } } } } } }'
    spread = """{ items(scenarioId: "s", first: 10) { edges { node { ...Sim } } } }
                fragment Sim on Item { similar(first: 5) { items { item { id } } } }"""
    inline = '{ items(scenarioId: "s", first: 10) { edges { node { ... on Item { similar(first: 5) { items { item { id } } } } } } } }'
    assert cost(direct) == cost(spread) == cost(inline) == 1 + 10 * (2 + 5 + 5 * 2)


def test_fragments_nested_in_fragments_count_each_use():
    q = """{ items(scenarioId: "s", first: 2) { edges { node { ...A ...A } } } }
           fragment A on Item { ...B ...B }
           fragment B on Item { similar(first: 1) { items { item { id } } } }"""
    assert cost(q) == 1 + 2 * (2 + 4 * (5 + 2))


def test_entities_multiply_by_the_representations():
    q = """query($r: [_Any!]!) { _entities(representations: $r) {
             ... on User { recommendations(scenarioId: "s", first: 20) { items { item { id } } } } ... on Item { id } } }"""
    one = 10 + 20 * 2
    assert estimate_cost(SDL, parse(q), {"r": [{"__typename": "User", "id": "u"}] * 7}) == Estimate(1 + 7 * one, 7)
    literal = '{ _entities(representations: [{__typename: "User", id: "a"}, {__typename: "User", id: "b"}]) { __typename } }'
    assert estimate_cost(SDL, parse(literal)) == Estimate(1, 2)
    aliased = """query($r: [_Any!]!) { a: _entities(representations: $r) { __typename }
                                       b: _entities(representations: $r) { __typename } }"""
    assert estimate_cost(SDL, parse(aliased), {"r": [{}] * 60}) == Estimate(2, 120)  # the cap counts them all


def test_the_costliest_possible_type_counts_on_a_union():
    q = """query($r: [_Any!]!) { _entities(representations: $r) {
             ... on Item { similar(first: 3) { items { item { id } } } } ... on User { profile { interactionCount } } } }"""
    assert cost(q, {"r": [{}]}) == 1 + (5 + 3 * 2)


def test_introspection_costs_nothing():
    q = "{ __schema { types { name fields { name type { name ofType { name } } } } } __type(name: \"Item\") { name } }"
    assert cost(q) == 0


def test_the_named_operation_is_the_one_costed():
    q = """query Cheap { item(id: "i") { id } }
           query Dear { items(scenarioId: "s", first: 100) { edges { node { id } } } }"""
    assert cost(q, operation_name="Cheap") == 1
    assert cost(q, operation_name="Dear") == 1 + 100 * 2


def test_limits_refuse_by_scope_with_cost_and_limit():
    limits = CostLimits(per_scope={"public": 100, "admin": 1000, "gateway": 5000}, max_representations=10)
    limits.check(Estimate(100, 0), "public")
    limits.check(Estimate(1000, 0), "admin")
    with pytest.raises(QueryTooCostly) as refused:
        limits.check(Estimate(101, 0), None)  # no key: the public limit
    assert refused.value.extensions == {"code": "QUERY_TOO_COSTLY", "cost": 101, "limit": 100}
    with pytest.raises(QueryTooCostly):
        limits.check(Estimate(1001, 0), "admin")


def test_representations_over_the_cap_are_refused_whatever_the_cost():
    limits = CostLimits(max_representations=10)
    limits.check(Estimate(1, 10), "gateway")
    with pytest.raises(QueryTooCostly) as refused:
        limits.check(Estimate(1, 11), "gateway")
    assert refused.value.extensions == {"code": "QUERY_TOO_COSTLY", "field": "representations", "cost": 11,
                                        "limit": 10}
