"""Telemetry proven end to end: a real Prometheus scrapes a real gateway running as two processes.

The gateway sees every feature at once — a split with a challenger that fails 30 % of its batches
(fallbacks), a shadow (agreement), shifted inputs (drift), requests that cannot meet their deadline
(429 rejections), unknown models (404), both protocols, and a rollout that is rolled back. Then:

- the request counter Prometheus scraped equals the number of requests this test sent, exactly,
  although two gateway processes answered them (one ``/metrics`` for both);
- every PromQL expression of every dashboard panel and every recording rule returns at least one
  series, and every rule Prometheus evaluates itself is healthy.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.grpc as triton_grpc
import tritonclient.http as triton_http
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_breast_cancer
from tritonclient.utils import InferenceServerException

from gateway.auth import digest, new_token
from telemetry.grafana.dashboards import panel_queries
from telemetry.prometheus.rules import recording_rules
from telemetry.prometheus_server import PrometheusServer
from tests.conftest import RunningGateway, free_port, start_gateway, stop_gateway

MODEL = "breast-cancer"
ADMIN_TOKEN = new_token()
SCRAPE_S = 1.0
SHIFTED = (0, 3)  # features pushed far out of their training range: drift


def telemetry_config(repository: Path, state: Path, http_port: int, grpc_port: int) -> str:
    return f"""
server: {{host: 127.0.0.1, http_port: {http_port}, grpc_port: {grpc_port}, workers: 2}}
ray: {{num_cpus: 2}}
deployment: {{num_cpus: 0.25}}
repository: {repository}
state: {{path: {state}}}
batching: {{latency_objective_ms: 250}}
monitoring: {{refresh_s: 1, window_s: 60}}
rollouts: {{tick_s: 1, lease_ttl_s: 5}}
telemetry: {{logs: {{format: json}}}}
auth:
  tokens: [{{name: ada, role: admin, sha256: {digest(ADMIN_TOKEN)}}}]
models:
  {MODEL}:
    versions: ["1", "2", "3"]
    routing: {{champion: "1", weights: {{"1": 75, "2": 25}}, shadows: {{"3": 100}}}}
    version_faults: {{"2": {{error_rate: 0.3}}}}
  breast-cancer-wide:
    versions: []
"""


@pytest.fixture(scope="module")
def gateway(demo_repository: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    workdir = tmp_path_factory.mktemp("telemetry")
    http_port, grpc_port = free_port(), free_port()
    running = start_gateway(telemetry_config(demo_repository, workdir / "state.db", http_port, grpc_port),
                            workdir, http_port, grpc_port, demo_repository)
    try:
        _wait_for_worker(running)
        yield running
    finally:
        stop_gateway(running)


def _wait_for_worker(gateway: RunningGateway, timeout_s: float = 120) -> None:
    """The supervisor is ready first; the second process listens once its models are warm."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in gateway.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                doc = json.loads(line)
                if doc.get("event") == "listening" and doc.get("worker") == 1:
                    return
        time.sleep(0.5)
    raise AssertionError(f"worker 1 never listened:\n{gateway.log_tail()}")


class Sent:
    """Every inference request this test sends, counted once its answer (any status) arrived."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.count = 0
        self.statuses: dict[str, int] = {}

    def add(self, status: str) -> None:
        with self._lock:
            self.count += 1
            self.statuses[status] = self.statuses.get(status, 0) + 1


_DATA = load_breast_cancer().data.astype(np.float32)
SHIFTED_NAMES = {str(load_breast_cancer().feature_names[j]) for j in SHIFTED}


def _rows(rng: np.random.Generator, shifted: bool) -> np.ndarray:
    """One real row of the training set; shifted ones have two features far outside their range."""
    rows = _DATA[rng.integers(len(_DATA)), None].copy()
    if shifted:
        rows[:, SHIFTED] *= 10
    return rows


def _http_load(url: str, sent: Sent, stop: threading.Event, seed: int) -> None:
    rng = np.random.default_rng(seed)
    while not stop.is_set():
        client = triton_http.InferenceServerClient(url)  # a new connection now and then: both processes answer
        try:
            for i in range(40):
                features = triton_http.InferInput("features", [1, 30], "FP32")
                features.set_data_from_numpy(_rows(rng, shifted=i % 2 == 0))
                model, timeout = MODEL, None
                if i % 13 == 0:
                    model = "no-such-model"
                elif i % 7 == 0:
                    timeout = 1  # one microsecond: cannot be met, refused at once
                try:
                    client.infer(model, [features], timeout=timeout)
                    sent.add("200")
                except InferenceServerException as exc:
                    sent.add(str(exc.status()))
        finally:
            client.close()


def _grpc_load(url: str, sent: Sent, stop: threading.Event) -> None:
    rng = np.random.default_rng(7)
    client = triton_grpc.InferenceServerClient(url)
    try:
        while not stop.is_set():
            features = triton_grpc.InferInput("features", [1, 30], "FP32")
            features.set_data_from_numpy(_rows(rng, shifted=False))
            try:
                client.infer(MODEL, [features])
                sent.add("200")
            except InferenceServerException as exc:
                sent.add(str(exc.status()))
    finally:
        client.close()


def _drive(gateway: RunningGateway, sent: Sent, seconds: float) -> None:
    stop = threading.Event()
    threads = [threading.Thread(target=_http_load, args=(gateway.http_url, sent, stop, seed)) for seed in (1, 2)]
    threads.append(threading.Thread(target=_grpc_load, args=(gateway.grpc_url, sent, stop)))
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)


def _start_rollout(gateway: RunningGateway) -> None:
    """Version 2 fails 30 % of its batches: the controller rolls it back from its shadow phase."""
    with httpx.Client(base_url=f"http://{gateway.http_url}/admin/v1", timeout=10,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        response = admin.post(f"/models/{MODEL}/rollout", json={
            "challenger": "2", "steps": [50, 100], "interval_s": 2, "shadow_s": 2,
            "checks": {"error_rate": {"threshold": 0.05, "failing_windows": 1, "min_requests": 10}}})
        assert response.status_code == 201, response.text


def _rollout(gateway: RunningGateway) -> dict[str, Any]:
    with httpx.Client(base_url=f"http://{gateway.http_url}/admin/v1", timeout=10,
                      headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}) as admin:
        doc: dict[str, Any] = admin.get(f"/models/{MODEL}/rollout").json()
    return doc


def _rollout_story(gateway: RunningGateway, doc: dict[str, Any]) -> str:
    """Why a rollout is where it is: its transitions and the gateway's errors from the log (not the injected
    batch failures), then its latest reason and verdicts."""
    moves = [line for line in gateway.log_path.read_text(errors="replace").splitlines()
             if '"rollout_transition"' in line or ('"level":"error"' in line and "injected failure" not in line)]
    return "\n".join([*moves, f"now {doc.get('state')}: {doc.get('reason')}",
                      *(str(verdict) for verdict in doc.get("last_judgement", []))])


def _total_after(prometheus: PrometheusServer, stopped: float, timeout_s: float = 20) -> float:
    """``sum(mlgate_requests_total)`` from a scrape that started after the load stopped (every answer, and so
    every count, happened before: a caller counts a request only once its answer arrived)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        scraped = prometheus.query("max(timestamp(mlgate_build_info))")
        if scraped and float(scraped[0]["value"][1]) > stopped:
            result = prometheus.query("sum(mlgate_requests_total)")
            return float(result[0]["value"][1]) if result else 0.0
        time.sleep(SCRAPE_S / 2)
    raise AssertionError(f"no scrape of the gateway after the load stopped, in {timeout_s:.0f} s")


def test_prometheus_sees_the_whole_gateway(gateway: RunningGateway) -> None:
    sent = Sent()
    with PrometheusServer([gateway.http_url], scrape_interval_s=SCRAPE_S) as prometheus:
        _drive(gateway, sent, seconds=12)  # split, shadow, fallback, drift, rejections, 404s, both protocols
        _start_rollout(gateway)
        deadline = time.monotonic() + 60
        while _rollout(gateway)["state"] != "rolled_back" and time.monotonic() < deadline:
            _drive(gateway, sent, seconds=2)
        rollout = _rollout(gateway)
        assert rollout["state"] == "rolled_back", _rollout_story(gateway, rollout)
        _drive(gateway, sent, seconds=3)

        # Every request counted once, across both processes and both protocols, errors included.
        assert {"200", "404", "429"} <= set(sent.statuses), sent.statuses
        assert _total_after(prometheus, time.time()) == sent.count, sent.statuses
        by_protocol = {r["metric"]["protocol"]: float(r["value"][1])
                       for r in prometheus.query("sum by (protocol) (mlgate_requests_total)")}
        assert set(by_protocol) == {"http", "grpc"}
        assert prometheus.query('sum(mlgate_fallbacks_total{to="champion"}) > 0')
        assert prometheus.query('sum(mlgate_batcher_rejections_total{reason="deadline"}) > 0')
        # batches went to the co-located replicas over the direct channel, none through Ray after a failure
        transports = {r["metric"]["transport"]: float(r["value"][1])
                      for r in prometheus.query("sum by (transport) (mlgate_batch_transport_total)")}
        assert transports["direct"] > 0 and transports["by_value"] == transports["by_reference"] == 0, transports
        psi = {r["metric"]["feature"]: float(r["value"][1]) for r in prometheus.query(
            f'max by (feature) (mlgate_drift_feature_psi{{model="{MODEL}",version="1"}})')}
        assert {name for name, value in psi.items() if value > 0.25} == SHIFTED_NAMES, psi
        assert prometheus.query('max(mlgate_model_state{state="ready"}) == 2'), "both processes report ready"
        # each process's request-body budget (the default, 512 MiB), and what they hold: nothing once idle (a
        # process copies the figure to the shared metrics once a second, so the first scrape may predate that)
        assert prometheus.query(f"sum(mlgate_request_body_limit_bytes) == {2 * 512 * 1024 * 1024}")
        deadline = time.monotonic() + 10 * SCRAPE_S
        while not prometheus.query("sum(mlgate_request_body_bytes) == 0"):
            assert time.monotonic() < deadline, prometheus.query("mlgate_request_body_bytes")
            time.sleep(SCRAPE_S)

        # Every dashboard panel and every recording rule has data.
        empty = []
        for dashboard, panel, expr in panel_queries():
            if not prometheus.query(expr):
                empty.append(f"{dashboard} / {panel}: {expr}")
        for record, expr in recording_rules():
            if not prometheus.query(expr):
                empty.append(f"recording rule {record}: {expr}")
        assert not empty, "queries without a series:\n" + "\n".join(empty)

        # Prometheus evaluates the rules itself: none may fail.
        time.sleep(SCRAPE_S * 3)
        groups = prometheus.api("rules")["groups"]
        assert groups
        unhealthy = [(rule["name"], rule.get("lastError")) for group in groups for rule in group["rules"]
                     if rule["health"] != "ok"]
        assert not unhealthy, unhealthy


def test_logs_are_json_events(gateway: RunningGateway) -> None:
    """Runs after the test above (same gateway): its notable events are in the log as JSON objects."""
    events: dict[str, list[dict[str, Any]]] = {}
    for line in gateway.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            doc = json.loads(line)  # every line that looks like ours must parse
            assert {"time", "level", "logger", "message"} <= set(doc), doc
            events.setdefault(doc.get("event", ""), []).append(doc)
    startup = events["startup"][0]
    assert startup["workers"] == 2 and startup["tracing"] is False and startup["time"].endswith("Z")
    assert {(e["model"], e["version"], e.get("worker")) for e in events["model_ready"]} >= {
        (MODEL, "1", 0), (MODEL, "1", 1)}
    assert any(e["champion"] == "1" for e in events["routing_changed"])
    assert any(e["state"] == "rolled_back" and e["challenger"] == "2" and e["reason"]
               for e in events["rollout_transition"])


def _events(gateway: RunningGateway, event: str) -> list[dict[str, Any]]:
    docs = (json.loads(line) for line in gateway.log_path.read_text(errors="replace").splitlines()
            if line.startswith("{"))
    return [doc for doc in docs if doc.get("event") == event]


def _scraped_total(gateway: RunningGateway) -> float:
    with urllib.request.urlopen(f"http://{gateway.http_url}/metrics", timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
        return sum(s.value for f in families if f.name == "mlgate_requests" for s in f.samples
                   if s.name == "mlgate_requests_total")


def test_a_killed_worker_is_restarted_and_no_count_is_lost(gateway: RunningGateway) -> None:
    """Runs after the tests above (same gateway). The supervisor restarts a worker that dies; the dead process's
    counts stay in the merged view (they happened), and what the new one counts adds to them exactly."""
    worker = max((e for e in _events(gateway, "worker_started") if e["worker_index"] == 1), key=lambda e: e["time"])
    listening_before = sum(1 for e in _events(gateway, "listening") if e.get("worker") == 1)
    before = _scraped_total(gateway)
    os.kill(worker["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 120
    while sum(1 for e in _events(gateway, "listening") if e.get("worker") == 1) == listening_before:
        assert time.monotonic() < deadline, gateway.log_tail()
        time.sleep(0.5)
    exited = [e for e in _events(gateway, "worker_exited") if e["pid"] == worker["pid"]]
    assert exited and exited[0]["exit_code"] == -signal.SIGKILL
    assert _scraped_total(gateway) == before
    sent = Sent()
    _drive(gateway, sent, seconds=3)
    assert sent.count > 0 and _scraped_total(gateway) == before + sent.count
