"""How ``mlgate drift`` shows a model's drift: a table of the top drifting features, and an optional plot.

The numbers come from the admin API (``GET /admin/v1/models/{model}/drift``),
which merges every gateway process's evidence; this module only lays them out.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _num(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def _level(psi: float | None, warn: float, act: float) -> str:
    if psi is None:
        return ""
    return "ACT" if psi > act else "warn" if psi > warn else ""


def render_table(doc: dict[str, Any], top: int) -> str:
    """Per version a summary line, then its ``top`` features by PSI with their other divergences."""
    lines = [f"model {doc['model']}  champion {doc['champion']}  window {doc['window_s']:g} s "
             "(all gateway processes)"]
    for version in doc["versions"]:
        warn, act = version["psi_warn"], version["psi_act"]
        agreement = version["agreement"]
        lines += [
            "",
            f"version {version['version']}: {version['rows']} rows, {version['requests']} requests, "
            f"error rate {_num(version['error_rate'], '.2%')}, p99 "
            f"{_num(version['latency_p99_s'] and version['latency_p99_s'] * 1e3, '.1f')} ms",
            f"  max PSI {_num(version['max_psi'])}  features over {warn:g}: {version['features_over_warn']}, "
            f"over {act:g}: {version['features_over_act']}  prediction divergence vs champion "
            f"{_num(version['prediction_divergence'])}  label agreement "
            f"{_num(agreement, '.1%')} of {version['compared_rows']} compared rows",
        ]
        features = version["features"][:top]
        if not features:
            lines.append("  no input rows in the window" if not version["rows"] else "  no reference profile")
            continue
        width = max(len("FEATURE"), *(len(f["feature"]) for f in features))
        lines.append(f"  {'FEATURE':<{width}}  {'PSI':>8}  {'JS':>7}  {'KS':>7}  {'W1':>10}")
        for f in features:
            lines.append(f"  {f['feature']:<{width}}  {_num(f['psi']):>8}  {_num(f['js']):>7}  {_num(f['ks']):>7}  "
                         f"{_num(f['wasserstein'], '.4g'):>10}  {_level(f['psi'], warn, act)}")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> int:
    """Reference vs live histograms of each version's top features, one row of panels per version; panels drawn."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed, none assumed
    import matplotlib.pyplot as plt

    versions = [v for v in doc["versions"] if v.get("histograms")]
    if not versions:
        return 0
    columns = max(len(v["histograms"]) for v in versions)
    figure, axes = plt.subplots(len(versions), columns, figsize=(4 * columns, 3 * len(versions)), squeeze=False)
    for row, version in enumerate(versions):
        psi = {f["feature"]: f["psi"] for f in version["features"]}
        for column in range(columns):
            axis = axes[row][column]
            if column >= len(version["histograms"]):
                axis.axis("off")
                continue
            hist = version["histograms"][column]
            labels = ["<" + _short(hist["edges"][0])]
            labels += [_short(e) for e in hist["edges"][:-1]]
            labels += [">=" + _short(hist["edges"][-1])]
            positions = range(len(labels))
            axis.bar(positions, _shares(hist["reference"]), width=0.45, align="edge", label="reference (training)")
            axis.bar([p - 0.45 for p in positions], _shares(hist["live"]), width=0.45, align="edge", label="live")
            axis.set_xticks(list(positions), labels, rotation=60, fontsize=6)
            axis.set_title(f"v{version['version']} {hist['feature']}\nPSI {_num(psi.get(hist['feature']))}",
                           fontsize=8)
            axis.set_ylabel("share of rows", fontsize=7)
            if column == 0:
                axis.legend(fontsize=6)
    figure.suptitle(f"{doc['model']}: reference vs live, last {doc['window_s']:g} s")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return sum(len(v["histograms"]) for v in versions)


def _shares(counts: list[int]) -> list[float]:
    total = sum(counts)
    return [c / total if total else 0.0 for c in counts]


def _short(value: float) -> str:
    return f"{value:.3g}"
