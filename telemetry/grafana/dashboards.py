"""Read the committed Grafana dashboards and list their queries, ready to run against Prometheus.

The JSON files in ``dashboards/`` are the source of truth (edit them in Grafana, export, commit). This
module only reads them, so that tests can check every query names real metrics and parses, and so that an
end-to-end test can evaluate every panel against a Prometheus scraping a live gateway: a panel that returns
nothing there is a panel an operator would find empty.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DASHBOARDS_DIR = HERE / "dashboards"
PROVISIONING_DIR = HERE / "provisioning"

CONTAINER_DASHBOARDS_DIR = "/var/lib/grafana/dashboards/mlgate"
"""Where the Grafana container sees ``dashboards/`` (the provider's path in ``provisioning/dashboards``)."""
CONTAINER_PROVISIONING_DIR = "/etc/grafana/provisioning"
"""Grafana's default provisioning folder, where ``provisioning/`` is mounted."""

SUBSTITUTIONS: dict[str, str] = {
    "model": ".+",
    "__rate_interval": "1m",
    "__interval": "15s",
}
"""Values for Grafana's variables when a query runs outside Grafana. ``model`` is the dashboards' model
picker, a regex (``=~"$model"``) whose "All" value is ``.+``; the intervals are what Grafana would pick
for a short time range at a 15 s scrape interval."""

# $name, ${name} and ${name:format}; names are word characters.
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS_DIR.glob("*.json"))


def load(path: Path) -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return dashboard


def panels(dashboard: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def substitute(expr: str) -> str:
    """The query with Grafana's variables replaced (``SUBSTITUTIONS``); an unknown variable is an error,
    because the query could then not run anywhere but in Grafana."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(2)
        if name not in SUBSTITUTIONS:
            raise ValueError(f"unknown Grafana variable ${name} in query: {expr}")
        return SUBSTITUTIONS[name]

    return _VARIABLE.sub(value, expr)


def raw_queries() -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, expr as written in the dashboard) of every query target."""
    queries = []
    for path in dashboard_files():
        dashboard = load(path)
        for panel in panels(dashboard):
            for target in panel.get("targets", []):
                queries.append((dashboard["title"], panel["title"], target.get("expr", "")))
    return queries


def panel_queries() -> list[tuple[str, str, str]]:
    """(dashboard title, panel title, expr) of every query target, variables substituted for Prometheus."""
    return [(dashboard, panel, substitute(expr)) for dashboard, panel, expr in raw_queries()]
