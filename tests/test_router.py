"""Routing policy validation and the per-request router: split accuracy, stickiness, minimal movement.

Pure Python: no Ray, no servers. Every random draw is seeded, so the statistical
tests are deterministic; their stated false-failure rates are what they would be
for an unlucky seed.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any

import pytest
from pydantic import ValidationError
from scipy.stats import chisquare

from routing.policy import FallbackPolicy, HeaderRule, RoutingPolicy, StickyPolicy, variant_of
from routing.router import Route, Router, key_hash

N = 20_000
WEIGHTS = {"1": 70, "2": 20, "3": 10}
KEYS = [f"user-{i}" for i in range(N)]


def policy(**kwargs: Any) -> RoutingPolicy:
    kwargs.setdefault("champion", "1")
    return RoutingPolicy(**kwargs)


def keyed(router: Router) -> list[str]:
    return [router.choose(key).version for key in KEYS]


def assert_matches_weights(counts: Counter[str], weights: dict[str, int]) -> None:
    total = sum(weights.values())
    observed = [counts[v] for v in weights]
    expected = [sum(observed) * w / total for w in weights.values()]
    assert sum(observed) == N
    result = chisquare(observed, expected)
    assert result.pvalue > 0.001, (counts, result)


def assert_binomial(successes: int, n: int, p: float) -> None:
    """Within 4 standard errors (false-failure rate ~6e-5 for a fair seed)."""
    se = math.sqrt(p * (1 - p) / n)
    assert abs(successes / n - p) <= 4 * se, (successes / n, p, se)


# --- split accuracy -------------------------------------------------------------------------------------------------


def test_random_split_matches_weights() -> None:
    """Pearson's chi-square goodness-of-fit test of 20,000 unkeyed choices against weights 70/20/10.

    Under a correct split, p < 0.001 happens 1 time in 1,000; the rng is seeded, so the result is fixed.
    """
    router = Router(policy(weights=WEIGHTS), rng=random.Random(20261101))
    counts = Counter(router.choose(None).version for _ in range(N))
    assert_matches_weights(counts, WEIGHTS)
    assert {router.choose("").rule for _ in range(10)} == {"random"}  # an empty key is no key


def test_sticky_split_matches_weights() -> None:
    """Pearson's chi-square goodness-of-fit test of 20,000 distinct keys against weights 70/20/10.

    Rendezvous hashing gives each version its weight's share in expectation; for a fixed
    set of keys a false failure (p < 0.001) has probability 1/1,000 over hash functions,
    and the keys and hash are fixed, so the result is deterministic.
    """
    counts = Counter(keyed(Router(policy(weights=WEIGHTS))))
    assert_matches_weights(counts, WEIGHTS)


def test_uneven_weights_including_zero_split_correctly() -> None:
    """Chi-square as above, with a zero weight (never chosen) and a non-percentage total."""
    weights = {"1": 5, "2": 0, "3": 3, "10": 1}
    router = Router(policy(weights=weights), rng=random.Random(7))
    for counts in (Counter(router.choose(None).version for _ in range(N)), Counter(keyed(router))):
        assert counts["2"] == 0
        assert_matches_weights(counts, {v: w for v, w in weights.items() if w})


def test_empty_weights_send_everything_to_the_champion() -> None:
    p = policy(champion="2")
    assert p.effective_weights == {"2": 1}
    assert RoutingPolicy.initial("2") == p
    router = Router(p)
    assert {router.choose(None) for _ in range(100)} == {Route("2", "champion", "random")}
    assert {router.choose(key) for key in KEYS[:100]} == {Route("2", "champion", "sticky")}


def test_routes_say_variant_and_rule() -> None:
    router = Router(policy(weights={"1": 1, "2": 1}), rng=random.Random(3))
    routes = {router.choose(None) for _ in range(100)} | {router.choose(key) for key in KEYS[:100]}
    assert routes == {
        Route("1", "champion", "random"),
        Route("2", "challenger", "random"),
        Route("1", "champion", "sticky"),
        Route("2", "challenger", "sticky"),
    }


# --- stickiness -----------------------------------------------------------------------------------------------------


def test_same_key_same_version_across_calls_and_instances() -> None:
    p = policy(weights=WEIGHTS)
    first = keyed(Router(p, rng=random.Random(1)))
    assert keyed(Router(p, rng=random.Random(2))) == first
    # An equal policy written in another order gives the same answers.
    reordered = RoutingPolicy.model_validate({"champion": "1", "weights": dict(reversed(list(WEIGHTS.items())))})
    assert reordered == p
    assert keyed(Router(reordered)) == first
    router = Router(p)
    for key, version in zip(KEYS[:200], first[:200], strict=True):
        assert {router.choose(key).version for _ in range(5)} == {version}


def test_hash_is_pinned_across_processes_and_releases() -> None:
    """Golden values: a change here would move users between versions on upgrade, so it must be deliberate."""
    assert key_hash("user-1") == 1532125634754921626
    router = Router(policy(weights=WEIGHTS))
    assert [router.choose(f"user-{i}").version for i in range(12)] == ["1"] * 10 + ["3", "1"]


# --- minimal movement -----------------------------------------------------------------------------------------------


def moved(before: dict[str, int], after: dict[str, int]) -> list[tuple[str, str]]:
    old = keyed(Router(policy(weights=before)))
    new = keyed(Router(policy(weights=after)))
    return [(a, b) for a, b in zip(old, new, strict=True) if a != b]


def test_raising_a_weight_moves_keys_only_into_that_version() -> None:
    """Raising 3 from 10 to 30: its share goes 10/100 -> 30/120, so 15% of keys move, all into 3.

    The moved fraction is binomial around 0.15; 4 standard errors (n=20,000) fail a correct
    router about 6 times in 100,000.
    """
    changes = moved(WEIGHTS, {**WEIGHTS, "3": 30})
    assert changes and all(new == "3" for _, new in changes)
    assert_binomial(len(changes), N, 30 / 120 - 10 / 100)


def test_lowering_a_weight_moves_keys_only_out_of_that_version() -> None:
    changes = moved({**WEIGHTS, "3": 30}, WEIGHTS)
    assert changes and all(old == "3" and new != "3" for old, new in changes)
    assert_binomial(len(changes), N, 30 / 120 - 10 / 100)


def test_adding_a_version_moves_keys_only_into_it() -> None:
    changes = moved(WEIGHTS, {**WEIGHTS, "4": 25})
    assert changes and all(new == "4" for _, new in changes)
    assert_binomial(len(changes), N, 25 / 125)


def test_removing_a_version_moves_only_its_keys() -> None:
    changes = moved(WEIGHTS, {"1": 70, "2": 20})
    assert changes and all(old == "3" for old, _ in changes)
    assert_binomial(len(changes), N, 10 / 100)


# --- header rules ---------------------------------------------------------------------------------------------------


def headers(values: dict[str, str]) -> Any:
    calls: list[str] = []

    def lookup(name: str) -> str | None:
        calls.append(name)
        return values.get(name)

    lookup.calls = calls  # type: ignore[attr-defined]
    return lookup


RULES = [
    HeaderRule(header="X-Canary", value="yes", version="2"),
    HeaderRule(header="x-team", value="ml", version="3"),
    HeaderRule(header="x-canary", value="all", version="3"),
]


def test_header_rule_wins_over_key_and_weights() -> None:
    router = Router(policy(weights={"1": 100}, header_rules=RULES))
    for key in (None, *KEYS[:50]):
        assert router.choose(key, headers({"x-canary": "yes"})) == Route("2", "challenger", "header")
    assert router.choose("k", headers({"x-canary": "all"})) == Route("3", "challenger", "header")


def test_non_matching_header_falls_through() -> None:
    router = Router(policy(weights={"1": 100}, header_rules=RULES))
    for values in ({}, {"x-canary": "YES"}, {"x-canary": "no", "x-team": "ops"}):
        assert router.choose("k", headers(values)) == Route("1", "champion", "sticky")
    assert router.choose(None, None) == Route("1", "champion", "random")


def test_first_matching_rule_wins() -> None:
    router = Router(policy(weights={"1": 100}, header_rules=RULES))
    # Rules 1 (x-team=ml) and 2 (x-canary=all) both match: rule 1 comes first,
    # although rule 0 made x-canary the first header seen.
    assert router.choose(None, headers({"x-canary": "all", "x-team": "ml"})).version == "3"
    assert router.choose(None, headers({"x-canary": "yes", "x-team": "ml"})).version == "2"
    first = [HeaderRule(header="x-a", value="1", version="2"), HeaderRule(header="x-a", value="1", version="3")]
    assert Router(policy(header_rules=first)).choose(None, headers({"x-a": "1"})).version == "2"


def test_header_function_called_once_per_header_and_not_without_rules() -> None:
    lookup = headers({"x-canary": "yes"})
    Router(policy(weights=WEIGHTS)).choose("k", lookup)
    assert lookup.calls == []
    Router(policy(header_rules=RULES)).choose("k", lookup)
    assert sorted(lookup.calls) == ["x-canary", "x-team"]


# --- shadows --------------------------------------------------------------------------------------------------------


def test_shadow_sampling_follows_percent() -> None:
    router = Router(policy(shadows={"2": 10, "3": 100, "4": 2.5}), rng=random.Random(11))
    draws = [router.shadows() for _ in range(N)]
    counts = Counter(v for d in draws for v in d)
    assert counts["3"] == N  # 100% always
    assert_binomial(counts["2"], N, 0.10)
    assert_binomial(counts["4"], N, 0.025)
    assert all(d == tuple(v for v in ("2", "3", "4") if v in d) for d in draws)  # configured order


def test_no_shadows_is_empty() -> None:
    assert Router(policy(weights=WEIGHTS)).shadows() == ()


# --- policy validation ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"weights": {"1": 90, "2": -1}}, "weights.2: weight must be from 0 to 1,000,000, got -1"),
        ({"weights": {"1": 10**400}}, "weights.1: weight must be from 0 to 1,000,000"),  # overflowed Router's floats
        ({"weights": {"1": 0, "2": 0}}, "weights: at least one weight must be positive"),
        ({"weights": {"": 1}}, "weights: a version must be non-empty"),
        ({"shadows": {"3": 0}}, "shadows.3: percent must be in (0, 100]"),
        ({"shadows": {"3": 100.5}}, "shadows.3: percent must be in (0, 100]"),
        ({"shadows": {"3": float("nan")}}, "shadows.3: percent must be in (0, 100]"),
        ({"shadows": {"": 5}}, "shadows: a version must be non-empty"),
        ({"shadows": {"1": 5}}, "shadows.1: version '1' is the champion"),
        ({"champion": ""}, "champion"),
        ({"header_rules": [{"header": "x-a", "value": "b", "version": ""}]}, "header_rules.0.version"),
        ({"header_rules": [{"header": "bad header", "value": "b", "version": "2"}]}, "'bad header' is not a valid"),
        ({"sticky": {"header": "x:key"}}, "'x:key' is not a valid HTTP header name"),
        ({"fallback": {"challenger_timeout_ms": 0}}, "fallback.challenger_timeout_ms"),
        ({"fallback": {"default_response": {"": [0]}}}, "default_response: output names must be non-empty"),
        ({"colour": "blue"}, "colour"),
        ({"sticky": {"header": "x-k", "extra": 1}}, "sticky.extra"),
    ],
)
def test_structural_errors_are_validation_errors(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError) as info:
        RoutingPolicy.model_validate({"champion": "1", **fields})
    assert message in str(info.value)


def test_valid_policy_round_trips_and_normalises_headers() -> None:
    p = RoutingPolicy.model_validate(
        {
            "champion": "1",
            "weights": {"1": 90, "2": 10, "3": 0},
            "sticky": {"header": "X-User-ID"},
            "header_rules": [{"header": "X-Canary", "value": "Yes", "version": "2"}],
            "shadows": {"3": 100, "4": 0.5},
            "fallback": {"challenger_timeout_ms": 50, "default_response": {"label": [0], "proba": [0.5, 0.5]}},
        }
    )
    assert p.sticky.header == "x-user-id"
    assert p.header_rules[0] == HeaderRule(header="x-canary", value="Yes", version="2")
    assert RoutingPolicy.model_validate_json(p.model_dump_json()) == p
    assert StickyPolicy().header == "x-routing-key"
    assert FallbackPolicy() == FallbackPolicy(enabled=True, challenger_timeout_ms=None, default_response=None)
    with pytest.raises(ValidationError):
        p.champion = "2"  # type: ignore[misc]


def test_every_schema_field_is_described() -> None:
    schema = RoutingPolicy.model_json_schema()
    models = [schema, *schema.get("$defs", {}).values()]
    for model in models:
        for name, field in model["properties"].items():
            assert field.get("description"), (model.get("title"), name)


VERSIONS = {"10": True, "2": True, "1": True, "3": False}


def test_problems_name_missing_and_unready_versions() -> None:
    p = policy(
        weights={"1": 80, "7": 10, "3": 10},
        header_rules=[
            HeaderRule(header="x-a", value="1", version="2"),
            HeaderRule(header="x-a", value="2", version="3"),
        ],
        shadows={"9": 50},
    )
    assert p.problems(VERSIONS) == [
        "weights.7: version '7' does not exist; versions: 1, 2, 3, 10",
        "weights.3: version '3' is not ready",
        "header_rules[1].version: version '3' is not ready",
        "shadows.9: version '9' does not exist; versions: 1, 2, 3, 10",
    ]
    assert policy(shadows={"3": 10}).problems(VERSIONS) == ["shadows.3: version '3' is not ready"]
    assert RoutingPolicy.initial("5").problems(VERSIONS) == [
        "champion: version '5' does not exist; versions: 1, 2, 3, 10"
    ]
    assert RoutingPolicy.initial("3").problems(VERSIONS) == ["champion: version '3' is not ready"]
    assert RoutingPolicy.initial("1").problems({}) == ["champion: version '1' does not exist; versions: (none)"]
    assert policy(weights={"1": 50, "10": 50}, shadows={"2": 1}).problems(VERSIONS) == []


def test_variant_of() -> None:
    p = policy(weights={"1": 90, "2": 10}, shadows={"3": 5})
    assert [variant_of(p, v) for v in ("1", "2", "3", "4")] == ["champion", "challenger", "shadow", "challenger"]
    mirrored_challenger = policy(weights={"1": 90, "2": 10}, shadows={"2": 100})
    assert variant_of(mirrored_challenger, "2") == "challenger"  # it answers live traffic, and is compared too
