"""Traffic split, sticky keys, header rules, shadows and fallback, end to end.

A real gateway (local Ray, Ray Serve, ONNX Runtime) serves ``breast-cancer``
versions 1 (champion), 2, 3 (the deliberately bad one), 4 (a copy of 1 made
slow: every batch takes 60 ms more) and 5 (a copy of 1 that fails every
request), the last two through the config's ``version_faults``. Routing is
changed through the admin API between tests, as an operator would.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from routing.store import StateStore
from tests.conftest import RunningGateway
from tests.routing.support import (
    FAILING,
    INFER,
    MODEL,
    SLOW,
    SLOW_DELAY_MS,
    body,
    fire,
    metric,
    set_routing,
    versions_of,
    wait_for_metric,
)

# --------------------------------------------------------------------------- split and stickiness


def test_split_over_20000_requests_matches_the_weights(routed: RunningGateway, dataset: np.ndarray) -> None:
    """Pearson's chi-square goodness of fit of the versions that answered 20,000 unkeyed requests
    against the configured 70/20/10 split; a correct router fails it with probability 0.001."""
    from scipy.stats import chisquare  # only this test needs it; a heavy import at collection time

    set_routing(routed, weights={"1": 70, "2": 20, "3": 10})
    payload = body(dataset[:1])
    results = fire(routed, [(payload, {})] * 20_000)
    counts = versions_of(results)
    observed = [counts["1"], counts["2"], counts["3"]]
    assert sum(observed) == 20_000
    p_value = chisquare(observed, [14_000, 4_000, 2_000]).pvalue
    assert p_value > 0.001, f"observed {observed} for 70/20/10 (chi-square p={p_value:.2g})"
    variants = {doc["model_version"]: doc["parameters"]["variant"] for _, doc in results}
    assert variants == {"1": "champion", "2": "challenger", "3": "challenger"}


def test_sticky_keys_stay_and_only_the_expected_fraction_moves(routed: RunningGateway,
                                                              dataset: np.ndarray) -> None:
    set_routing(routed, weights={"1": 70, "2": 20, "3": 10})
    keys = [f"user-{i}" for i in range(2_000)]
    row = dataset[:1]
    by_header = fire(routed, [(body(row), {"x-routing-key": key}) for key in keys])
    again = fire(routed, [(body(row, routing_key=key), {}) for key in keys])  # the same key as a parameter
    first = [doc["model_version"] for _, doc in by_header]
    assert first == [doc["model_version"] for _, doc in again], "a key changed version with the weights unchanged"
    both = fire(routed, [(body(row, routing_key="someone-else"), {"x-routing-key": key}) for key in keys[:300]])
    assert [doc["model_version"] for _, doc in both] == first[:300], "the sticky header must win over routing_key"

    set_routing(routed, weights={"1": 70, "2": 20, "3": 30}, reason="grow the canary")
    moved = fire(routed, [(body(row), {"x-routing-key": key}) for key in keys])
    after = [doc["model_version"] for _, doc in moved]
    changed = [(old, new) for old, new in zip(first, after, strict=True) if old != new]
    assert all(new == "3" for _, new in changed), f"keys moved between versions whose weights stayed: {changed[:5]}"
    expected = 30 / 120 - 10 / 100  # version 3's share grows from 10% to 25%
    tolerance = 4 * (expected * (1 - expected) / len(keys)) ** 0.5
    assert abs(len(changed) / len(keys) - expected) < tolerance, (len(changed), expected)


def test_header_rule_and_pinned_version_bypass_the_split(routed: RunningGateway, dataset: np.ndarray) -> None:
    set_routing(routed, weights={"1": 100}, header_rules=[{"header": "x-tester", "value": "yes", "version": "3"}])
    row = dataset[:1]
    testers = fire(routed, [(body(row), {"x-tester": "yes"})] * 50)
    others = fire(routed, [(body(row), {"x-tester": "no"})] * 50)
    assert versions_of(testers) == {"3": 50}
    assert versions_of(others) == {"1": 50}
    with httpx.Client(base_url=f"http://{routed.http_url}", timeout=10) as client:
        pinned = client.post(f"/v2/models/{MODEL}/versions/2/infer", content=body(row))
        assert pinned.status_code == 200
        assert pinned.json()["model_version"] == "2"
        assert pinned.headers["x-mlgate-variant"] == "challenger"
        failing = client.post(f"/v2/models/{MODEL}/versions/{FAILING}/infer", content=body(row))
        assert failing.status_code == 503, "a pinned request asked for that version: it gets its error"


@pytest.mark.parametrize(("values", "answering"), [(("yes", "no"), "3"), (("no", "yes"), "1"), ((" yes ",), "3")])
def test_a_repeated_header_routes_alike_on_http_and_grpc(routed: RunningGateway, dataset: np.ndarray,
                                                         values: tuple[str, ...], answering: str) -> None:
    """The first value counts, stripped, on both protocols. gRPC kept the last one: ``x-tester: no`` then
    ``x-tester: yes`` reached the header rule's version over gRPC and the champion over HTTP."""
    set_routing(routed, weights={"1": 100}, header_rules=[{"header": "x-tester", "value": "yes", "version": "3"}])
    row = dataset[:1]
    request = service_pb2.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="features", datatype="FP32", shape=list(row.shape))
    request.raw_input_contents.append(row.astype("<f4").tobytes())
    with grpc.insecure_channel(routed.grpc_url) as channel:  # raw stub: tritonclient sends each header once
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(
            request, metadata=[("x-tester", value) for value in values], timeout=30)
    assert response.model_version == answering
    with httpx.Client(base_url=f"http://{routed.http_url}", timeout=30) as client:
        # (HTTP's grammar drops whitespace around a header value, and h11 refuses to send it)
        reply = client.post(INFER, content=body(row), headers=[("x-tester", value.strip()) for value in values])
    assert reply.status_code == 200 and reply.json()["model_version"] == answering


def test_grpc_carries_the_variant_and_the_routing_key(routed: RunningGateway, dataset: np.ndarray) -> None:
    set_routing(routed, weights={"1": 50, "2": 50})
    client = grpcclient.InferenceServerClient(routed.grpc_url)
    try:
        tensor = grpcclient.InferInput("features", [1, 30], "FP32")
        tensor.set_data_from_numpy(dataset[:1])
        answers = set()
        for _ in range(5):
            result = client.infer(MODEL, [tensor], parameters={"routing_key": "grpc-user-7"})
            response = result.get_response()
            answers.add((response.model_version, response.parameters["variant"].string_param))
        assert len(answers) == 1, f"one routing key, several versions: {answers}"
        version, variant = answers.pop()
        assert variant == ("champion" if version == "1" else "challenger")
        by_header = client.infer(MODEL, [tensor], headers={"x-routing-key": "grpc-user-7"}).get_response()
        assert by_header.model_version == version
    finally:
        client.close()  # its channel would otherwise keep reconnecting after the gateway is gone


# --------------------------------------------------------------------------- fallback


def test_a_failing_challenger_never_reaches_the_caller(routed: RunningGateway, dataset: np.ndarray) -> None:
    set_routing(routed, weights={FAILING: 100})
    before = metric(routed, "mlgate_fallbacks_total", version=FAILING, reason="error", to="champion")
    results = fire(routed, [(body(dataset[i:i + 1]), {}) for i in range(300)])
    assert versions_of(results) == {"1": 300}
    assert {(doc["parameters"]["variant"], doc["parameters"]["fallback"]) for _, doc in results} == {
        ("champion", "champion")}
    after = metric(routed, "mlgate_fallbacks_total", version=FAILING, reason="error", to="champion")
    assert after - before == 300


def test_a_slow_challenger_falls_back_within_the_deadline(routed: RunningGateway, dataset: np.ndarray) -> None:
    set_routing(routed, weights={SLOW: 100}, fallback={"challenger_timeout_ms": 15})
    with httpx.Client(base_url=f"http://{routed.http_url}", timeout=10) as client:
        for _ in range(10):
            started = time.perf_counter()
            response = client.post(INFER, content=body(dataset[:1]))
            elapsed = time.perf_counter() - started
            assert response.status_code == 200
            assert response.headers["x-mlgate-fallback"] == "champion"
            assert response.json()["model_version"] == "1"
            assert elapsed < SLOW_DELAY_MS / 1000, "the caller waited for the slow challenger"
    assert metric(routed, "mlgate_fallbacks_total", version=SLOW, reason="deadline", to="champion") >= 10


@pytest.mark.parametrize("weights", [{"1": 100}, {"2": 100}], ids=["champion", "challenger"])
def test_a_timeout_no_version_can_meet_is_refused_alike_whoever_was_routed(routed: RunningGateway,
                                                                           dataset: np.ndarray,
                                                                           weights: dict[str, int]) -> None:
    """A one-microsecond timeout is a 429 / RESOURCE_EXHAUSTED (retry with more time) on both protocols. It was
    a 504 / DEADLINE_EXCEEDED when the split chose a challenger, because the refused challenger counted as an
    attempt that had used up the time."""
    set_routing(routed, weights=weights)
    with httpx.Client(base_url=f"http://{routed.http_url}", timeout=30) as client:
        doc = json.loads(body(dataset[:1]))
        reply = client.post(INFER, json={**doc, "parameters": {"timeout": 1}})
    assert reply.status_code == 429, reply.text
    assert "timeout" in reply.json()["error"] and "retry-after" in reply.headers
    client = grpcclient.InferenceServerClient(routed.grpc_url)
    try:
        tensor = grpcclient.InferInput("features", [1, 30], "FP32")
        tensor.set_data_from_numpy(dataset[:1])
        with pytest.raises(InferenceServerException) as refused:
            client.infer(MODEL, [tensor], timeout=1)
        assert refused.value.status() == "StatusCode.RESOURCE_EXHAUSTED", refused.value.message()
    finally:
        client.close()


def test_the_default_response_answers_when_even_the_champion_fails(routed: RunningGateway,
                                                                  dataset: np.ndarray) -> None:
    set_routing(routed, champion=FAILING, weights={FAILING: 100},
                fallback={"default_response": {"label": [0], "probabilities": [[0.5, 0.5]]}})
    results = fire(routed, [(body(dataset[:3]), {})] * 20)
    for status, doc in results:
        assert status == 200
        assert doc["parameters"] == {"variant": "champion", "fallback": "default"}
        outputs = {o["name"]: o["data"] for o in doc["outputs"]}
        assert outputs == {"label": [0, 0, 0], "probabilities": [0.5] * 6}


# --------------------------------------------------------------------------- shadows


def _median_latency(gateway: RunningGateway, payload: bytes, count: int) -> float:
    with httpx.Client(base_url=f"http://{gateway.http_url}", timeout=10) as client:
        client.post(INFER, content=payload).raise_for_status()
        timings = []
        for _ in range(count):
            started = time.perf_counter()
            client.post(INFER, content=payload).raise_for_status()
            timings.append(time.perf_counter() - started)
    return statistics.median(timings)


def test_a_slow_shadow_does_not_slow_the_caller(routed: RunningGateway, dataset: np.ndarray) -> None:
    """Behaviour, not a benchmark: each shadow call takes 60 ms more than the champion's, so a
    shadow on the caller's path would add at least that to the median; the bound allows 5 ms."""
    payload = body(dataset[:1])
    set_routing(routed, weights={"1": 100})
    without = _median_latency(routed, payload, 150)
    compared_before = metric(routed, "mlgate_shadow_requests_total", version=SLOW, outcome="compared")
    set_routing(routed, weights={"1": 100}, shadows={SLOW: 100})
    with_shadow = _median_latency(routed, payload, 150)
    assert with_shadow < without + 0.005, f"median {with_shadow * 1e3:.2f} ms with the slow shadow vs " \
                                          f"{without * 1e3:.2f} ms without"
    compared = wait_for_metric(routed, "mlgate_shadow_requests_total", compared_before + 151,
                               version=SLOW, outcome="compared")
    assert compared - compared_before == 151, "the shadow did not answer every mirrored request"
    seconds = metric(routed, "mlgate_shadow_seconds_total", version=SLOW)
    champion_seconds = metric(routed, "mlgate_shadow_champion_seconds_total", version=SLOW)
    assert seconds / champion_seconds > 2, "the latency ratio does not show the shadow's 60 ms"


def test_a_failing_shadow_causes_no_caller_errors(routed: RunningGateway, dataset: np.ndarray) -> None:
    set_routing(routed, weights={"1": 100}, shadows={FAILING: 100})
    failed_before = metric(routed, "mlgate_shadow_requests_total", version=FAILING, outcome="failed")
    results = fire(routed, [(body(dataset[i:i + 1]), {}) for i in range(200)])
    assert versions_of(results) == {"1": 200}
    assert all("fallback" not in doc["parameters"] for _, doc in results)
    failed = wait_for_metric(routed, "mlgate_shadow_requests_total", failed_before + 200,
                             version=FAILING, outcome="failed")
    assert failed - failed_before == 200


def test_shadow_agreement_matches_the_known_disagreement(routed: RunningGateway, dataset: np.ndarray,
                                                         reference_outputs: dict[str, dict[str, np.ndarray]]
                                                         ) -> None:
    """Version 3 was trained on partly flipped labels; ONNX Runtime run here on the same rows says
    exactly which rows it disagrees on, and the gateway's counters must say the same."""
    set_routing(routed, weights={"1": 100}, shadows={"3": 100})

    rows_before = metric(routed, "mlgate_shadow_compared_rows_total", version="3")
    agreeing_before = metric(routed, "mlgate_shadow_agreeing_rows_total", version="3")
    diff_before = metric(routed, "mlgate_shadow_abs_diff_total", version="3")
    results = fire(routed, [(body(dataset[i:i + 1]), {}) for i in range(len(dataset))], connections=8)
    assert versions_of(results) == {"1": len(dataset)}
    rows = wait_for_metric(routed, "mlgate_shadow_compared_rows_total", rows_before + len(dataset), version="3")
    assert rows - rows_before == len(dataset)
    champion, shadow = reference_outputs["1"], reference_outputs["3"]
    expected_agreeing = int(np.count_nonzero(champion["label"] == shadow["label"]))
    assert 0 < expected_agreeing < len(dataset)  # the test means something only if they disagree somewhere
    agreeing = metric(routed, "mlgate_shadow_agreeing_rows_total", version="3") - agreeing_before
    assert agreeing == expected_agreeing
    expected_diff = float(np.abs(champion["probabilities"] - shadow["probabilities"]).mean(axis=1).sum())
    diff = metric(routed, "mlgate_shadow_abs_diff_total", version="3") - diff_before
    assert diff == pytest.approx(expected_diff, rel=1e-4)


# --------------------------------------------------------------------------- propagation and restart


def test_a_change_by_another_process_applies_within_a_second(routed: RunningGateway,
                                                             dataset: np.ndarray) -> None:
    doc = set_routing(routed, weights={"1": 100})
    state = StateStore(Path(routed.log_path.parent / "state.db"))
    try:
        written = time.monotonic()
        state.replace_routing(MODEL, {"champion": "1", "weights": {"2": 100}}, doc["revision"], "other-gateway",
                              "written by another process")
        with httpx.Client(base_url=f"http://{routed.http_url}", timeout=10) as client:
            while client.post(INFER, content=body(dataset[:1])).json()["model_version"] != "2":
                assert time.monotonic() - written < 1.0, "the change did not arrive within a second"
                time.sleep(0.02)
    finally:
        state.close()
