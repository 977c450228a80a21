"""mlgate's Prometheus rules: valid, generated, unit-tested with promtool, and every alert tested both ways.

The rule file is what pages people, so a typo in it is an outage nobody hears about. ``promtool check``
catches syntax; the ``promtool test rules`` files in ``telemetry/prometheus/tests`` feed synthetic series
through the rules and assert which alerts fire with which labels and annotations; the checks here make sure
those tests exist for every alert, firing and quiet, and for every window pair of the burn-rate alerts.

promtool comes with Debian's ``prometheus`` package. Without it these tests fail rather than skip: a
skipped test would let an untested rule file through.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.utils import floatToGoString

from telemetry import metrics
from telemetry.prometheus import slo_rules
from telemetry.prometheus.rules import (
    CATALOGUE,
    HERE,
    RULES_FILE,
    SUMMED_DRIFT,
    TESTS_DIR,
    alerting_rules,
    load_groups,
    recording_rules,
)

ROOT = Path(__file__).resolve().parent.parent
INSTALL_PROMTOOL = ("promtool not found on PATH: install the Debian package 'prometheus' "
                    "(apt-get install prometheus), which provides /usr/bin/promtool")
TEST_FILES = sorted(TESTS_DIR.glob("*.yml"))
SLO_ALERTS = {
    "MlgateAvailabilityBudgetFastBurn": slo_rules.PAGE_WINDOWS,
    "MlgateAvailabilityBudgetSlowBurn": slo_rules.TICKET_WINDOWS,
    "MlgateLatencyBudgetFastBurn": slo_rules.PAGE_WINDOWS,
    "MlgateLatencyBudgetSlowBurn": slo_rules.TICKET_WINDOWS,
}


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(INSTALL_PROMTOOL)
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)


def output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


# --------------------------------------------------------------------------------------------- promtool

def test_rules_file_passes_promtool_check() -> None:
    result = promtool("check", "rules", str(RULES_FILE))
    assert result.returncode == 0, output(result)


def test_example_prometheus_config_passes_promtool_check() -> None:
    """The example config loads the rule file by a relative path; promtool checks both."""
    result = promtool("check", "config", str(HERE / "prometheus.yml"))
    assert result.returncode == 0, output(result)


@pytest.fixture(scope="module")
def unit_test_results() -> dict[Path, subprocess.CompletedProcess[str]]:
    """Every promtool unit-test file, run in parallel: the 3-day windows make each take seconds."""
    assert TEST_FILES, f"no promtool tests in {TESTS_DIR}"
    promtool("--version")  # fails with the install hint before starting threads
    with ThreadPoolExecutor(max_workers=len(TEST_FILES)) as pool:
        results = pool.map(lambda path: promtool("test", "rules", str(path)), TEST_FILES)
        return dict(zip(TEST_FILES, results, strict=True))


@pytest.mark.parametrize("path", TEST_FILES, ids=[p.name for p in TEST_FILES])
def test_promtool_unit_tests_pass(path: Path, unit_test_results: dict[Path, subprocess.CompletedProcess[str]]) -> None:
    result = unit_test_results[path]
    assert result.returncode == 0, output(result)


def test_unit_tests_load_the_committed_rules() -> None:
    """A unit test of some other rule file would prove nothing about the one Prometheus loads."""
    for path in TEST_FILES:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert document["rule_files"] == ["../mlgate-rules.yml"], path.name
        order = document.get("group_eval_order")
        if order is not None:
            assert order == [group["name"] for group in load_groups()], path.name


# --------------------------------------------------------------------------------------------- coverage

def _alert_tests() -> Iterator[tuple[str, str, list[dict[str, Any]]]]:
    """(test file, alertname, exp_alerts) of every alert_rule_test."""
    for path in TEST_FILES:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
        for group in document.get("tests", []):
            for case in group.get("alert_rule_test", []) or []:
                yield path.name, case["alertname"], case.get("exp_alerts") or []


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = {name for name, _ in alerting_rules()}
    cases = list(_alert_tests())
    firing = {name for _, name, expected in cases if expected}
    quiet = {name for _, name, expected in cases if not expected}
    assert alerts - firing == set(), "alerts no promtool test expects to fire"
    assert alerts - quiet == set(), "alerts no promtool test expects to stay quiet (exp_alerts empty)"
    assert (firing | quiet) - alerts == set(), "promtool tests name alerts the rule file does not define"


def test_every_burn_rate_window_pair_fires_in_a_test() -> None:
    """Each alert ORs two window pairs and labels each with its long window; each pair must be seen firing."""
    fired: dict[str, set[str]] = {name: set() for name in SLO_ALERTS}
    for _, name, expected in _alert_tests():
        if name in fired:
            fired[name] |= {alert["exp_labels"]["window"] for alert in expected}
    for name, windows in SLO_ALERTS.items():
        assert fired[name] == {pair.long for pair in windows}, name


def test_alerts_have_severity_and_templated_annotations() -> None:
    for group in load_groups():
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
            assert set(rule["annotations"]) == {"summary", "description"}, rule["alert"]
            assert "{{ $labels.model }}" in rule["annotations"]["summary"], rule["alert"]
            if group["name"] == "mlgate-slo-alerts":
                assert rule["labels"]["slo"] in ("availability", "latency"), rule["alert"]
                assert "$value" in rule["annotations"]["summary"], rule["alert"]


# --------------------------------------------------------------------------------------------- names

_NAME = re.compile(r"\bmlgate[_:][A-Za-z0-9_:]*")


def test_rules_use_only_catalogue_metrics_and_recorded_series() -> None:
    recorded = {name for name, _ in recording_rules()}
    exprs = [expr for _, expr in recording_rules()] + [expr for _, expr in alerting_rules()]
    unknown = {name for expr in exprs for name in _NAME.findall(expr)} - CATALOGUE - recorded
    assert unknown == set()


def test_recording_rules_follow_level_metric_operations_and_cover_every_window() -> None:
    names = [name for name, _ in recording_rules()]
    assert len(names) == len(set(names)), "duplicate recording rules"
    for name in names:
        assert re.fullmatch(r"mlgate:[a-z0-9_]+:[a-z0-9_]+", name), name
    for window in slo_rules.SLI_WINDOWS:
        assert f"mlgate:slo_availability_errors:ratio_rate{window}" in names
        assert f"mlgate:slo_latency_slow:ratio_rate{window}" in names


def test_drift_gauges_are_never_summed() -> None:
    """Every instance exports the same merged drift value: a sum would count it once per instance."""
    for _, expr in recording_rules() + alerting_rules():
        assert not SUMMED_DRIFT.search(expr), expr


# --------------------------------------------------------------------------------------------- generator

def test_committed_rules_are_the_generators_default_output() -> None:
    assert RULES_FILE.read_text(encoding="utf-8") == slo_rules.render(slo_rules.Slo()), (
        "telemetry/prometheus/mlgate-rules.yml is stale: run "
        "python -m telemetry.prometheus.slo_rules --out telemetry/prometheus/mlgate-rules.yml")


def test_cli_writes_the_default_rules(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rules.yml"
    assert slo_rules.main(["--out", str(out)]) == 0
    assert out.read_text(encoding="utf-8") == RULES_FILE.read_text(encoding="utf-8")
    assert slo_rules.main([]) == 0
    assert capsys.readouterr().out == RULES_FILE.read_text(encoding="utf-8")


def test_other_objectives_generate_valid_rules(tmp_path: Path) -> None:
    out = tmp_path / "rules.yml"
    assert slo_rules.main(["--availability", "0.9995", "--latency-threshold", "0.25",
                           "--latency-objective", "0.95", "--out", str(out)]) == 0
    text = out.read_text(encoding="utf-8")
    assert 'le="0.25"' in text and "(1 - 0.9995) > 14.4" in text and "(1 - 0.95) > 6" in text
    assert "--availability 0.9995 --latency-threshold 0.25 --latency-objective 0.95" in text
    result = promtool("check", "rules", str(out))
    assert result.returncode == 0, output(result)


@pytest.mark.parametrize("threshold", [0.03, 0.2, 0.0, -0.05, 20.0, math.nan])
def test_refuses_a_latency_threshold_that_is_not_a_bucket_bound(threshold: float) -> None:
    with pytest.raises(ValueError, match="not a bucket bound of mlgate_request_duration_seconds"):
        slo_rules.Slo(latency_threshold_seconds=threshold)


@pytest.mark.parametrize("field", ["availability", "latency_objective"])
@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 1.5, 99.9, math.nan])
def test_refuses_an_objective_outside_zero_one(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field} must be strictly between 0 and 1"):
        slo_rules.Slo(**{field: value})


def test_cli_reports_a_bad_threshold(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        slo_rules.main(["--latency-threshold", "0.03"])
    assert exit_info.value.code == 2
    assert "not a bucket bound" in capsys.readouterr().err


def test_threshold_bounds_are_the_request_histograms_own() -> None:
    """The generator validates thresholds against ``metrics.REQUEST_BUCKETS`` (imported, not copied): the bounds
    that mlgate_request_duration_seconds really exposes, so an SLI's ``le`` always names an existing bucket."""
    assert metrics.REQUEST_DURATION._upper_bounds == [*metrics.REQUEST_BUCKETS, math.inf]


@pytest.mark.parametrize("bound", metrics.REQUEST_BUCKETS)
def test_every_bucket_bound_is_a_valid_threshold_written_as_the_client_writes_le(bound: float) -> None:
    """The SLI selects le="..." by string: it must be exactly what prometheus_client exposes (1.0, not 1)."""
    slo = slo_rules.Slo(latency_threshold_seconds=bound)
    assert slo.le == floatToGoString(bound)  # type: ignore[no-untyped-call]
    assert f'le="{slo.le}"' in slo_rules.render(slo)


def test_drift_threshold_is_the_one_the_gateway_uses() -> None:
    from telemetry.drift import PSI_ACT

    assert slo_rules.PSI_ACT == PSI_ACT
