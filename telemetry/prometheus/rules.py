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

from telemetry.catalogue import documented

HERE = Path(__file__).resolve().parent
RULES_FILE = HERE / "mlgate-rules.yml"
"""The generated rule file Prometheus loads (``rule_files``)."""
TESTS_DIR = HERE / "tests"
"""``promtool test rules`` unit tests of ``RULES_FILE``."""

CATALOGUE: frozenset[str] = frozenset(
    name
    for doc in documented()
    for name in ((doc.name,) if doc.type != "histogram" else (f"{doc.name}{part}" for part in ("_bucket", "_sum",
                                                                                              "_count"))))
"""Every series name the gateway exposes on ``/metrics`` (histograms as their ``_bucket``/``_sum``/``_count``),
from the metric objects themselves (``telemetry.catalogue``)."""

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
