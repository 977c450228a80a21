"""Generate mlgate's Prometheus rules (recording rules, SLO burn-rate alerts, model alerts) from its SLOs.

Why a generator rather than a hand-written file: three numbers (the availability objective, the latency
threshold and the latency objective) decide fourteen SLI recording rules and eight burn-rate thresholds.
Written by hand, changing an objective means editing a dozen expressions consistently; generated, it means
one flag, and ``tests/test_prometheus_rules.py`` checks that the committed file is what the generator
writes by default, so the two cannot drift apart.

The alerts follow the Google SRE workbook ("Alerting on SLOs", multiwindow, multi-burn-rate): a burn rate
is the error ratio over a window divided by the error budget ``1 - objective``; an alert needs both a long
window (enough evidence, so it does not page on a blip) and a short window (still happening, so it
resolves minutes after the problem ends rather than hours) above the same factor:

* page:   1h and 5m above 14.4 (2% of a 30-day budget in an hour), or 6h and 30m above 6 (5% in 6 hours);
* ticket: 1d and 2h above 3 (10% in a day), or 3d and 6h above 1 (the budget would not last).

Each alert ORs its two window pairs and labels each pair with ``window`` (the long window), so the
notification says which pair fired and the unit tests can prove that every pair fires on its own. The
alerts have no ``for``: the short window already is the debounce, and a ``for`` would only delay pages.

Multiple gateway instances: request counters are summed (``sum by (model)``) before dividing, so a model
served by several instances gets one ratio. Drift gauges are merged values every instance exports alike,
so they are aggregated with ``max``; summing them would multiply them by the number of instances.

Run ``python -m telemetry.prometheus.slo_rules --help``; ``README.md`` in this folder says how to
regenerate and validate the committed file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from telemetry.metrics import REQUEST_BUCKETS

# The latency SLI counts requests at or under its threshold from the cumulative bucket of that bound of
# mlgate_request_duration_seconds, so the threshold must be one of the gateway's own bounds (REQUEST_BUCKETS,
# imported rather than copied so the two cannot drift apart); anything else would need interpolation, which an
# SLI must not rely on.

SLI_WINDOWS: tuple[str, ...] = ("5m", "30m", "1h", "2h", "6h", "1d", "3d")
"""Every window a burn-rate alert reads, long or short."""

PSI_ACT = 0.25
"""PSI above which a feature has drifted enough to act on (``telemetry.drift.PSI_ACT``; a test keeps them equal)."""
DRIFT_MIN_ROWS = 100
"""Rows a drift window needs before its PSI or divergence is worth alerting on: fewer rows, noisier histograms."""
PREDICTION_DIVERGENCE_MAX = 0.1
"""Jensen-Shannon divergence (base 2, 0-1) of a version's predicted class probabilities from the champion's."""
SHADOW_AGREEMENT_MIN = 0.9
"""Share of compared rows whose labels a shadow must agree on with the champion."""
SHADOW_MIN_ROWS = 100
"""Compared rows over 5 minutes before a shadow's agreement ratio is trusted."""
REJECTION_RATIO_MAX = 0.05
"""Share of a model's requests that may be answered with 429 (refused by the batcher) before someone should add
capacity."""
FALLBACK_RATIO_MAX = 0.01
"""Share of a model's requests answered by a fallback: a tenth of a 10% canary's traffic. Fallbacks succeed,
so the availability SLO does not see a failing challenger; this alert does."""
ROLLBACK_ALERT_WINDOW = "15m"
"""How long the rollback alert fires after a rollout was rolled back."""


@dataclass(frozen=True)
class BurnWindow:
    """One window pair of a burn-rate alert: both windows must burn faster than ``factor``."""

    long: str
    short: str
    factor: float
    severity: str


PAGE_WINDOWS = (BurnWindow("1h", "5m", 14.4, "page"), BurnWindow("6h", "30m", 6.0, "page"))
TICKET_WINDOWS = (BurnWindow("1d", "2h", 3.0, "ticket"), BurnWindow("3d", "6h", 1.0, "ticket"))


@dataclass(frozen=True)
class Slo:
    """mlgate's service level objectives, per model.

    ``availability``: share of requests that must not fail with a 5xx or a 429 (a refusal is unavailability
    to the caller, even when it protects the gateway). ``latency_threshold_seconds`` and
    ``latency_objective``: share of successful (status 200) requests that must be answered within the
    threshold; failures are left out so that fast errors cannot make latency look good and slow errors do
    not count twice.
    """

    availability: float = 0.999
    latency_threshold_seconds: float = 0.05
    latency_objective: float = 0.99

    def __post_init__(self) -> None:
        for name in ("availability", "latency_objective"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0:  # False for NaN too
                raise ValueError(f"{name} must be strictly between 0 and 1 (a ratio such as 0.999), got {value!r}")
        if self.latency_threshold_seconds not in REQUEST_BUCKETS:
            bounds = ", ".join(_number(b) for b in REQUEST_BUCKETS)
            raise ValueError(
                f"latency threshold {self.latency_threshold_seconds!r} s is not a bucket bound of "
                f"mlgate_request_duration_seconds; choose one of: {bounds}")

    @property
    def le(self) -> str:
        """The threshold's ``le`` label value as the Python client writes it (``repr``: 0.05, 1.0, 10.0)."""
        return repr(float(self.latency_threshold_seconds))


# --------------------------------------------------------------------------------------------- rule names

def availability_ratio(window: str) -> str:
    return f"mlgate:slo_availability_errors:ratio_rate{window}"


def latency_ratio(window: str) -> str:
    return f"mlgate:slo_latency_slow:ratio_rate{window}"


AVAILABILITY_OBJECTIVE = "mlgate:slo_availability_objective:ratio"
LATENCY_OBJECTIVE = "mlgate:slo_latency_objective:ratio"
LATENCY_THRESHOLD = "mlgate:slo_latency_threshold:seconds"


# --------------------------------------------------------------------------------------------- recording

def _recording_rules(slo: Slo) -> list[dict[str, Any]]:
    """Rates and ratios the dashboards and alerts read, each summed over instances before any division."""
    rules: list[dict[str, Any]] = [
        _record("mlgate:requests:rate5m",
                "sum by (model) (rate(mlgate_requests_total[5m]))"),
        # Zero server errors is a ratio of 0, not "no data": hence the `or 0 * ...` on the numerator.
        _record("mlgate:requests_errors:ratio_rate5m", _zero_filled_ratio(
            'sum by (model) (rate(mlgate_requests_total{status=~"5.."}[5m]))',
            "sum by (model) (rate(mlgate_requests_total[5m]))")),
    ]
    for name, quantile in (("p50", 0.5), ("p99", 0.99)):
        rules.append(_record(
            f"mlgate:request_duration_seconds:{name}_rate5m",
            f"histogram_quantile({quantile},\n"
            f"  sum by (le, model, version) (rate(mlgate_request_duration_seconds_bucket[5m]))\n"
            f")"))
    rules += [
        _record("mlgate:batch_rows:rate5m",
                "sum by (model, version) (rate(mlgate_batch_rows_sum[5m]))"),
        _record("mlgate:batches:rate5m",
                "sum by (model, version) (rate(mlgate_batch_rows_count[5m]))"),
        _record("mlgate:batch_rows:mean_rate5m",
                "sum by (model, version) (rate(mlgate_batch_rows_sum[5m]))\n"
                "/\n"
                "sum by (model, version) (rate(mlgate_batch_rows_count[5m]))"),
        _record("mlgate:batcher_rejections:rate5m",
                "sum by (model, version, reason) (rate(mlgate_batcher_rejections_total[5m]))"),
        _record("mlgate:fallbacks:rate5m",
                "sum by (model, version, reason, to) (rate(mlgate_fallbacks_total[5m]))"),
        _record("mlgate:shadow_agreement:ratio_rate5m",
                "sum by (model, version) (rate(mlgate_shadow_agreeing_rows_total[5m]))\n"
                "/\n"
                "sum by (model, version) (rate(mlgate_shadow_compared_rows_total[5m]))"),
    ]
    for window in SLI_WINDOWS:
        rules.append(_record(availability_ratio(window), _zero_filled_ratio(
            f'sum by (model) (rate(mlgate_requests_total{{status=~"5..|429"}}[{window}]))',
            f"sum by (model) (rate(mlgate_requests_total[{window}]))")))
    for window in SLI_WINDOWS:
        rules.append(_record(
            latency_ratio(window),
            f"1 - (\n"
            f'  sum by (model) (rate(mlgate_request_duration_seconds_bucket{{status="200",le="{slo.le}"}}[{window}]))\n'
            f"  /\n"
            f'  sum by (model) (rate(mlgate_request_duration_seconds_count{{status="200"}}[{window}]))\n'
            f")"))
    # The objectives as series, so dashboards can draw burn rates and budgets without repeating numbers.
    rules += [
        _record(AVAILABILITY_OBJECTIVE, f"vector({_number(slo.availability)})"),
        _record(LATENCY_OBJECTIVE, f"vector({_number(slo.latency_objective)})"),
        _record(LATENCY_THRESHOLD, f"vector({_number(slo.latency_threshold_seconds)})"),
    ]
    return rules


def _zero_filled_ratio(bad: str, total: str) -> str:
    return f"(\n  {bad}\n  or\n  0 * {total}\n)\n/\n{total}"


def _record(name: str, expr: str) -> dict[str, Any]:
    return {"record": name, "expr": expr}


# --------------------------------------------------------------------------------------------- SLO alerts

def _burn_alert(name: str, sli: str, ratio: str, objective: float, windows: Sequence[BurnWindow],
                what: str) -> dict[str, Any]:
    """One alert per (SLI, severity): its window pairs OR-ed, each pair tagged with ``window``."""
    budget = f"(1 - {_number(objective)})"
    branches = []
    for pair in windows:
        factor = _number(pair.factor)
        branches.append(
            f"label_replace(\n"
            f"  {ratio}{pair.long} / {budget} > {factor}\n"
            f"  and\n"
            f"  {ratio}{pair.short} / {budget} > {factor},\n"
            f'  "window", "{pair.long}", "", ""\n'
            f")")
    policy = ", or ".join(f"{p.long} and {p.short} both above {_number(p.factor)}x" for p in windows)
    severity = windows[0].severity
    return {
        "alert": name,
        "expr": "\nor\n".join(branches),
        "labels": {"severity": severity, "slo": sli},
        "annotations": {
            "summary": f"{{{{ $labels.model }}}}: {sli} error budget burning {{{{ $value | humanize }}}}x "
                       f"the sustainable rate over {{{{ $labels.window }}}}",
            "description": f"Over the last {{{{ $labels.window }}}}, model {{{{ $labels.model }}}} spent its {sli} "
                           f"error budget {{{{ $value | humanize }}}} times as fast as a {_percent(objective)} "
                           f"objective allows ({what}), and its short window says it still does. "
                           f"Fires ({severity}) when {policy}.",
        },
    }


def _slo_alerts(slo: Slo) -> list[dict[str, Any]]:
    failing = "requests failing with 5xx or 429"
    slow = f"successful requests slower than {_number(slo.latency_threshold_seconds)} s"
    availability = availability_ratio("")
    latency = latency_ratio("")
    return [
        _burn_alert("MlgateAvailabilityBudgetFastBurn", "availability", availability, slo.availability,
                    PAGE_WINDOWS, failing),
        _burn_alert("MlgateAvailabilityBudgetSlowBurn", "availability", availability, slo.availability,
                    TICKET_WINDOWS, failing),
        _burn_alert("MlgateLatencyBudgetFastBurn", "latency", latency, slo.latency_objective, PAGE_WINDOWS, slow),
        _burn_alert("MlgateLatencyBudgetSlowBurn", "latency", latency, slo.latency_objective, TICKET_WINDOWS, slow),
    ]


# --------------------------------------------------------------------------------------------- model alerts

def _model_alerts() -> list[dict[str, Any]]:
    """Causes rather than symptoms, so tickets: what burns the SLO pages through the burn-rate alerts."""
    enough_drift_rows = f"max by (model, version) (mlgate_drift_window_rows) >= {DRIFT_MIN_ROWS}"
    return [
        _alert(
            "MlgateModelUnavailable",
            # Summed over a gateway's processes (livesum) the gauge may read more than 1: test > 0.
            'max by (model, version) (mlgate_model_state{state="unavailable"}) > 0',
            "1m",
            "{{ $labels.model }} version {{ $labels.version }} is unavailable",
            "A gateway instance has reported model {{ $labels.model }} version {{ $labels.version }} unavailable "
            "for over a minute: requests routed to it fail with 503 or fall back to the champion or the "
            "default response."),
        _alert(
            "MlgateHighRejectionRate",
            # What callers received, not mlgate_batcher_rejections_total: that counter also counts refusals no
            # caller saw (a shadow's mirrored rows, which mlgate_requests_total does not count; a challenger's
            # refusals the champion answered through a fallback with a 200), so it fired on an overloaded
            # shadow. Every 429 comes from a batcher (admission limit, deadline unreachable, full queue). No
            # traffic reads 0/0 = NaN, and NaN > x is false: an idle model stays quiet, as in the fallback alert.
            'sum by (model) (rate(mlgate_requests_total{status="429"}[5m]))\n'
            "/\n"
            f"sum by (model) (rate(mlgate_requests_total[5m]))\n> {_number(REJECTION_RATIO_MAX)}",
            "5m",
            "{{ $labels.model }}: {{ $value | humanizePercentage }} of requests refused with 429",
            "Over 5 minutes {{ $value | humanizePercentage }} of the requests to {{ $labels.model }} were answered "
            f"with 429 (threshold {_percent(REJECTION_RATIO_MAX)}): its batcher refused them at the admission limit "
            "for the latency objective, because they could not finish within their deadline, or because the queue "
            "was full, and no fallback answered them. The deployment lacks capacity for its traffic and latency "
            "objective. Which version and why: mlgate_batcher_rejections_total by version and reason, or the "
            "Batching dashboard (these also count refusals callers never saw: shadow traffic, and challenger "
            "requests a fallback answered)."),
        _alert(
            "MlgateFallbacksHigh",
            "sum by (model) (rate(mlgate_fallbacks_total[5m]))\n"
            "/\n"
            f"sum by (model) (rate(mlgate_requests_total[5m]))\n> {_number(FALLBACK_RATIO_MAX)}",
            "10m",
            "{{ $labels.model }}: {{ $value | humanizePercentage }} of requests answered by a fallback",
            "For 10 minutes more than " + _percent(FALLBACK_RATIO_MAX) + " of the requests to "
            "{{ $labels.model }} were routed to a version that could not answer (error, deadline, overload, "
            "not ready) and were answered by the champion or the default response instead. Callers still got "
            "answers, so the availability SLO does not show it; see mlgate_fallbacks_total by version and reason."),
        _alert(
            "MlgateDriftHigh",
            f"max by (model, version) (mlgate_drift_max_psi) > {_number(PSI_ACT)}\n"
            f"and on (model, version)\n{enough_drift_rows}",
            "5m",
            "{{ $labels.model }} version {{ $labels.version }}: input drift, max PSI {{ printf \"%.2f\" $value }}",
            "An input feature of {{ $labels.model }} version {{ $labels.version }} has a population stability "
            f"index of {{{{ printf \"%.2f\" $value }}}} (above {_number(PSI_ACT)}) against the training reference, "
            f"over a drift window of at least {DRIFT_MIN_ROWS} rows: live inputs no longer look like the training "
            "data. See the drift dashboard for the features (mlgate_drift_feature_psi)."),
        _alert(
            "MlgatePredictionDrift",
            f"max by (model, version) (mlgate_drift_prediction_divergence) > {_number(PREDICTION_DIVERGENCE_MAX)}\n"
            f"and on (model, version)\n{enough_drift_rows}",
            "5m",
            "{{ $labels.model }} version {{ $labels.version }} predicts unlike the champion "
            "(JS divergence {{ printf \"%.2f\" $value }})",
            "The predicted class probabilities of {{ $labels.model }} version {{ $labels.version }} diverge from "
            f"the champion's by {{{{ printf \"%.2f\" $value }}}} (Jensen-Shannon, 0-1; threshold "
            f"{_number(PREDICTION_DIVERGENCE_MAX)}) over a drift window of at least {DRIFT_MIN_ROWS} rows."),
        _alert(
            "MlgateShadowDisagreement",
            f"mlgate:shadow_agreement:ratio_rate5m < {_number(SHADOW_AGREEMENT_MIN)}\n"
            "and on (model, version)\n"
            f"sum by (model, version) (increase(mlgate_shadow_compared_rows_total[5m])) >= {SHADOW_MIN_ROWS}",
            "5m",
            "{{ $labels.model }} version {{ $labels.version }} agrees with the champion on only "
            "{{ $value | humanizePercentage }} of rows",
            "Over 5 minutes, the labels of {{ $labels.model }} version {{ $labels.version }} agreed with the "
            "champion's on {{ $value | humanizePercentage }} of the mirrored rows compared (minimum "
            f"{_percent(SHADOW_AGREEMENT_MIN)}, with at least {SHADOW_MIN_ROWS} rows): promoting it would change "
            "answers."),
        _alert(
            "MlgateRolloutRolledBack",
            # The state gauge, not mlgate_rollout_transitions_total: that counter is born at its first
            # increment (so increase() misses the first rollback) and only the process holding the controller
            # lease counts. Requiring another state within the window keeps an old rollback from alerting
            # again after a restart or on a fresh Prometheus, and resolves the alert once the window passes.
            'max by (model, challenger) (mlgate_rollout_state{state="rolled_back"}) > 0\n'
            "and on (model, challenger)\n"
            "max by (model, challenger) ("
            f'max_over_time(mlgate_rollout_state{{state!="rolled_back"}}[{ROLLBACK_ALERT_WINDOW}])) > 0',
            None,
            "{{ $labels.model }}: the rollout of challenger {{ $labels.challenger }} was rolled back",
            "The rollout of {{ $labels.model }} version {{ $labels.challenger }} was rolled back in the last "
            f"{ROLLBACK_ALERT_WINDOW} (by the controller's checks or by an operator); all traffic is back on the "
            "champion. The audit log and `mlgate rollout status` say why."),
    ]


def _alert(name: str, expr: str, for_: str | None, summary: str, description: str) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_ is not None:
        rule["for"] = for_
    rule["labels"] = {"severity": "ticket"}
    rule["annotations"] = {"summary": summary, "description": description}
    return rule


# --------------------------------------------------------------------------------------------- output

def rule_groups(slo: Slo) -> dict[str, Any]:
    """The rule file's content, as Prometheus reads it."""
    return {"groups": [
        {"name": "mlgate-recording", "rules": _recording_rules(slo)},
        {"name": "mlgate-slo-alerts", "rules": _slo_alerts(slo)},
        {"name": "mlgate-model-alerts", "rules": _model_alerts()},
    ]}


def render(slo: Slo) -> str:
    """The rule file as committed: a header saying how it was made, then the rules (multi-line exprs as blocks)."""
    command = (f"python -m telemetry.prometheus.slo_rules --availability {_number(slo.availability)} "
               f"--latency-threshold {_number(slo.latency_threshold_seconds)} "
               f"--latency-objective {_number(slo.latency_objective)} --out telemetry/prometheus/mlgate-rules.yml")
    header = (
        "# mlgate Prometheus rules: recording rules, SLO burn-rate alerts, model alerts.\n"
        "# GENERATED by telemetry/prometheus/slo_rules.py: do not edit by hand. Change the generator, then run\n"
        f"#   {command}\n"
        "# Validate: promtool check rules telemetry/prometheus/mlgate-rules.yml\n"
        "#           promtool test rules telemetry/prometheus/tests/*.yml\n"
        f"# SLOs (per model): availability {_percent(slo.availability)} of requests not 5xx/429; latency "
        f"{_percent(slo.latency_objective)} of status-200 requests within {_number(slo.latency_threshold_seconds)} s.\n"
    )
    body = yaml.dump(rule_groups(slo), Dumper=_Dumper, sort_keys=False, width=1_000_000, allow_unicode=True)
    return header + body


class _Dumper(yaml.SafeDumper):
    """Safe YAML, writing multi-line strings (PromQL) as literal blocks so the file reads like hand-written rules."""


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)


def _number(value: float) -> str:
    """Shortest exact form of a number (0.999, 14.4, 6): ``repr`` without a useless ``.0``."""
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


def _percent(ratio: float) -> str:
    return f"{ratio * 100:.10g}%"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m telemetry.prometheus.slo_rules",
        description="Write mlgate's Prometheus rules (recording, SLO burn-rate and model alerts) as YAML.")
    defaults = Slo()
    parser.add_argument("--availability", type=float, default=defaults.availability,
                        help="availability objective, 0-1 (default %(default)s)")
    parser.add_argument("--latency-threshold", type=float, default=defaults.latency_threshold_seconds,
                        help="latency SLI threshold in seconds, a request-duration bucket bound (default %(default)s)")
    parser.add_argument("--latency-objective", type=float, default=defaults.latency_objective,
                        help="share of successful requests within the threshold, 0-1 (default %(default)s)")
    parser.add_argument("--out", type=Path, help="file to write (default: standard output)")
    args = parser.parse_args(argv)
    try:
        slo = Slo(args.availability, args.latency_threshold, args.latency_objective)
    except ValueError as error:
        parser.error(str(error))
    text = render(slo)
    if args.out is None:
        sys.stdout.write(text)
    else:
        args.out.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
