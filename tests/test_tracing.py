"""OpenTelemetry tracing of inference requests.

Most tests catch spans with an in-memory exporter on the real request path —
``OipHttpApp`` driven over ASGI, the gRPC servicer in a real ``grpc.aio``
server, ``InferenceService``, routing, real ``Batcher``s and the shadow mirror
— with an in-process numpy function standing in for the Ray deployment (as in
test_batcher.py), so each span can be checked against what the request did.
The last ones run ``mlgate serve`` (Ray, ONNX Runtime) exporting over OTLP/HTTP
to a receiver in this test.
"""

from __future__ import annotations

import asyncio
import gzip
import secrets
import threading
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import orjson
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from gateway.batcher import Batcher, BatchPolicy
from gateway.grpc_server import build_grpc_server
from gateway.http_app import OipHttpApp
from gateway.proto import grpc_service_pb2 as pb
from gateway.proto import grpc_service_pb2_grpc as pb_grpc
from gateway.registry import ModelRegistry, ServedVersion
from gateway.service import InferenceService
from gateway.shadows import ShadowMirror
from routing.live import LiveRouting
from routing.store import StateStore, StoredRouting
from serving.batch_inputs import Arrays, Parts, joined
from serving.manifest import Manifest, TensorSpec
from telemetry.metrics import BatchMetrics
from telemetry.tracing import REQUEST_SPAN, Tracing, build_tracing
from tests.conftest import RunningGateway, free_port, start_gateway, stop_gateway

MODEL = "traced"
INFER = f"/v2/models/{MODEL}/infer"
MANIFEST = Manifest(
    name=MODEL, version="1", sha256="0" * 64,
    inputs=(TensorSpec(name="x", datatype="FP32", shape=(-1, 3)),),
    outputs=(TensorSpec(name="y", datatype="FP32", shape=(-1, 3)),),
)


class Deployment:
    """Stands in for the Ray deployment: doubles its input after ``delay_s``, or fails (``failing``)."""

    def __init__(self, delay_s: float = 0.005, failing: bool = False) -> None:
        self.delay_s = delay_s
        self.failing = failing

    async def __call__(self, parts: Parts) -> Arrays:
        await asyncio.sleep(self.delay_s)
        if self.failing:
            raise RuntimeError("replica died")
        return {"y": joined(parts)["x"] * 2}


@pytest.fixture
def exporter() -> InMemorySpanExporter:
    return InMemorySpanExporter()


def make_tracing(exporter: InMemorySpanExporter, ratio: float = 0.0) -> Tracing:
    tracing = build_tracing(True, "http://127.0.0.1:9/v1/traces", {}, ratio, "mlgate-test", exporter)
    assert tracing is not None
    return tracing


def make_service(tracing: Tracing | None, deployment: Deployment, versions: Sequence[str] = ("1",),
                 live: LiveRouting | None = None, failing: Deployment | None = None,
                 manifest: Manifest = MANIFEST, metrics: bool = False) -> InferenceService:
    """Versions of one model, the first the champion; ``failing`` serves the last version instead, if given;
    ``metrics``: the batchers count into the process's metrics registry."""
    registry = ModelRegistry()
    for version in versions:
        entry = ServedVersion(MODEL, version, manifest.model_copy(update={"version": version}))
        registry.add(entry)
        execute = failing if failing is not None and version == versions[-1] else deployment
        batcher = Batcher(entry.label, execute, BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=1),
                          metrics=BatchMetrics.for_deployment(MODEL, version) if metrics else None,
                          tracing=tracing.batches(MODEL, version) if tracing is not None else None)
        entry.mark_ready(batcher, "cpu")
    registry.champions[MODEL] = versions[0]
    service = InferenceService(registry, "test", live, shadows=ShadowMirror(), request_metrics=False,
                               tracing=tracing)
    service.started = True
    return service


def traceparent(sampled: bool = True) -> tuple[str, str, str]:
    """A caller's W3C traceparent header, with its trace id and span id."""
    trace_id, span_id = secrets.token_hex(16), secrets.token_hex(8)
    return f"00-{trace_id}-{span_id}-{'01' if sampled else '00'}", trace_id, span_id


def body(rows: int = 1, start: float = 0.0) -> bytes:
    data = np.arange(start, start + rows * 3, dtype=np.float32).reshape(rows, 3)
    return orjson.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [rows, 3],
                                     "data": data.reshape(-1).tolist()}]})


async def post(app: OipHttpApp, path: str, payload: bytes, headers: dict[str, str] | None = None,
               extra_scope: dict[str, Any] | None = None) -> tuple[int, dict[str, str], Any]:
    """One request through the ASGI app, as uvicorn would deliver it: (status, headers, JSON body)."""
    scope = {"type": "http", "method": "POST", "path": path,
             "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()], **(extra_scope or {})}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": payload, "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start, end = sent
    response_headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], response_headers, orjson.loads(end["body"])


def spans_of(exporter: InMemorySpanExporter, trace_id: str) -> list[ReadableSpan]:
    return [s for s in exporter.get_finished_spans() if format(s.context.trace_id, "032x") == trace_id]


def by_name(spans: Sequence[ReadableSpan]) -> dict[str, ReadableSpan]:
    named = {s.name: s for s in spans}
    assert len(named) == len(spans), [s.name for s in spans]
    return named


def attribute(span: ReadableSpan, key: str) -> Any:
    assert span.attributes is not None
    return span.attributes[key]


def interval(span: ReadableSpan) -> tuple[int, int]:
    assert span.start_time is not None and span.end_time is not None
    return span.start_time, span.end_time


def run(coroutine_function: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(coroutine_function())


# --------------------------------------------------------------------------- HTTP


def test_a_traceparent_is_continued_and_every_step_is_a_child_of_the_request_span(
        exporter: InMemorySpanExporter) -> None:
    service = make_service(make_tracing(exporter), Deployment())
    header, trace_id, caller_span = traceparent()

    status, headers, answer = run(lambda: post(OipHttpApp(service, 1 << 20), INFER, body(2),
                                               {"traceparent": header, "tracestate": "vendor=1"}))

    assert status == 200, answer
    assert headers["x-mlgate-trace-id"] == trace_id
    spans = by_name(spans_of(exporter, trace_id))
    assert set(spans) == {REQUEST_SPAN["http"], "route", "decode", "queue_wait", "execute", "encode"}
    root = spans[REQUEST_SPAN["http"]]
    assert root.kind is SpanKind.SERVER
    assert root.parent is not None and root.parent.is_remote
    assert format(root.parent.span_id, "016x") == caller_span
    assert root.context.trace_state.get("vendor") == "1"
    assert dict(root.attributes or {}) == {
        "http.request.method": "POST", "http.response.status_code": 200, "mlgate.model": MODEL,
        "mlgate.protocol": "http", "mlgate.status": 200, "mlgate.version": "1", "mlgate.variant": "champion",
        "mlgate.rows": 2,
    }
    for name in ("route", "decode", "queue_wait", "execute", "encode"):
        span = spans[name]
        assert span.parent is not None and span.parent.span_id == root.context.span_id, name
        assert interval(root)[0] <= interval(span)[0] <= interval(span)[1] <= interval(root)[1], name
    assert interval(spans["queue_wait"])[1] == interval(spans["execute"])[0]


def test_the_batch_span_is_linked_to_every_request_of_its_batch(exporter: InMemorySpanExporter) -> None:
    """One slot: the first request leaves alone, the others queue behind it and leave together."""
    service = make_service(make_tracing(exporter), Deployment(delay_s=0.02))
    app = OipHttpApp(service, 1 << 20)
    callers = [traceparent() for _ in range(6)]

    async def main() -> list[tuple[int, dict[str, str], Any]]:
        return await asyncio.gather(*(post(app, INFER, body(1, float(i)), {"traceparent": header})
                                      for i, (header, _, _) in enumerate(callers)))

    responses = run(main)

    batches = [s for s in exporter.get_finished_spans() if s.name == "batch"]
    assert sorted(attribute(b, "mlgate.batch.requests") for b in batches) == [1, 5]
    linked: dict[int, ReadableSpan] = {}
    for batch in batches:
        assert batch.kind is SpanKind.CLIENT and batch.parent is None
        assert attribute(batch, "mlgate.model") == MODEL
        assert len(batch.links) == attribute(batch, "mlgate.batch.requests") == attribute(batch, "mlgate.batch.rows")
        for link in batch.links:
            linked[link.context.span_id] = batch
    for (status, headers, _), (_, trace_id, _) in zip(responses, callers, strict=True):
        assert status == 200 and headers["x-mlgate-trace-id"] == trace_id
        spans = by_name(spans_of(exporter, trace_id))
        batch = linked[spans[REQUEST_SPAN["http"]].context.span_id]  # the batch links to this request's span ...
        execute_links = [link.context for link in spans["execute"].links]
        assert execute_links == [batch.context]  # ... and the request's execute span links back to it


def test_an_unsampled_traceparent_records_nothing_but_its_trace_id_comes_back(
        exporter: InMemorySpanExporter) -> None:
    service = make_service(make_tracing(exporter, ratio=1.0), Deployment())
    header, trace_id, _ = traceparent(sampled=False)

    status, headers, _ = run(lambda: post(OipHttpApp(service, 1 << 20), INFER, body(), {"traceparent": header}))

    assert status == 200
    assert headers["x-mlgate-trace-id"] == trace_id  # the caller's: continued, not replaced
    assert exporter.get_finished_spans() == ()  # not even a batch span: nothing in it was recorded


def test_without_a_traceparent_the_sampling_ratio_decides(exporter: InMemorySpanExporter) -> None:
    app = OipHttpApp(make_service(make_tracing(exporter, ratio=0.0), Deployment()), 1 << 20)
    _, headers, _ = run(lambda: post(app, INFER, body()))
    assert len(headers["x-mlgate-trace-id"]) == 32
    assert exporter.get_finished_spans() == ()

    app = OipHttpApp(make_service(make_tracing(exporter, ratio=1.0), Deployment()), 1 << 20)
    _, headers, _ = run(lambda: post(app, INFER, body()))
    root = by_name(spans_of(exporter, headers["x-mlgate-trace-id"]))[REQUEST_SPAN["http"]]
    assert root.parent is None  # a trace of its own


def test_with_tracing_off_no_header_is_added() -> None:
    service = make_service(None, Deployment())
    header, _, _ = traceparent()
    status, headers, _ = run(lambda: post(OipHttpApp(service, 1 << 20), INFER, body(), {"traceparent": header}))
    assert status == 200
    assert "x-mlgate-trace-id" not in headers


def test_a_refused_request_has_a_failed_span_and_still_gets_its_trace_id(exporter: InMemorySpanExporter) -> None:
    app = OipHttpApp(make_service(make_tracing(exporter), Deployment()), 1 << 20)
    header, trace_id, _ = traceparent()

    status, headers, answer = run(lambda: post(app, INFER, b'{"inputs": [', {"traceparent": header}))

    assert status == 400 and "not valid JSON" in answer["error"]
    assert headers["x-mlgate-trace-id"] == trace_id
    spans = by_name(spans_of(exporter, trace_id))
    assert set(spans) == {REQUEST_SPAN["http"], "route", "decode"}
    root, decode = spans[REQUEST_SPAN["http"]], spans["decode"]
    assert root.status.status_code is StatusCode.ERROR and "not valid JSON" in (root.status.description or "")
    assert attribute(root, "http.response.status_code") == 400
    assert decode.status.status_code is StatusCode.ERROR


def test_a_failed_batch_marks_the_batch_and_each_request_failed(exporter: InMemorySpanExporter) -> None:
    app = OipHttpApp(make_service(make_tracing(exporter), Deployment(failing=True)), 1 << 20)
    header, trace_id, _ = traceparent()

    status, _, _ = run(lambda: post(app, INFER, body(), {"traceparent": header}))

    assert status == 503
    spans = by_name(spans_of(exporter, trace_id))
    assert spans["execute"].status.status_code is StatusCode.ERROR
    assert spans[REQUEST_SPAN["http"]].status.status_code is StatusCode.ERROR
    batch = next(s for s in exporter.get_finished_spans() if s.name == "batch")
    assert batch.status.status_code is StatusCode.ERROR and "failed to execute" in (batch.status.description or "")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    state = StateStore(tmp_path / "state.db")
    yield state
    state.close()


def test_a_shadow_call_is_a_child_of_the_request_with_its_own_queue_and_execute_spans(
        exporter: InMemorySpanExporter, store: StateStore) -> None:
    live = LiveRouting(store)
    live.install(StoredRouting(MODEL, 1, {"champion": "1", "shadows": {"2": 100}}, "2026-01-01T00:00:00Z", "test"))
    service = make_service(make_tracing(exporter), Deployment(), versions=("1", "2"), live=live)
    header, trace_id, _ = traceparent()

    async def main() -> int:
        status, _, _ = await post(OipHttpApp(service, 1 << 20), INFER, body(), {"traceparent": header})
        await service.shadows.drain()
        return status

    assert run(main) == 200
    spans = spans_of(exporter, trace_id)
    root = next(s for s in spans if s.name == REQUEST_SPAN["http"])
    shadow = next(s for s in spans if s.name == "shadow 2")
    assert shadow.parent is not None and shadow.parent.span_id == root.context.span_id
    assert attribute(shadow, "mlgate.shadow.agreeing_rows") == 1
    under_shadow = sorted(s.name for s in spans if s.parent is not None and s.parent.span_id == shadow.context.span_id)
    assert under_shadow == ["execute", "queue_wait"]
    batch_versions = sorted(attribute(s, "mlgate.version") for s in exporter.get_finished_spans() if s.name == "batch")
    assert batch_versions == ["1", "2"]


def test_a_fallback_shows_as_an_event_and_in_the_request_span(exporter: InMemorySpanExporter,
                                                              store: StateStore) -> None:
    live = LiveRouting(store)
    live.install(StoredRouting(MODEL, 1, {"champion": "1", "weights": {"1": 0, "2": 100}}, "2026-01-01T00:00:00Z",
                               "test"))
    service = make_service(make_tracing(exporter), Deployment(), versions=("1", "2"), live=live,
                           failing=Deployment(failing=True))
    header, trace_id, _ = traceparent()

    status, headers, _ = run(lambda: post(OipHttpApp(service, 1 << 20), INFER, body(), {"traceparent": header}))

    assert (status, headers["x-mlgate-fallback"]) == (200, "champion")
    spans = spans_of(exporter, trace_id)
    root = next(s for s in spans if s.name == REQUEST_SPAN["http"])
    assert (attribute(root, "mlgate.version"), attribute(root, "mlgate.fallback")) == ("1", "champion")
    assert [(e.name, dict(e.attributes or {})) for e in root.events] == [
        ("fallback", {"mlgate.fallback.from": "2", "mlgate.fallback.reason": "error"})]
    executions = sorted(s.status.status_code.name for s in spans if s.name == "execute")
    assert executions == ["ERROR", "UNSET"]  # the challenger's batch failed, the champion's answered


def test_tracing_off_builds_nothing() -> None:
    assert build_tracing(False, "http://127.0.0.1:4318/v1/traces", {}, 1.0, "mlgate") is None


# --------------------------------------------------------------------------- gRPC


def test_grpc_continues_the_traceparent_from_metadata_and_returns_the_trace_id(
        exporter: InMemorySpanExporter) -> None:
    service = make_service(make_tracing(exporter), Deployment())
    header, trace_id, caller_span = traceparent()
    request = pb.ModelInferRequest(model_name=MODEL)
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    request.raw_input_contents.append(np.ones((1, 3), dtype="<f4").tobytes())

    async def main() -> tuple[pb.ModelInferResponse, Any]:
        server, port = build_grpc_server(service, "127.0.0.1", 0, 1 << 20)
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                call = pb_grpc.GRPCInferenceServiceStub(channel).ModelInfer(  # type: ignore[no-untyped-call]
                    request, metadata=(("traceparent", header),))
                return await call, await call.initial_metadata()
        finally:
            await server.stop(0)

    response, metadata = run(main)

    assert response.model_version == "1"
    assert dict(metadata)["x-mlgate-trace-id"] == trace_id
    spans = by_name(spans_of(exporter, trace_id))
    assert set(spans) == {REQUEST_SPAN["grpc"], "route", "decode", "queue_wait", "execute", "encode"}
    root = spans[REQUEST_SPAN["grpc"]]
    assert root.parent is not None and format(root.parent.span_id, "016x") == caller_span
    assert (attribute(root, "rpc.system"), attribute(root, "rpc.grpc.status_code")) == ("grpc", 0)


# --------------------------------------------------------------------------- the real gateway, over OTLP


@dataclass(frozen=True)
class ExportedSpan:
    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    links: tuple[str, ...]
    """Span ids of the linked spans."""
    attributes: dict[str, Any]


class OtlpReceiver:
    """An OTLP/HTTP traces endpoint (``POST /v1/traces``, protobuf) that keeps what it receives."""

    def __init__(self) -> None:
        self.spans: list[ExportedSpan] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                receiver.add(ExportTraceServiceRequest.FromString(body))
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, request: ExportTraceServiceRequest) -> None:
        spans = [
            ExportedSpan(span.name, span.trace_id.hex(), span.span_id.hex(), span.parent_span_id.hex(),
                         tuple(link.span_id.hex() for link in span.links),
                         {a.key: _value(a.value) for a in span.attributes})
            for resource in request.resource_spans for scope in resource.scope_spans for span in scope.spans
        ]
        with self._lock:
            self.spans.extend(spans)

    def wait_for(self, trace_ids: set[str], timeout_s: float = 20.0) -> list[ExportedSpan]:
        """Every span received once each trace's root span has arrived (spans go out in batches)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self._lock:
                rooted = {s.trace_id for s in self.spans if s.name in REQUEST_SPAN.values()}
                if trace_ids <= rooted:
                    return list(self.spans)
            time.sleep(0.2)
        raise AssertionError(f"no root span arrived for {sorted(trace_ids - rooted)}")

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _value(value: Any) -> Any:
    """The Python value of an OTLP ``AnyValue`` (whichever of its fields is set)."""
    field = value.WhichOneof("value")
    assert field is not None
    return getattr(value, field)


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    running = OtlpReceiver()
    yield running
    running.close()


@pytest.fixture(scope="module")
def traced_gateway(demo_repository: Path, receiver: OtlpReceiver,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningGateway]:
    """One version of one model; tracing on, recording only what callers ask for (ratio 0)."""
    workdir = tmp_path_factory.mktemp("traced")
    http_port, grpc_port = free_port(), free_port()
    config = f"""
server: {{host: 127.0.0.1, http_port: {http_port}, grpc_port: {grpc_port}}}
ray: {{num_cpus: 2}}
repository: {demo_repository}
state: {{path: {workdir / "state.db"}}}
models:
  breast-cancer: {{versions: ["1"]}}
  breast-cancer-wide: {{versions: []}}
telemetry:
  tracing: {{enabled: true, endpoint: "{receiver.url}", sampling_ratio: 0.0, service_name: mlgate-e2e}}
"""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OTEL_BSP_SCHEDULE_DELAY", "200")  # export every 200 ms rather than every 5 s
        running = start_gateway(config, workdir, http_port, grpc_port, demo_repository)
    yield running
    code = stop_gateway(running)
    assert code == 0, f"mlgate did not shut down cleanly (exit {code}):\n{running.log_tail()}"


E2E_BODY = {"inputs": [{"name": "features", "datatype": "FP32", "shape": [1, 30], "data": [0.5] * 30}]}


def test_the_real_gateway_exports_request_and_batch_spans_over_otlp(
        traced_gateway: RunningGateway, receiver: OtlpReceiver) -> None:
    callers = [traceparent() for _ in range(16)]

    def infer(header: str) -> httpx.Response:
        with httpx.Client(base_url=f"http://{traced_gateway.http_url}", timeout=30) as client:
            return client.post("/v2/models/breast-cancer/infer", json=E2E_BODY, headers={"traceparent": header})

    with ThreadPoolExecutor(len(callers)) as pool:
        responses = list(pool.map(infer, [header for header, _, _ in callers]))
    untraced = httpx.post(f"http://{traced_gateway.http_url}/v2/models/breast-cancer/infer", json=E2E_BODY)

    for response, (_, trace_id, _) in zip(responses, callers, strict=True):
        assert response.status_code == 200, response.text
        assert response.headers["x-mlgate-trace-id"] == trace_id
    assert len(untraced.headers["x-mlgate-trace-id"]) == 32  # a trace id, although ratio 0 records nothing
    spans = receiver.wait_for({trace_id for _, trace_id, _ in callers})
    assert untraced.headers["x-mlgate-trace-id"] not in {s.trace_id for s in spans}
    linked = {link for s in spans if s.name == "batch" for link in s.links}
    for _, trace_id, caller_span in callers:
        mine = [s for s in spans if s.trace_id == trace_id]
        root = next(s for s in mine if s.name == REQUEST_SPAN["http"])
        assert root.parent_span_id == caller_span
        assert (root.attributes["mlgate.version"], root.attributes["http.response.status_code"]) == ("1", 200)
        children = sorted(s.name for s in mine if s.parent_span_id == root.span_id)
        assert children == ["decode", "encode", "execute", "queue_wait", "route"]
        assert root.span_id in linked  # its batch's span links to it
    assert all(s.links for s in spans if s.name == "batch")  # batches of untraced requests are not recorded


def test_the_real_gateway_continues_a_grpc_traceparent(traced_gateway: RunningGateway,
                                                       receiver: OtlpReceiver) -> None:
    header, trace_id, caller_span = traceparent()
    request = pb.ModelInferRequest(model_name="breast-cancer")
    request.inputs.add(name="features", datatype="FP32", shape=[1, 30])
    request.raw_input_contents.append(np.full((1, 30), 0.5, dtype="<f4").tobytes())

    with grpc.insecure_channel(traced_gateway.grpc_url) as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)  # type: ignore[no-untyped-call]
        response, call = stub.ModelInfer.with_call(request, metadata=(("traceparent", header),))

    assert response.model_version == "1"
    assert dict(call.initial_metadata())["x-mlgate-trace-id"] == trace_id
    spans = [s for s in receiver.wait_for({trace_id}) if s.trace_id == trace_id]
    root = next(s for s in spans if s.name == REQUEST_SPAN["grpc"])
    assert root.parent_span_id == caller_span
    assert (root.attributes["rpc.system"], root.attributes["rpc.grpc.status_code"]) == ("grpc", 0)


def test_new_traces_are_sampled_at_the_ratio_under_the_id_they_report(exporter: InMemorySpanExporter) -> None:
    """The ratio is decided before any span exists (the cheap path); the spans recorded must still carry the
    trace id the response reports, and about ``ratio`` of new traces must be recorded."""
    tracing = make_tracing(exporter, ratio=0.25)
    ids = []
    for _ in range(4000):
        trace_id, request = tracing.start_request(MODEL, "http", lambda name: None)
        if request is not None:
            request.finish(200, "1", "champion", None)
            ids.append(trace_id)
    recorded = [format(span.context.trace_id, "032x") for span in exporter.get_finished_spans()]
    assert recorded == ids
    assert abs(len(ids) - 1000) < 4 * (4000 * 0.25 * 0.75) ** 0.5, len(ids)
    assert len(set(ids)) == len(ids)
