"""``mlgate status`` against the gateway's real metrics text: the figures it derives must be the ones the
counters say (per request where the histogram observes requests, nothing where nothing was observed).

A small HTTP server stands in for the gateway's two public endpoints, serving the repository index and the
real ``/metrics`` exposition of the process's own registry; the batching figures are recorded through the
same ``BatchMetrics``/``ShadowMetrics`` objects the batcher and the shadow mirror use. Each test uses model
names of its own, since the registry is the process's.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from mlgate.status import DeploymentStatus, fetch_status, render_json, render_table
from telemetry.metrics import BatchMetrics, ShadowMetrics, exposition

_index: list[dict[str, str]] = []


class _Gateway(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body, content_type = exposition()
        self._send(body, content_type)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self._send(json.dumps(_index).encode(), "application/json")

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Gateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def _serve(*versions: tuple[str, str, str]) -> None:
    _index[:] = [{"name": m, "version": v, "state": s} for m, v, s in versions]


def _batching_line(statuses: list[DeploymentStatus], model: str, version: str) -> list[str]:
    """ROWS/BATCH, EXEC ms, QUEUE ms and MODEL of the version's line in the table, cut by the header's columns."""
    batching = render_table(statuses).split("\n\n")[1]
    header, *lines = batching.splitlines()
    line = next(ln for ln in lines if ln.split()[:2] == [model, version])
    cells = []
    for column, following in (("ROWS/BATCH", "EXEC ms"), ("EXEC ms", "QUEUE ms"), ("QUEUE ms", "QUEUED"),
                              ("MODEL a ms", "TRANSPORT")):
        cells.append(line[header.index(column):header.index(following)].strip())
    return cells


def test_queue_wait_is_a_mean_per_request_not_per_row(url: str) -> None:
    """Two 4-row requests that each waited 4 ms, in one batch: the mean wait is 4 ms (it was shown as 1 ms, the
    per-request waits' sum divided by the batch's rows)."""
    model = "status-fig-wait"
    metrics = BatchMetrics.for_deployment(model, "1")
    for _ in range(2):
        metrics.queue_wait.observe(0.004)
    metrics.batch_rows.observe(8)
    metrics.batch_execution.observe(0.002)
    _serve((model, "1", "READY"))
    [status] = fetch_status(url, model)
    assert (status.batches, status.rows) == (1, 8)
    assert status.mean_queue_wait_ms == pytest.approx(4.0)
    assert status.dispatched == 2
    assert status.mean_rows == 8.0
    assert status.mean_execution_ms == pytest.approx(2.0)
    rows_per_batch, execution, queue_wait, *_ = _batching_line([status], model, "1")
    assert (rows_per_batch, execution, queue_wait) == ("8.0", "2.00", "4.00")
    [shown] = json.loads(render_json([status]))
    assert shown["mean_queue_wait_ms"] == pytest.approx(4.0) and shown["dispatched"] == 2


def test_a_version_without_batches_shows_no_means(url: str) -> None:
    """No batch yet (or a version that is not ready): rows per batch, execution, queue wait and the latency model
    were shown as 0.0, 0.00, 0.00 and '0.00 + 0.0' (the model's gauges are set with each batch), as if
    measured; now '-' in the table and null in --json. A version with batches beside it keeps its figures."""
    model = "status-fig-idle"
    BatchMetrics.for_deployment(model, "1")  # series exist at 0, as the batcher creates them
    busy = BatchMetrics.for_deployment(model, "2")
    busy.batch_rows.observe(3)
    busy.batch_execution.observe(0.001)
    busy.queue_wait.observe(0.0)
    busy.model_fixed.set(0.0005)
    _serve((model, "1", "READY"), (model, "2", "READY"), (model, "3", "UNAVAILABLE"))
    statuses = fetch_status(url, model)
    for version in ("1", "3"):
        assert _batching_line(statuses, model, version) == ["-", "-", "-", "-"]
    assert _batching_line(statuses, model, "2") == ["3.0", "1.00", "0.00", "0.50 + 0.0"]
    shown = {s["version"]: s for s in json.loads(render_json(statuses))}
    for version in ("1", "3"):
        assert [shown[version][k] for k in ("mean_rows", "mean_execution_ms", "mean_queue_wait_ms")] == [None] * 3
    assert shown["2"]["mean_rows"] == 3.0 and shown["2"]["mean_queue_wait_ms"] == 0.0
    assert "nan" not in render_table(statuses).lower()


def test_shadow_request_outcomes_reach_json(url: str) -> None:
    """``--json``'s shadow compared, failed and dropped come from mlgate_shadow_requests_total by outcome; they
    were always 0."""
    model = "status-fig-shadow"
    shadow = ShadowMetrics.for_version(model, "2")
    shadow.compared.inc(5)
    shadow.failed.inc(2)
    shadow.dropped.inc(1)
    shadow.rows.inc(20)
    shadow.agreeing_rows.inc(19)
    _serve((model, "1", "READY"), (model, "2", "READY"))
    shown = {s["version"]: s["shadow"] for s in json.loads(render_json(fetch_status(url, model)))}
    assert (shown["2"]["compared"], shown["2"]["failed"], shown["2"]["dropped"]) == (5, 2, 1)
    assert shown["2"]["rows"] == 20 and shown["2"]["agreement"] == pytest.approx(0.95)
    assert (shown["1"]["compared"], shown["1"]["failed"], shown["1"]["dropped"]) == (0, 0, 0)
