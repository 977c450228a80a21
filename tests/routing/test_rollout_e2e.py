"""Rollouts and drift end to end: the controller promotes a good challenger and rolls bad ones back.

Against the routing package's real gateway (versions 1 champion, 2 good, 3
trained on 30 % flipped labels, 5 failing every request). Load runs in a
background thread at about 150 requests/s while the test starts a rollout
through the admin API and watches it; every time bound is measured in the test
from the onset of the fault to the moment the gateway's routing gives the
challenger no traffic.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from telemetry.drift import PSI_ACT
from tests.conftest import RunningGateway
from tests.routing.support import FAILING, MODEL, Tokens, admin, body, fire, metric, set_routing, wait_for_metric

ROLLBACK_BOUND_S = 10.0
FAST = {"interval_s": 2.0, "shadow_s": 2.0, "steps": [50, 100]}


class Load:
    """Paced load in a background thread: batches of requests every ``period_s``; keeps every status."""

    def __init__(self, gateway: RunningGateway, rows: Callable[[], np.ndarray], per_batch: int = 15,
                 period_s: float = 0.1) -> None:
        self.gateway, self.rows, self.per_batch, self.period_s = gateway, rows, per_batch, period_s
        self.statuses: Counter[int] = Counter()
        self.variants: Counter[str] = Counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            x = self.rows()
            requests: list[tuple[bytes, dict[str, str]]] = [(body(x[i:i + 1]), {}) for i in range(self.per_batch)]
            for status, doc in fire(self.gateway, requests, connections=4):
                self.statuses[status] += 1
                if status == 200:
                    self.variants[doc["model_version"]] += 1
            self._stop.wait(max(0.0, self.period_s - (time.monotonic() - started)))


def _rows(dataset: np.ndarray, seed: int = 0) -> Callable[[], np.ndarray]:
    rng = np.random.default_rng(seed)
    return lambda: dataset[rng.integers(0, len(dataset), size=32)]


def _start(gateway: RunningGateway, challenger: str, **settings: Any) -> dict[str, Any]:
    with admin(gateway, Tokens.operator) as client:
        response = client.post(f"/models/{MODEL}/rollout", json={"challenger": challenger, **settings})
    assert response.status_code == 201, response.text
    doc: dict[str, Any] = response.json()
    return doc


def _rollout(gateway: RunningGateway) -> dict[str, Any]:
    with admin(gateway, Tokens.viewer) as client:
        doc: dict[str, Any] = client.get(f"/models/{MODEL}/rollout").json()
    return doc


def _wait_state(gateway: RunningGateway, states: set[str], timeout_s: float) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        record = _rollout(gateway)
        if record["state"] in states or time.monotonic() > deadline:
            return record
        time.sleep(0.2)


def _routing_when(gateway: RunningGateway, wanted: Callable[[dict[str, Any]], bool],
                  timeout_s: float = 3.0) -> dict[str, Any]:
    """The gateway's routing once ``wanted`` holds: it applies the controller's commits within a poll interval."""
    deadline = time.monotonic() + timeout_s
    while True:
        with admin(gateway, Tokens.viewer) as client:
            doc: dict[str, Any] = client.get(f"/models/{MODEL}/routing").json()
        if wanted(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.05)


def _challenger_share(gateway: RunningGateway, challenger: str) -> float:
    with admin(gateway, Tokens.viewer) as client:
        routing = client.get(f"/models/{MODEL}/routing").json()["routing"]
    weights = routing["weights"] or {routing["champion"]: 1}
    mirrored_percent = routing["shadows"].get(challenger, 0)
    return float(weights.get(challenger, 0) / sum(weights.values()) + mirrored_percent / 100)  # live + mirrored


def _wait_no_traffic(gateway: RunningGateway, challenger: str, timeout_s: float) -> float:
    """Seconds until the gateway's routing gives ``challenger`` neither live nor mirrored traffic."""
    started = time.monotonic()
    while _challenger_share(gateway, challenger) > 0:
        assert time.monotonic() - started < timeout_s, _rollout(gateway)["reason"]
        time.sleep(0.05)
    return time.monotonic() - started


@pytest.fixture
def clean_routing(routed: RunningGateway) -> Iterator[None]:
    """Champion 1 alone before each rollout test, and the package's usual split after it."""
    with admin(routed, Tokens.operator) as client:
        current = client.get(f"/models/{MODEL}/rollout")
        if current.status_code == 200 and current.json()["state"] not in ("promoted", "rolled_back"):
            client.post(f"/models/{MODEL}/rollout/abort", json={"reason": "test clean-up"})
    set_routing(routed, weights={"1": 100})
    yield
    set_routing(routed, weights={"1": 70, "2": 20, "3": 10})


@pytest.mark.usefixtures("clean_routing")
def test_good_challenger_walks_every_step_to_promoted(routed: RunningGateway, dataset: np.ndarray) -> None:
    transitions_before = metric(routed, "mlgate_rollout_transitions_total", model=MODEL, to="promoted")
    with Load(routed, _rows(dataset)) as load:
        started = _start(routed, "2", **FAST)
        assert started["state"] == "shadow" and started["spec"]["steps"] == [50, 100]
        record = _wait_state(routed, {"promoted", "rolled_back"}, timeout_s=90)
    assert record["state"] == "promoted", record["reason"]
    assert record["previous_champion"] == "1"
    path = [(t["to_state"], t["challenger_percent"]) for t in record["transitions"] if t["to_state"] != "inconclusive"]
    walked = [step for i, step in enumerate(path) if i == 0 or step != path[i - 1]]  # drop returns from inconclusive
    assert walked == [("shadow", 0), ("canary", 50), ("canary", 100), ("promoted", 100)], path
    assert set(load.statuses) == {200}, load.statuses
    assert load.variants["2"] > 0  # callers were answered by the challenger during the canary
    routing = _routing_when(routed, lambda doc: doc["routing"]["champion"] == "2")
    assert routing["updated_by"] == "rollout-controller" and routing["routing"]["weights"] == {"2": 100}
    with admin(routed, Tokens.viewer) as client:
        entries = client.get("/audit", params={"target": f"rollout/{MODEL}"}).json()
    # One audit entry per committed tick; a tick may make two moves (back from inconclusive, then a step).
    moves = [(e["after"]["state"], e["after"]["challenger_percent"]) for e in entries[-len(record["transitions"]):]
             if e["action"] == "rollout.transition" and e["after"]["state"] != "inconclusive"]
    audited = [move for i, move in enumerate(moves) if i == 0 or move != moves[i - 1]]
    assert audited[-3:] == [("canary", 50), ("canary", 100), ("promoted", 100)], moves
    assert metric(routed, "mlgate_rollout_transitions_total", model=MODEL, to="promoted") == transitions_before + 1


@pytest.mark.usefixtures("clean_routing")
def test_wrong_labels_are_rolled_back_by_disagreement(routed: RunningGateway, dataset: np.ndarray) -> None:
    with Load(routed, _rows(dataset, seed=1)) as load:
        onset = time.monotonic()  # version 3 disagrees from its first answer
        _start(routed, "3", **FAST)
        elapsed = (time.monotonic() - onset) + _wait_no_traffic(routed, "3", timeout_s=30)
    record = _rollout(routed)
    assert record["state"] == "rolled_back" and record["reason"].startswith("disagreement")
    assert elapsed < ROLLBACK_BOUND_S, f"rolled back {elapsed:.1f} s after the onset"
    assert set(load.statuses) == {200}, load.statuses
    with admin(routed, Tokens.viewer) as client:
        entries = client.get("/audit", params={"target": f"rollout/{MODEL}"}).json()
    assert entries[-1]["after"]["state"] == "rolled_back"
    assert "disagreement" in entries[-1]["reason"]


@pytest.mark.usefixtures("clean_routing")
def test_failing_challenger_is_rolled_back_by_error_rate_before_it_answers_anyone(
        routed: RunningGateway, dataset: np.ndarray) -> None:
    """Its mirrored answers fail from the first one, so it never gets live traffic: no caller sees it fail."""
    with Load(routed, _rows(dataset, seed=2)) as load:
        onset = time.monotonic()
        _start(routed, FAILING, **FAST)
        elapsed = (time.monotonic() - onset) + _wait_no_traffic(routed, FAILING, timeout_s=30)
        time.sleep(1.0)  # requests in flight at the rollback are answered too
    record = _rollout(routed)
    assert record["state"] == "rolled_back" and "error_rate" in record["reason"], record["reason"]
    assert elapsed < ROLLBACK_BOUND_S, f"rolled back {elapsed:.1f} s after the onset"
    assert set(load.statuses) == {200}, load.statuses  # failures stayed in the mirror
    assert all(t["challenger_percent"] == 0 for t in record["transitions"])  # rolled back from the shadow phase


@pytest.mark.usefixtures("clean_routing")
def test_input_drift_raises_psi_of_exactly_the_shifted_features_and_rolls_back(
        routed: RunningGateway, dataset: np.ndarray) -> None:
    shifted_features = (3, 17)
    span = dataset.max(axis=0) - dataset.min(axis=0)
    drifting = threading.Event()
    plain = _rows(dataset, seed=3)

    def rows() -> np.ndarray:
        x = plain().copy()
        if drifting.is_set():
            for j in shifted_features:
                x[:, j] += span[j]  # every value beyond the training maximum
        return x

    settings = {**FAST, "steps": [50, 100], "interval_s": 120.0,  # stays at 50 % until the drift
                "checks": {"act_on_input_drift": True}}
    with Load(routed, rows) as load:
        _start(routed, "2", **settings)
        record = _wait_state(routed, {"canary", "rolled_back"}, timeout_s=30)
        assert record["state"] == "canary" and record["challenger_percent"] == 50, record["reason"]
        drifting.set()  # the onset: from here on the load thread's next batch is shifted
        elapsed = _wait_no_traffic(routed, "2", timeout_s=30)
        with admin(routed, Tokens.viewer) as client:
            drift = client.get(f"/models/{MODEL}/drift", params={"window_s": 5, "version": "2"}).json()
    record = _rollout(routed)
    assert record["state"] == "rolled_back" and record["reason"].startswith("input_psi"), record["reason"]
    assert elapsed < ROLLBACK_BOUND_S, f"rolled back {elapsed:.1f} s after the drift began"
    assert set(load.statuses) == {200}, load.statuses
    report = drift["versions"][0]
    names = [f["feature"] for f in report["features"]]
    over = {f["feature"] for f in report["features"] if f["psi"] > report["psi_act"]}
    from sklearn.datasets import load_breast_cancer

    expected = {str(load_breast_cancer().feature_names[j]) for j in shifted_features}
    assert over == expected, [(f["feature"], round(f["psi"], 3)) for f in report["features"][:5]]
    assert len(names) == 30
    for feature in expected:  # the gauges agree (they are recomputed every 5 s, over 60 s)
        gauge = wait_for_metric(routed, "mlgate_drift_feature_psi", PSI_ACT, timeout_s=15, model=MODEL, version="2",
                                feature=feature)
        assert gauge > PSI_ACT, (feature, gauge)


def test_drift_command_prints_the_table_and_draws_the_plot(routed: RunningGateway, dataset: np.ndarray,
                                                           tmp_path: Path) -> None:
    assert {status for status, _ in fire(routed, [(body(dataset[i:i + 1]), {}) for i in range(300)])} == {200}
    time.sleep(2.5)  # the slot these rows landed in is complete and published
    plot = tmp_path / "drift.png"
    done = subprocess.run(
        [sys.executable, "-m", "mlgate.cli", "drift", MODEL, "--window", "15m", "--top", "3", "--plot", str(plot),
         "--url", f"http://{routed.http_url}", "--token", Tokens.viewer],
        capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert f"model {MODEL}  champion" in done.stdout and "FEATURE" in done.stdout and "PSI" in done.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    refused = subprocess.run([sys.executable, "-m", "mlgate.cli", "drift", MODEL, "--window", "soon",
                              "--url", f"http://{routed.http_url}", "--token", Tokens.viewer],
                             capture_output=True, text=True, timeout=60, check=False)
    assert refused.returncode == 1 and "--window" in refused.stderr


@pytest.mark.usefixtures("clean_routing")
def test_too_little_traffic_is_inconclusive_not_a_rollback(routed: RunningGateway, dataset: np.ndarray) -> None:
    with Load(routed, _rows(dataset, seed=4), per_batch=2, period_s=0.5):  # ~4 requests/s: under every minimum
        _start(routed, "3", **FAST)
        time.sleep(6.0)
        record = _rollout(routed)
    assert record["state"] == "inconclusive", record["reason"]
    assert "need" in record["reason"]
    assert {t["to_state"] for t in record["transitions"]} <= {"shadow", "inconclusive"}  # never advanced
    routing = _routing_when(routed, lambda doc: True)["routing"]
    assert routing["weights"] == {"1": 100} and routing["shadows"] == {"3": 100.0}  # held where it was


@pytest.mark.usefixtures("clean_routing")
def test_operator_actions_and_refusals(routed: RunningGateway) -> None:
    _start(routed, "2", interval_s=60)
    with admin(routed, Tokens.operator) as client:
        again = client.post(f"/models/{MODEL}/rollout", json={"challenger": "3"})
        assert again.status_code == 409 and "abort or finish it first" in again.json()["error"]
        paused = client.post(f"/models/{MODEL}/rollout/pause", json={"reason": "lunch"})
        assert paused.status_code == 200 and paused.json()["state"] == "paused", paused.text
        assert client.post(f"/models/{MODEL}/rollout/pause").status_code == 409
        assert client.post(f"/models/{MODEL}/rollout/resume").json()["state"] in ("shadow", "inconclusive")
        aborted = client.post(f"/models/{MODEL}/rollout/abort", json={"reason": "changed my mind"})
        assert aborted.json()["state"] == "rolled_back"
        assert "aborted by otto" in aborted.json()["reason"]
        assert client.post(f"/models/{MODEL}/rollout/resume").status_code == 409
        bad = client.post(f"/models/{MODEL}/rollout", json={"challenger": "9"})
        assert bad.status_code == 422 and "version '9' does not exist" in bad.json()["error"]
        steps = client.post(f"/models/{MODEL}/rollout", json={"challenger": "2", "steps": [50, 20]})
        assert steps.status_code == 422
    with admin(routed, Tokens.viewer) as client:
        assert client.post(f"/models/{MODEL}/rollout", json={"challenger": "2"}).status_code == 403
    assert _challenger_share(routed, "2") == 0
