"""mlgate's Grafana dashboards, checked without Grafana: structure, variables, metric names, PromQL syntax.

A dashboard that queries a misspelt metric shows "No data", which reads like "nothing happened" exactly
when something did. So every query must name only metrics the gateway exposes (the catalogue) or series
the committed recording rules produce, must filter by the model picker, and must parse (promtool checks
them as recording rules). Whether each query returns data from a live gateway is for the end-to-end test,
which runs ``telemetry.grafana.dashboards.panel_queries()`` against a real Prometheus.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from telemetry import catalogue
from telemetry.grafana import dashboards
from telemetry.prometheus.rules import CATALOGUE, SUMMED_DRIFT, recording_rules

ROOT = Path(__file__).resolve().parent.parent
FILES = dashboards.dashboard_files()
EXPECTED_UIDS = {"mlgate-overview", "mlgate-batching", "mlgate-routing", "mlgate-drift"}
PER_PROCESS = {doc.name for doc in catalogue.documented() if "model" not in doc.labels}
PANEL_TYPES = {"row", "timeseries", "stat", "heatmap", "table", "state-timeline"}
DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}
INSTALL_PROMTOOL = ("promtool not found on PATH: install the Debian package 'prometheus' "
                    "(apt-get install prometheus), which provides /usr/bin/promtool")
_NAME = re.compile(r"\bmlgate[_:][A-Za-z0-9_:]*")


def _load(path: Path) -> dict[str, Any]:
    return dashboards.load(path)


def _targets(dashboard: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in dashboards.panels(dashboard) for target in panel.get("targets", [])]


def test_the_four_dashboards_exist_with_unique_uids_and_titles() -> None:
    loaded = [_load(path) for path in FILES]
    uids = [d["uid"] for d in loaded]
    titles = [d["title"] for d in loaded]
    assert set(uids) == EXPECTED_UIDS and len(uids) == len(EXPECTED_UIDS)
    assert all(titles) and len(set(titles)) == len(titles)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_dashboard_structure(path: Path) -> None:
    dashboard = _load(path)
    assert dashboard["uid"] == path.stem and dashboard["title"].startswith("mlgate / ")
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None, "an exported id would clash on import"
    ids = [panel["id"] for panel in dashboards.panels(dashboard)]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    for panel in dashboards.panels(dashboard):
        assert panel["type"] in PANEL_TYPES, panel["title"]
        assert panel["title"], panel
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target["datasource"] == DATASOURCE, panel["title"]
            assert target["expr"].strip(), f"empty query in {panel['title']!r}"
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_dashboard_variables(path: Path) -> None:
    variables = {v["name"]: v for v in _load(path)["templating"]["list"]}
    assert set(variables) == {"datasource", "model"}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    model = variables["model"]
    assert model["type"] == "query" and model["datasource"] == DATASOURCE
    assert model["definition"] == "label_values(mlgate_requests_total, model)"
    assert model["query"]["query"] == model["definition"]
    assert model["multi"] and model["includeAll"] and model["allValue"] == ".+"


def test_queries_filter_by_the_model_picker_as_a_regex() -> None:
    """Multi-value and "All" expand to a regex, so an equality match would find nothing. Metrics without a
    ``model`` label (the build, the event loop) describe a process, and have nothing to filter."""
    for dashboard, panel, expr in dashboards.raw_queries():
        assert '="$model"' not in expr and "!~\"$model\"" not in expr, (dashboard, panel)
        model_free = (set(_NAME.findall(expr)) <= PER_PROCESS
                      or expr.strip() == "1 - mlgate:slo_latency_objective:ratio")
        assert model_free or '=~"$model"' in expr, f"{dashboard} / {panel}: no model filter in {expr}"


def test_queries_use_only_catalogue_metrics_and_recorded_series() -> None:
    known = CATALOGUE | {name for name, _ in recording_rules()}
    for dashboard, panel, expr in dashboards.raw_queries():
        names = set(_NAME.findall(expr))
        assert names, f"{dashboard} / {panel} queries no mlgate metric: {expr}"
        assert names <= known, f"{dashboard} / {panel}: unknown {sorted(names - known)}"


def test_every_catalogue_metric_is_on_some_dashboard() -> None:
    """A metric nobody can see is a metric nobody will look at when it matters."""
    used = {name for _, _, expr in dashboards.raw_queries() for name in _NAME.findall(expr)}
    histogram_parts = {name for name in CATALOGUE if name.endswith(("_sum", "_count"))}
    missing = CATALOGUE - used - histogram_parts
    assert missing == set()


def test_drift_gauges_are_aggregated_with_max() -> None:
    for dashboard, panel, expr in dashboards.raw_queries():
        assert not SUMMED_DRIFT.search(expr), f"{dashboard} / {panel}: {expr}"


def test_panels_use_short_rate_windows() -> None:
    """Panels follow the time picker; only the SLO recording rules look back hours or days."""
    for dashboard, panel, expr in dashboards.raw_queries():
        windows = re.findall(r"\[([^\]]+)\]", expr)
        assert all(window == "$__rate_interval" for window in windows), f"{dashboard} / {panel}: {windows}"


def test_panel_queries_substitute_every_variable() -> None:
    queries = dashboards.panel_queries()
    assert len(queries) == len(dashboards.raw_queries()) > 0
    for dashboard, panel, expr in queries:
        assert "$" not in expr, (dashboard, panel, expr)
    overview = [expr for dashboard, panel, expr in queries
                if dashboard == "mlgate / Service overview" and panel == "Request rate"]
    assert overview == ['sum by (model) (rate(mlgate_requests_total{model=~".+"}[1m]))']


def test_substitute_handles_grafana_variable_forms_and_refuses_unknown_ones() -> None:
    assert dashboards.substitute('x{model=~"${model}"}[${__rate_interval}] $__interval') == \
        'x{model=~".+"}[1m] 15s'
    assert dashboards.substitute('x{model=~"${model:regex}"}') == 'x{model=~".+"}'
    with pytest.raises(ValueError, match="unknown Grafana variable"):
        dashboards.substitute("x[$__range]")


def test_panel_queries_parse_as_promql(tmp_path: Path) -> None:
    """promtool parses each query as the expr of a recording rule: a syntax error fails here, not in Grafana."""
    binary = shutil.which("promtool")
    if binary is None:
        pytest.fail(INSTALL_PROMTOOL)
    rules = [{"record": f"mlgate_dashboard_check:query:{i}", "expr": expr}
             for i, (_, _, expr) in enumerate(dashboards.panel_queries())]
    path = tmp_path / "panel-queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "panel-queries", "rules": rules}]}), encoding="utf-8")
    result = subprocess.run([binary, "check", "rules", str(path)], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"


# --------------------------------------------------------------------------------------------- provisioning

def test_dashboard_provisioning_points_at_the_mounted_dashboards_folder() -> None:
    config = yaml.safe_load((dashboards.PROVISIONING_DIR / "dashboards" / "mlgate.yml").read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    [provider] = config["providers"]
    assert provider["type"] == "file"
    assert provider["options"]["path"] == dashboards.CONTAINER_DASHBOARDS_DIR
    readme = (dashboards.HERE / "README.md").read_text(encoding="utf-8")
    mount = f"telemetry/grafana/dashboards:{dashboards.CONTAINER_DASHBOARDS_DIR}"
    assert mount in readme, "the README's docker command must mount the dashboards where the provider looks"
    assert f"telemetry/grafana/provisioning:{dashboards.CONTAINER_PROVISIONING_DIR}" in readme


def test_datasource_provisioning_is_the_default_prometheus() -> None:
    path = dashboards.PROVISIONING_DIR / "datasources" / "prometheus.yml"
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert config["apiVersion"] == 1
    [datasource] = config["datasources"]
    assert datasource["type"] == "prometheus" and datasource["isDefault"] is True
    assert datasource["url"].startswith("http")
