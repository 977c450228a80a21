"""``mlgate status``: each version's role, traffic, batching and comparison, read from a running gateway.

It reads the same two public endpoints an operator's tools read, the OIP
repository index (which versions exist and their state) and ``/metrics``
(routing, batching, fallback and shadow counters), so it needs no token and
shows exactly what Prometheus would scrape. Means are over the gateway's
lifetime; rates come from two scrapes ``interval_s`` apart.
"""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import asdict, dataclass, field

from prometheus_client.parser import text_string_to_metric_families

from gateway.shadows import ShadowTally
from mlgate.admin_client import NOT_MLGATE


@dataclass
class DeploymentStatus:
    model: str
    version: str
    state: str
    batches: int = 0
    rows: int = 0
    execution_s: float = 0.0
    queue_wait_s: float = 0.0
    dispatched: int = 0
    """Requests that left the queue in a batch (``mlgate_queue_wait_seconds_count``): queue wait is per request."""
    queued_rows: int = 0
    admission_limit_rows: float | None = None
    rejections: dict[str, int] = field(default_factory=dict)
    transports: dict[str, int] = field(default_factory=dict)
    """Batches by the way they reached a replica (``mlgate_batch_transport_total``)."""
    model_fixed_ms: float = 0.0
    model_per_row_us: float = 0.0
    champion: bool = False
    share: float = 0.0
    shadow_ratio: float = 0.0
    fallbacks: int = 0
    shadow: ShadowTally = field(default_factory=ShadowTally)
    """Its answers compared with the champion's (the same tally the admin API shows, here from counters)."""
    rows_per_s: float | None = None

    @property
    def role(self) -> str:
        if self.champion:
            return "champion"
        if self.shadow_ratio > 0:
            return "shadow"
        return "challenger" if self.share > 0 else "-"

    @property
    def mean_rows(self) -> float | None:
        """None before the first batch: a mean of nothing is not 0."""
        return self.rows / self.batches if self.batches else None

    @property
    def mean_execution_ms(self) -> float | None:
        return 1e3 * self.execution_s / self.batches if self.batches else None

    @property
    def mean_queue_wait_ms(self) -> float | None:
        """Per request, as the histogram observes it (per row was a quarter of it for 4-row requests)."""
        return 1e3 * self.queue_wait_s / self.dispatched if self.dispatched else None


def _get(url: str, data: bytes | None = None, timeout_s: float = 5.0) -> bytes:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


def fetch_status(base_url: str, model: str | None = None, interval_s: float = 0.0) -> list[DeploymentStatus]:
    """Every version in the gateway's repository index (or of ``model``), with its figures from ``/metrics``."""
    base_url = base_url.rstrip("/")
    index = json.loads(_get(f"{base_url}/v2/repository/index", data=b"{}"))
    if not (isinstance(index, list)
            and all(isinstance(e, dict) and all(isinstance(e.get(k), str) for k in ("name", "version", "state"))
                    for e in index)):  # ({} was read as no models; [1] was a TypeError traceback)
        raise ValueError(f"its repository index is not a list of models with name, version and state; {NOT_MLGATE}")
    if model is not None:
        index = [e for e in index if e["name"] == model]
        if not index:
            raise ValueError(f"the gateway serves no model '{model}'")
    by_key = {(e["name"], e["version"]): DeploymentStatus(e["name"], e["version"], e["state"]) for e in index}
    earlier = None
    if interval_s > 0:
        earlier = {key: status.rows for key, status in _scrape(base_url, index).items()}
        time.sleep(interval_s)
    for key, status in _scrape(base_url, index).items():
        by_key[key] = status
        if earlier is not None:
            status.rows_per_s = (status.rows - earlier.get(key, 0)) / interval_s
    return sorted(by_key.values(), key=lambda s: (s.model, s.version))


def _scrape(base_url: str, index: list[dict[str, str]]) -> dict[tuple[str, str], DeploymentStatus]:
    by_key = {(e["name"], e["version"]): DeploymentStatus(e["name"], e["version"], e["state"]) for e in index}
    for family in text_string_to_metric_families(_get(f"{base_url}/metrics").decode()):
        for sample in family.samples:
            status = by_key.get((sample.labels.get("model", ""), sample.labels.get("version", "")))
            if status is not None:
                _fold(status, sample.name, sample.labels, sample.value)
    return by_key


def _fold(status: DeploymentStatus, name: str, labels: dict[str, str], value: float) -> None:
    if name == "mlgate_batch_rows_count":
        status.batches = int(value)
    elif name == "mlgate_batch_rows_sum":
        status.rows = int(value)
    elif name == "mlgate_batch_execution_seconds_sum":
        status.execution_s = value
    elif name == "mlgate_queue_wait_seconds_sum":
        status.queue_wait_s = value
    elif name == "mlgate_queue_wait_seconds_count":
        status.dispatched = int(value)
    elif name == "mlgate_queued_rows":
        status.queued_rows = int(value)
    elif name == "mlgate_admission_limit_rows":
        status.admission_limit_rows = value
    elif name == "mlgate_batcher_rejections_total":
        status.rejections[labels["reason"]] = int(value)
    elif name == "mlgate_batch_transport_total":
        status.transports[labels["transport"]] = int(value)
    elif name == "mlgate_latency_model_fixed_seconds":
        status.model_fixed_ms = value * 1e3
    elif name == "mlgate_latency_model_per_row_seconds":
        status.model_per_row_us = value * 1e6
    else:
        _fold_routing(status, name, labels, value)


_SHADOW_COUNTERS = {
    "mlgate_shadow_compared_rows_total": "rows",
    "mlgate_shadow_agreeing_rows_total": "agreeing_rows",
    "mlgate_shadow_abs_diff_total": "abs_diff_sum",
    "mlgate_shadow_seconds_total": "seconds",
    "mlgate_shadow_champion_seconds_total": "champion_seconds",
}


_SHADOW_OUTCOMES = ("compared", "failed", "dropped")


def _fold_routing(status: DeploymentStatus, name: str, labels: dict[str, str], value: float) -> None:
    if name == "mlgate_routing_champion":
        status.champion = value == 1.0
    elif name == "mlgate_routing_weight_ratio":
        status.share = value
    elif name == "mlgate_routing_shadow_ratio":
        status.shadow_ratio = value
    elif name == "mlgate_fallbacks_total":
        status.fallbacks += int(value)
    elif name in _SHADOW_COUNTERS:
        setattr(status.shadow, _SHADOW_COUNTERS[name], value)
    elif name == "mlgate_shadow_requests_total" and labels.get("outcome") in _SHADOW_OUTCOMES:
        setattr(status.shadow, labels["outcome"], int(value))  # (were always 0 in --json)


def render_table(statuses: list[DeploymentStatus]) -> str:
    traffic: list[tuple[str, ...]] = [(
        "MODEL", "VERSION", "STATE", "ROLE", "SPLIT", "ROWS/s", "FALLBACKS", "SHADOW", "AGREE", "MEAN |dP|",
        "LATENCY x")]
    batching: list[tuple[str, ...]] = [(
        "MODEL", "VERSION", "BATCHES", "ROWS/BATCH", "EXEC ms", "QUEUE ms", "QUEUED", "LIMIT", "REFUSED (reason=n)",
        "MODEL a ms + b µs/row", "TRANSPORT (way=n)")]
    for s in statuses:
        tally = s.shadow
        shadow = s.role == "shadow" or tally.rows > 0
        traffic.append((s.model, s.version, s.state, s.role, f"{s.share:.0%}",
                        "-" if s.rows_per_s is None else f"{s.rows_per_s:.1f}", str(s.fallbacks),
                        f"{s.shadow_ratio:.0%}" if shadow else "-", _maybe(tally.agreement, "{:.1%}"),
                        _maybe(tally.mean_abs_diff, "{:.3f}"), _maybe(tally.latency_ratio, "{:.2f}")))
        refused = _counts(s.rejections)
        limit = f"{s.admission_limit_rows:.0f}" if s.admission_limit_rows is not None else "-"
        # the latency model's gauges are set with each executed batch: before the first they read 0, not its cost
        model = f"{s.model_fixed_ms:.2f} + {s.model_per_row_us:.1f}" if s.batches else "-"
        batching.append((s.model, s.version, str(s.batches), _maybe(s.mean_rows, "{:.1f}"),
                         _maybe(s.mean_execution_ms, "{:.2f}"), _maybe(s.mean_queue_wait_ms, "{:.2f}"),
                         str(s.queued_rows), limit, refused, model, _counts(s.transports)))
    return f"{_table(traffic)}\n\n{_table(batching)}"


def _counts(counts: dict[str, int]) -> str:
    """``key=n`` for every non-zero count, by key; ``-`` if none."""
    return ", ".join(f"{k}={v}" for k, v in sorted(counts.items()) if v) or "-"


def _maybe(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def _table(rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def render_json(statuses: list[DeploymentStatus]) -> str:
    return json.dumps([{**asdict(s), "role": s.role, "mean_rows": s.mean_rows,
                        "mean_execution_ms": s.mean_execution_ms, "mean_queue_wait_ms": s.mean_queue_wait_ms,
                        "shadow": s.shadow.to_json()} for s in statuses], indent=2)
