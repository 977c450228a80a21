"""``mlgate status``: what each deployment's batcher is doing, read from a running gateway.

It reads the same two public endpoints an operator's tools read, the OIP
repository index (which versions exist and their state) and ``/metrics`` (the
batching counters), so it needs no access beyond the data plane and shows
exactly what Prometheus would scrape. Means are over the gateway's lifetime.
"""

from __future__ import annotations

import json
import urllib.request
from dataclasses import asdict, dataclass, field

from prometheus_client.parser import text_string_to_metric_families


@dataclass
class DeploymentStatus:
    model: str
    version: str
    state: str
    batches: int = 0
    rows: int = 0
    execution_s: float = 0.0
    queue_wait_s: float = 0.0
    queued_rows: int = 0
    admission_limit_rows: float | None = None
    rejections: dict[str, int] = field(default_factory=dict)
    model_fixed_ms: float = 0.0
    model_per_row_us: float = 0.0

    @property
    def mean_rows(self) -> float:
        return self.rows / self.batches if self.batches else 0.0

    @property
    def mean_execution_ms(self) -> float:
        return 1e3 * self.execution_s / self.batches if self.batches else 0.0

    @property
    def mean_queue_wait_ms(self) -> float:
        return 1e3 * self.queue_wait_s / self.rows if self.rows else 0.0


def _get(url: str, data: bytes | None = None, timeout_s: float = 5.0) -> bytes:
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"} if data else {})
    with urllib.request.urlopen(request, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


def fetch_status(base_url: str) -> list[DeploymentStatus]:
    """Every version in the gateway's repository index, with its batching figures from ``/metrics``."""
    base_url = base_url.rstrip("/")
    index = json.loads(_get(f"{base_url}/v2/repository/index", data=b"{}"))
    by_key = {(e["name"], e["version"]): DeploymentStatus(e["name"], e["version"], e["state"]) for e in index}
    for family in text_string_to_metric_families(_get(f"{base_url}/metrics").decode()):
        for sample in family.samples:
            status = by_key.get((sample.labels.get("model", ""), sample.labels.get("version", "")))
            if status is not None:
                _fold(status, sample.name, sample.labels, sample.value)
    return sorted(by_key.values(), key=lambda s: (s.model, s.version))


def _fold(status: DeploymentStatus, name: str, labels: dict[str, str], value: float) -> None:
    if name == "mlgate_batch_rows_count":
        status.batches = int(value)
    elif name == "mlgate_batch_rows_sum":
        status.rows = int(value)
    elif name == "mlgate_batch_execution_seconds_sum":
        status.execution_s = value
    elif name == "mlgate_queue_wait_seconds_sum":
        status.queue_wait_s = value
    elif name == "mlgate_queued_rows":
        status.queued_rows = int(value)
    elif name == "mlgate_admission_limit_rows":
        status.admission_limit_rows = value
    elif name == "mlgate_batcher_rejections_total":
        status.rejections[labels["reason"]] = int(value)
    elif name == "mlgate_latency_model_fixed_seconds":
        status.model_fixed_ms = value * 1e3
    elif name == "mlgate_latency_model_per_row_seconds":
        status.model_per_row_us = value * 1e6


def render_table(statuses: list[DeploymentStatus]) -> str:
    header = ("MODEL", "VERSION", "STATE", "BATCHES", "ROWS/BATCH", "EXEC ms", "QUEUE ms", "QUEUED",
              "LIMIT", "REFUSED (reason=n)", "MODEL a ms + b µs/row")
    rows = [header]
    for s in statuses:
        refused = ", ".join(f"{k}={v}" for k, v in sorted(s.rejections.items()) if v) or "-"
        limit = f"{s.admission_limit_rows:.0f}" if s.admission_limit_rows is not None else "-"
        rows.append((s.model, s.version, s.state, str(s.batches), f"{s.mean_rows:.1f}",
                     f"{s.mean_execution_ms:.2f}", f"{s.mean_queue_wait_ms:.2f}", str(s.queued_rows), limit,
                     refused, f"{s.model_fixed_ms:.2f} + {s.model_per_row_us:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows)


def render_json(statuses: list[DeploymentStatus]) -> str:
    return json.dumps([{**asdict(s), "mean_rows": s.mean_rows, "mean_execution_ms": s.mean_execution_ms,
                        "mean_queue_wait_ms": s.mean_queue_wait_ms} for s in statuses], indent=2)
