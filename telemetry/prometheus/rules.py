"""Read the committed rule file, and the catalogue of metrics the gateway exposes.

Tests and tools read the *committed* ``mlgate-rules.yml`` (what a Prometheus would load), not the generator's
output, so that what they check is what ships; ``tests/test_prometheus_rules.py`` checks that the two agree.
The catalogue lists every ``mlgate_*`` name a query may use, as it appears on ``/metrics``, so rule and
dashboard checks can catch a misspelt metric without starting a gateway.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
RULES_FILE = HERE / "mlgate-rules.yml"
"""The generated rule file Prometheus loads (``rule_files``)."""
TESTS_DIR = HERE / "tests"
"""``promtool test rules`` unit tests of ``RULES_FILE``."""

_COUNTERS = (
    "mlgate_requests_total",
    "mlgate_batcher_rejections_total",
    "mlgate_fallbacks_total",
    "mlgate_shadow_requests_total",
    "mlgate_shadow_compared_rows_total",
    "mlgate_shadow_agreeing_rows_total",
    "mlgate_shadow_abs_diff_total",
    "mlgate_shadow_seconds_total",
    "mlgate_shadow_champion_seconds_total",
    "mlgate_rollout_transitions_total",
)
_HISTOGRAMS = (
    "mlgate_request_duration_seconds",
    "mlgate_batch_rows",
    "mlgate_batch_execution_seconds",
    "mlgate_queue_wait_seconds",
)
_GAUGES = (
    "mlgate_queued_rows",
    "mlgate_admission_limit_rows",
    "mlgate_latency_model_fixed_seconds",
    "mlgate_latency_model_per_row_seconds",
    "mlgate_model_device_info",
    "mlgate_model_state",
    "mlgate_build_info",
    "mlgate_routing_weight_ratio",
    "mlgate_routing_champion",
    "mlgate_routing_shadow_ratio",
    "mlgate_routing_revision",
    "mlgate_drift_feature_psi",
    "mlgate_drift_max_psi",
    "mlgate_drift_features_over_threshold",
    "mlgate_drift_prediction_divergence",
    "mlgate_drift_agreement_ratio",
    "mlgate_drift_window_rows",
    "mlgate_rollout_state",
    "mlgate_rollout_challenger_percent",
    "mlgate_rollout_step",
)

CATALOGUE: frozenset[str] = frozenset(
    (*_COUNTERS, *_GAUGES, *(f"{h}{suffix}" for h in _HISTOGRAMS for suffix in ("_bucket", "_sum", "_count"))))
"""Every series name the gateway exposes on ``/metrics`` (histograms as their ``_bucket``/``_sum``/``_count``)."""

SUMMED_DRIFT = re.compile(r"\b(sum|avg)\b(\s*(by|without)\s*\([^()]*\))?\s*\((\s*\w+\()?\s*mlgate_drift_")
"""``sum`` or ``avg`` (with or without by/without) over a drift gauge, directly or through one function. Every
gateway instance exports the same merged drift value, so queries must aggregate drift gauges with ``max``:
a sum multiplies them by the number of instances."""


def load_groups(path: Path = RULES_FILE) -> list[dict[str, Any]]:
    """The rule groups of a rule file, as Prometheus reads them."""
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    groups: list[dict[str, Any]] = document["groups"]
    return groups


def recording_rules(path: Path = RULES_FILE) -> list[tuple[str, str]]:
    """(record name, PromQL expr) of every recording rule, in file order."""
    return [(rule["record"], rule["expr"]) for group in load_groups(path) for rule in group["rules"]
            if "record" in rule]


def alerting_rules(path: Path = RULES_FILE) -> list[tuple[str, str]]:
    """(alert name, PromQL expr) of every alerting rule, in file order."""
    return [(rule["alert"], rule["expr"]) for group in load_groups(path) for rule in group["rules"]
            if "alert" in rule]
