"""Recording outcomes during a load run and turning them into a report.

The recorder is on the hot path, so it keeps raw integer nanosecond
latencies in ``array('q')`` (an append is ~30 ns, no Python int boxing kept
alive) and does all statistics with numpy afterwards, over every sample --
no histograms, no reservoir sampling, so p99.9 and max are exact.
"""

from __future__ import annotations

import json
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import orjson

_OUTPUTS_MARKER = b'"outputs"'
PERCENTILES = (50.0, 90.0, 99.0, 99.9)
_NEVER = 2**63 - 1


class Recorder:
    """Counts results of requests whose (intended) start lies inside the measurement window.

    Requests started during warm-up still complete and still count toward the
    live progress line, but not toward the report.
    """

    def __init__(self, check_every: int = 0, expected_rows: int = 1) -> None:
        self.measure_from_ns = _NEVER
        self.measure_until_ns = _NEVER
        self.latencies = array("q")  # ok responses, from min(intended, actual) send time
        self.service = array("q")  # ok responses, from the actual send time
        self.errors: dict[str, int] = {}
        self.last_ok_ns = 0
        self.live_done = 0
        self.live_errors = 0
        self._check_every = check_every
        self._checked = 0
        self._expected_rows = expected_rows

    def measuring(self, start_ns: int) -> bool:
        """Whether a request that (was meant to) start at ``start_ns`` belongs to the report."""
        return self.measure_from_ns <= start_ns < self.measure_until_ns

    def response(self, intended_ns: int, sent_ns: int, now_ns: int, status: int, body: bytes) -> None:
        """Classify one complete HTTP response; a 2xx must look like an OIP answer to count as ok."""
        self.live_done += 1
        kind = self._validate(body) if 200 <= status < 300 else f"http_{status}"
        if kind is not None:
            self.live_errors += 1
            if self.measuring(intended_ns):
                self.errors[kind] = self.errors.get(kind, 0) + 1
            return
        if self.measuring(intended_ns):
            # From the intended time, or from the actual send if the open loop sent it a little early:
            # whichever came first, so client-side lateness is always charged, never hidden.
            self.latencies.append(now_ns - (intended_ns if intended_ns < sent_ns else sent_ns))
            self.service.append(now_ns - sent_ns)
            self.last_ok_ns = now_ns

    def failure(self, intended_ns: int, kind: str) -> None:
        """A request that got no HTTP response (refused, reset, timed out, protocol error)."""
        self.live_done += 1
        self.live_errors += 1
        if self.measuring(intended_ns):
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def _validate(self, body: bytes) -> str | None:
        """Cheap substring test on every response; a full parse on every Nth when asked."""
        if _OUTPUTS_MARKER not in body:
            return "bad_body"
        if self._check_every > 0:
            self._checked += 1
            if self._checked >= self._check_every:
                self._checked = 0
                return check_oip_response(body, self._expected_rows)
        return None

    def p99_so_far_ms(self) -> float | None:
        """p99 over the measured samples so far, for the live progress line (O(n), once a second)."""
        if not self.latencies:
            return None
        view = np.frombuffer(self.latencies, dtype=np.int64)
        try:
            return float(np.percentile(view, 99.0)) / 1e6
        finally:
            del view  # release the buffer export so the array can grow again


def check_oip_response(body: bytes, expected_rows: int) -> str | None:
    """Full structural check of an OIP JSON response; returns an error kind or None."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "invalid_json"
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list) or not outputs:
        return "invalid_oip_outputs"
    for out in outputs:
        if not isinstance(out, dict) or not {"name", "datatype", "shape"} <= out.keys():
            return "invalid_oip_tensor"
        shape = out["shape"]
        if not isinstance(shape, list) or not shape or shape[0] != expected_rows:
            return "invalid_oip_shape"
        if "data" not in out and "binary_data_size" not in (out.get("parameters") or {}):
            return "invalid_oip_data"
    return None


@dataclass
class Report:
    """Outcome of one load run; ``to_json`` is what ``--json FILE`` writes."""

    mode: str
    url: str
    model: str
    payload: str
    rows: int
    duration_s: float
    warmup_s: float
    concurrency: int | None = None
    connections: int | None = None
    arrival: str | None = None
    target_rate: float | None = None
    offered: int | None = None
    offered_rate: float | None = None
    sent: int = 0
    ok: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    throughput: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    latency_basis: str = ""
    service_latency_ms: dict[str, float] = field(default_factory=dict)
    client_cpu_percent: float = 0.0
    slo_ms: float | None = None
    within_slo: int | None = None
    goodput: float | None = None
    """Ok answers within ``slo_ms`` (from the intended send time) per second of the measured window."""

    @property
    def error_count(self) -> int:
        """All failed requests, whatever the kind."""
        return sum(self.errors.values())

    def to_json(self) -> str:
        """Pretty JSON of every field."""
        return json.dumps(asdict(self), indent=2, sort_keys=False)

    def to_text(self) -> str:
        """Human-readable summary for the terminal."""
        lines = [f"mode {self.mode}  url {self.url}  model {self.model}  payload {self.payload}  "
                 f"rows {self.rows}"]
        if self.mode == "open":
            lines.append(
                f"offered {self.offered} req ({self.offered_rate:.1f} req/s, target {self.target_rate:g}, "
                f"{self.arrival}), connections <= {self.connections}"
            )
        else:
            lines.append(f"concurrency {self.concurrency}")
        lines.append(
            f"sent {self.sent}  ok {self.ok}  errors {self.error_count}  "
            f"throughput {self.throughput:.1f} ok/s over {self.elapsed_s:.2f} s  "
            f"(client CPU {self.client_cpu_percent:.0f}% of one core)"
        )
        if self.goodput is not None:
            lines.append(f"goodput {self.goodput:.1f} ok/s within {self.slo_ms:g} ms ({self.within_slo} answers)")
        if self.errors:
            lines.append("errors: " + ", ".join(f"{k}={v}" for k, v in sorted(self.errors.items())))
        lines.append(f"latency ms ({self.latency_basis}): " + _fmt_latency(self.latency_ms))
        if self.service_latency_ms:
            lines.append("latency ms (from actual send):     " + _fmt_latency(self.service_latency_ms))
        return "\n".join(lines)


def _fmt_latency(lat: dict[str, float]) -> str:
    if not lat:
        return "n/a (no successful responses)"
    return "  ".join(f"{k} {v:.3f}" for k, v in lat.items())


def latency_summary(samples_ns: array[int]) -> dict[str, float]:
    """p50/p90/p99/p99.9/max/mean in milliseconds over all samples (empty dict when there are none)."""
    if not samples_ns:
        return {}
    arr = np.array(samples_ns, dtype=np.int64)
    pct = np.percentile(arr, PERCENTILES)
    out = {f"p{p:g}": float(v) / 1e6 for p, v in zip(PERCENTILES, pct, strict=True)}
    out["max"] = float(arr.max()) / 1e6
    out["mean"] = float(arr.mean()) / 1e6
    return out


def report_dict(report: Report) -> dict[str, Any]:
    """The report as a plain dict (for embedding in other reports)."""
    return asdict(report)
