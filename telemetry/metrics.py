"""The gateway's Prometheus metrics: one registry, served at ``/metrics``, catalogued in docs/metrics.md.

Names follow Prometheus conventions (base units, ``_total`` for counters) and
carry only bounded labels: ``model`` and ``version`` come from the repository
(a request for an unknown model is counted under ``model=""``), ``variant``,
``protocol``, ``status`` and ``reason`` from fixed sets. Buckets span what
this gateway actually sees: 100 µs to 10 s for requests, 1 to 1024 for rows.
``python -m telemetry.catalogue`` writes docs/metrics.md from this registry,
so the catalogue cannot drift from the code.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

from serving.transports import TRANSPORTS, Transport
from telemetry.drift import PSI_ACT, PSI_WARN, DriftReport

disable_created_metrics()  # type: ignore[no-untyped-call]  # no *_created series: twice the series for a timestamp nobody graphs
REGISTRY = CollectorRegistry(auto_describe=True)

SECONDS_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
REQUEST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25,
                   0.5, 1.0, 2.5, 5.0, 10.0)
"""Request latency: dense between 1 and 100 ms, where latency objectives sit (each bound can be an SLO threshold)."""
REJECTION_REASONS = ("objective", "deadline", "queue_full", "expired")

_labels = ("model", "version")
BATCH_ROWS = Histogram("mlgate_batch_rows", "Rows per executed batch.", _labels,
                       buckets=ROWS_BUCKETS, registry=REGISTRY)
BATCH_EXECUTION = Histogram("mlgate_batch_execution_seconds",
                            "Time from sending a batch to the deployment to having its outputs (the Ray round trip).",
                            _labels, buckets=SECONDS_BUCKETS, registry=REGISTRY)
QUEUE_WAIT = Histogram("mlgate_queue_wait_seconds", "Time a request waited in the batcher before its batch left.",
                       _labels, buckets=SECONDS_BUCKETS, registry=REGISTRY)
REJECTIONS = Counter("mlgate_batcher_rejections_total",
                     "Requests refused by the batcher: objective (429: at the admission limit for the latency "
                     "objective), deadline (429: cannot finish within its own timeout), queue_full (429), "
                     "expired (504: own deadline passed before the answer could be sent).", (*_labels, "reason"),
                     registry=REGISTRY)
BATCH_TRANSPORT = Counter("mlgate_batch_transport_total",
                          "Batches executed, by the way they reached the replica: direct (a Unix socket to a replica "
                          "on the gateway's node), shared_direct (shared memory, its layout over that socket), "
                          "shared_ray (shared memory, its layout through Ray), by_value (a Ray Serve call), "
                          "by_reference (Ray's object store). Batches through Ray for a version whose replicas share "
                          "the gateway's node mean its direct channel failed or is off: each costs the gateway about "
                          "ten times the CPU.", (*_labels, "transport"), registry=REGISTRY)
QUEUED_ROWS = Gauge("mlgate_queued_rows", "Rows waiting in the batcher.", _labels, multiprocess_mode="livesum",
                    registry=REGISTRY)
ADMISSION_LIMIT = Gauge("mlgate_admission_limit_rows",
                        "Rows a deployment with a latency objective may hold (queued + executing) before it refuses.",
                        _labels, multiprocess_mode="livesum", registry=REGISTRY)
MODEL_DEVICE = Gauge("mlgate_model_device_info",
                     "Gateway processes whose ready version runs on each device (label device: cpu or cuda): 1 with "
                     "one process, summed over processes with server.workers.",
                     (*_labels, "device"), multiprocess_mode="livesum", registry=REGISTRY)
MODEL_FIXED = Gauge("mlgate_latency_model_fixed_seconds", "Latency model: fixed cost per batch (the largest over "
                    "gateway processes, each of which learns its own).", _labels,
                    multiprocess_mode="livemax", registry=REGISTRY)
MODEL_PER_ROW = Gauge("mlgate_latency_model_per_row_seconds", "Latency model: cost per row (the largest over gateway "
                      "processes).", _labels,
                      multiprocess_mode="livemax", registry=REGISTRY)

LOOP_LAG = Gauge("mlgate_event_loop_lag_seconds",
                 "How late the gateway process's event loop runs a timer (smoothed): high when the process is busy "
                 "or short of CPU; the largest over processes.", multiprocess_mode="livemax", registry=REGISTRY)
HOLD_PRESSURE = Gauge("mlgate_batch_hold_pressure_ratio",
                      "Share of its hold budget an adaptive batcher may hold a partial batch for, because the event "
                      "loop runs late (0 = work-conserving); the largest over processes.",
                      multiprocess_mode="livemax", registry=REGISTRY)

LOOP_BUSY = Gauge("mlgate_event_loop_busy_ratio",
                  "Share of a core the gateway process's event-loop thread spends on the CPU (smoothed): near 1 "
                  "when the process's own work is the bottleneck; the largest over processes.",
                  multiprocess_mode="livemax", registry=REGISTRY)

BODY_BYTES = Gauge("mlgate_request_body_bytes",
                   "Bytes of HTTP request bodies and gRPC messages the gateway holds now, summed over processes: a "
                   "request that would take its process past server.max_inflight_body_bytes is refused (429, gRPC "
                   "RESOURCE_EXHAUSTED) before it is read.", multiprocess_mode="livesum", registry=REGISTRY)
BODY_LIMIT = Gauge("mlgate_request_body_limit_bytes",
                   "server.max_inflight_body_bytes (or its default), summed over gateway processes: what "
                   "mlgate_request_body_bytes may reach.", multiprocess_mode="livesum", registry=REGISTRY)


def track_body_budget(read_held: Callable[[], float], limit: int) -> None:
    """The request bytes this process holds (``gateway.body_budget``) and its limit."""
    sample(BODY_BYTES, read_held)
    sample(BODY_LIMIT, lambda: float(limit))


def track_loop_load(read_lag_s: Callable[[], float], read_pressure: Callable[[], float],
                    read_busy: Callable[[], float]) -> None:
    """The event loop of this process (one per process: ``gateway.loop_load``)."""
    sample(LOOP_LAG, read_lag_s)
    sample(HOLD_PRESSURE, read_pressure)
    sample(LOOP_BUSY, read_busy)


@dataclass(frozen=True)
class BatchMetrics:
    """The batching metrics of one deployment, with their label values bound once (not per request)."""

    batch_rows: Histogram
    batch_execution: Histogram
    queue_wait: Histogram
    queued_rows: Gauge
    model_fixed: Gauge
    model_per_row: Gauge
    rejections: dict[str, Counter]
    labels: dict[str, str]

    @classmethod
    def for_deployment(cls, model: str, version: str) -> BatchMetrics:
        labels = {"model": model, "version": version}
        return cls(
            batch_rows=BATCH_ROWS.labels(**labels),
            batch_execution=BATCH_EXECUTION.labels(**labels),
            queue_wait=QUEUE_WAIT.labels(**labels),
            queued_rows=QUEUED_ROWS.labels(**labels),
            model_fixed=MODEL_FIXED.labels(**labels),
            model_per_row=MODEL_PER_ROW.labels(**labels),
            rejections={reason: REJECTIONS.labels(**labels, reason=reason) for reason in REJECTION_REASONS},
            labels=labels,
        )

    def track_queued_rows(self, read_rows: Callable[[], float]) -> None:
        sample(self.queued_rows, read_rows)

    def track_admission_limit(self, read_rows: Callable[[], float]) -> None:
        """Only deployments with a latency objective have an admission limit."""
        sample(ADMISSION_LIMIT.labels(**self.labels), read_rows)


def transport_counter(model: str, version: str) -> Callable[[Transport], None]:
    """What counts one version's batches by transport (``RayServeBackend.wait_ready``'s ``took``); every
    transport's series exists from the start, at 0, so that a rate over it is 0 rather than absent."""
    children = {transport: BATCH_TRANSPORT.labels(model=model, version=version, transport=transport)
                for transport in TRANSPORTS}
    return lambda transport: children[transport].inc()


def record_device(model: str, version: str, device: str) -> None:
    """Say which device a version runs on, once it is ready (metadata says it too)."""
    MODEL_DEVICE.labels(model=model, version=version, device=device).set(1)


# --------------------------------------------------------------------------- one scrape for all processes

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
"""Set (before prometheus_client is imported) when the gateway runs as several processes (``server.workers``):
every process then keeps its samples in files there, and any process's ``/metrics`` reports them all —
counters and histograms summed, gauges by the ``multiprocess_mode`` each declares (``live*``: processes
that exited are left out)."""

_sampled: list[tuple[Gauge, Callable[[], float]]] = []


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_ENV) or None


def sample(child: Gauge, read: Callable[[], float]) -> None:
    """A gauge whose value lives in the code (a queue's length): nothing to do per change on the hot path.

    One process: read at scrape time. Several: ``set_function`` values never reach the shared files, so
    each process copies them there once a second (``refresh_sampled``) and before serving a scrape."""
    if multiprocess_dir() is None:
        child.set_function(read)
    else:
        _sampled.append((child, read))


def forget_process(pid: int) -> None:
    """A gateway process exited: its ``live*`` gauges leave the merged view (its counts stay: they happened)."""
    if multiprocess_dir() is not None:
        mark_process_dead(pid)  # type: ignore[no-untyped-call]


def refresh_sampled() -> None:
    for child, read in _sampled:
        child.set(read())


class _MergedProcesses:
    """Every process's samples (``MultiProcessCollector``), with the help texts it drops put back."""

    def __init__(self, path: str) -> None:
        self._merged = MultiProcessCollector(None, path)  # type: ignore[no-untyped-call]
        # prometheus_client keeps names and help texts as (stable) private attributes
        self._help = {str(metric._name): str(metric._documentation) for metric in _metric_objects()}

    def collect(self) -> Iterator[Metric]:
        for family in self._merged.collect():  # type: ignore[no-untyped-call]
            if family.name in self._help:  # only ours: a library's own metrics may land in the folder too
                family.documentation = self._help[family.name]
                yield family


_merged_registry: CollectorRegistry | None = None


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric (of every gateway process), and its content type."""
    global _merged_registry
    path = multiprocess_dir()
    if path is None:
        return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
    refresh_sampled()
    if _merged_registry is None:
        _merged_registry = CollectorRegistry()
        _merged_registry.register(_MergedProcesses(path))
    return generate_latest(_merged_registry), CONTENT_TYPE_LATEST


def _metric_objects() -> list[MetricWrapperBase]:
    """Every metric defined in this module (the catalogue and the merged view's help texts read them)."""
    return [value for value in globals().values() if isinstance(value, MetricWrapperBase)]


# --------------------------------------------------------------------------- requests, models, build

_request_labels = ("model", "version", "variant", "protocol", "status")
REQUESTS = Counter("mlgate_requests", "Inference requests answered, by the version and variant that answered "
                   "(empty when the request failed before a version was chosen), protocol (http, grpc) and status "
                   "(the HTTP status; gRPC errors count under their HTTP equivalent, 499 = client went away).",
                   _request_labels, registry=REGISTRY)
REQUEST_DURATION = Histogram("mlgate_request_duration_seconds",
                             "Time from a request's arrival (headers read) to its answer being ready to send.",
                             _request_labels, buckets=REQUEST_BUCKETS, registry=REGISTRY)
MODEL_STATE = Gauge("mlgate_model_state", "Gateway processes in which a model version is in each state (loading, "
                    "ready, unavailable): 1 or 0 with one process, summed over processes with server.workers.",
                    (*_labels, "state"), multiprocess_mode="livesum", registry=REGISTRY)
BUILD_INFO = Gauge("mlgate_build_info", "Always 1; the labels say which mlgate and Python run.",
                   ("version", "python"), multiprocess_mode="livemax", registry=REGISTRY)


class RequestMetrics:
    """Counts and times inference requests; label children are bound once per label set, not per request."""

    __slots__ = ("_children", "_known_models")

    def __init__(self, known_models: Callable[[str], bool]) -> None:
        self._children: dict[tuple[str, str, str, str, int], tuple[Counter, Histogram]] = {}
        self._known_models = known_models

    def observe(self, model: str, version: str, variant: str, protocol: str, status: int, seconds: float) -> None:
        key = (model, version, variant, protocol, status)
        children = self._children.get(key)
        if children is None:
            if not self._known_models(model):  # a name from the URL: never let it become a label value
                model = ""
            labels = (model, version, variant, protocol, str(status))
            children = (REQUESTS.labels(*labels), REQUEST_DURATION.labels(*labels))
            if model:
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)


def record_model_state(model: str, version: str, state: str, states: Iterable[str]) -> None:
    """``states``: every state a version can be in, so all but one read 0."""
    for name in states:
        MODEL_STATE.labels(model=model, version=version, state=name).set(1.0 if name == state else 0.0)


def record_build(version: str) -> None:
    BUILD_INFO.labels(version=version, python=platform.python_version()).set(1)


# --------------------------------------------------------------------------- routing, fallback, shadows

FALLBACKS = Counter("mlgate_fallbacks_total",
                    "Requests routed to a challenger that were answered by the champion (to=champion) or by the "
                    "static default response (to=default) instead; reason: error, deadline, overloaded, not_ready.",
                    ("model", "version", "reason", "to"), registry=REGISTRY)
ROUTING_WEIGHT = Gauge("mlgate_routing_weight_ratio",
                       "Share of a model's unpinned traffic each version gets by the current split (0-1).",
                       _labels, multiprocess_mode="livemostrecent", registry=REGISTRY)
ROUTING_CHAMPION = Gauge("mlgate_routing_champion", "1 for each model's champion version, 0 for its other versions.",
                         _labels, multiprocess_mode="livemostrecent", registry=REGISTRY)
ROUTING_SHADOW = Gauge("mlgate_routing_shadow_ratio", "Share of the champion's traffic mirrored to each shadow (0-1).",
                       _labels, multiprocess_mode="livemostrecent", registry=REGISTRY)
ROUTING_REVISION = Gauge("mlgate_routing_revision", "Revision of each model's routing this gateway applies.",
                         ("model",), multiprocess_mode="livemax", registry=REGISTRY)
SHADOW_REQUESTS = Counter("mlgate_shadow_requests_total",
                          "Requests mirrored to a shadow version, by outcome: compared (answered and compared with "
                          "the champion), failed (the shadow errored), dropped (too many shadow requests in flight).",
                          (*_labels, "outcome"), registry=REGISTRY)
SHADOW_ROWS = Counter("mlgate_shadow_compared_rows_total", "Rows a shadow answered and that were compared.",
                      _labels, registry=REGISTRY)
SHADOW_AGREEING_ROWS = Counter("mlgate_shadow_agreeing_rows_total",
                               "Compared rows whose integer outputs (labels) equal the champion's.",
                               _labels, registry=REGISTRY)
SHADOW_ABS_DIFF = Counter("mlgate_shadow_abs_diff",
                          "Sum over compared rows of the mean absolute difference between the shadow's and the "
                          "champion's float outputs (probabilities); divide by compared rows for the mean.",
                          _labels, registry=REGISTRY)
SHADOW_SECONDS = Counter("mlgate_shadow_seconds", "Summed answer time of compared shadow requests.",
                         _labels, registry=REGISTRY)
SHADOW_CHAMPION_SECONDS = Counter("mlgate_shadow_champion_seconds",
                                  "Summed answer time of the champion on the same requests; the latency ratio is "
                                  "mlgate_shadow_seconds_total / this.", _labels, registry=REGISTRY)


@dataclass(frozen=True)
class ShadowMetrics:
    """One shadow version's comparison counters, labels bound once."""

    compared: Counter
    failed: Counter
    dropped: Counter
    rows: Counter
    agreeing_rows: Counter
    abs_diff: Counter
    seconds: Counter
    champion_seconds: Counter

    @classmethod
    def for_version(cls, model: str, version: str) -> ShadowMetrics:
        labels = {"model": model, "version": version}
        return cls(
            compared=SHADOW_REQUESTS.labels(**labels, outcome="compared"),
            failed=SHADOW_REQUESTS.labels(**labels, outcome="failed"),
            dropped=SHADOW_REQUESTS.labels(**labels, outcome="dropped"),
            rows=SHADOW_ROWS.labels(**labels),
            agreeing_rows=SHADOW_AGREEING_ROWS.labels(**labels),
            abs_diff=SHADOW_ABS_DIFF.labels(**labels),
            seconds=SHADOW_SECONDS.labels(**labels),
            champion_seconds=SHADOW_CHAMPION_SECONDS.labels(**labels),
        )


def record_fallback(model: str, version: str, reason: str, to: str) -> None:
    FALLBACKS.labels(model=model, version=version, reason=reason, to=to).inc()


def record_routing(model: str, revision: int, champion: str, shares: dict[str, float], shadows: dict[str, float],
                   versions: list[str]) -> None:
    """Export a model's routing after every change; versions outside the split or the shadows read 0."""
    ROUTING_REVISION.labels(model=model).set(revision)
    for version in versions:
        ROUTING_WEIGHT.labels(model=model, version=version).set(shares.get(version, 0.0))
        ROUTING_CHAMPION.labels(model=model, version=version).set(1.0 if version == champion else 0.0)
        ROUTING_SHADOW.labels(model=model, version=version).set(shadows.get(version, 0.0))


# --------------------------------------------------------------------------- drift and rollouts

_drift = "Over the last drift window, merged across gateway processes (every process exports the same value: " \
         "aggregate with max, not sum)."
DRIFT_FEATURE_PSI = Gauge("mlgate_drift_feature_psi",
                          f"PSI of one input feature's live distribution against the version's training reference. "
                          f"{_drift}", (*_labels, "feature"), multiprocess_mode="livemax", registry=REGISTRY)
DRIFT_MAX_PSI = Gauge("mlgate_drift_max_psi", f"Largest per-feature PSI of a version. {_drift}", _labels,
                      multiprocess_mode="livemax", registry=REGISTRY)
DRIFT_FEATURES_OVER = Gauge("mlgate_drift_features_over_threshold",
                            f"Features whose PSI exceeds the level (warn: {PSI_WARN}, act: {PSI_ACT}). {_drift}",
                            (*_labels, "level"), multiprocess_mode="livemax", registry=REGISTRY)
DRIFT_PREDICTION = Gauge("mlgate_drift_prediction_divergence",
                         "Largest per-class Jensen-Shannon divergence (base 2, 0-1) between a version's predicted "
                         f"class probabilities and the champion's. {_drift}", _labels, multiprocess_mode="livemax",
                         registry=REGISTRY)
DRIFT_AGREEMENT = Gauge("mlgate_drift_agreement_ratio",
                        f"Share of compared rows whose labels equal the champion's (mirrored requests). {_drift}",
                        _labels, multiprocess_mode="livemax", registry=REGISTRY)
DRIFT_ROWS = Gauge("mlgate_drift_window_rows", f"Input rows a version saw in the drift window. {_drift}", _labels,
                   multiprocess_mode="livemax", registry=REGISTRY)


def record_drift(report: DriftReport) -> None:
    labels = {"model": report.model, "version": report.version}
    DRIFT_ROWS.labels(**labels).set(report.rows)
    for feature in report.features:
        DRIFT_FEATURE_PSI.labels(**labels, feature=feature.name).set(feature.psi)
    DRIFT_MAX_PSI.labels(**labels).set(_or_nan(report.max_psi))
    DRIFT_FEATURES_OVER.labels(**labels, level="warn").set(report.over(PSI_WARN))
    DRIFT_FEATURES_OVER.labels(**labels, level="act").set(report.over(PSI_ACT))
    DRIFT_PREDICTION.labels(**labels).set(_or_nan(report.prediction_divergence))
    DRIFT_AGREEMENT.labels(**labels).set(_or_nan(report.agreement))


def _or_nan(value: float | None) -> float:
    return value if value is not None else float("nan")


ROLLOUT_STATE = Gauge("mlgate_rollout_state", "1 for the state each model's latest rollout is in, 0 for the others.",
                      ("model", "challenger", "state"), multiprocess_mode="livemostrecent", registry=REGISTRY)
ROLLOUT_PERCENT = Gauge("mlgate_rollout_challenger_percent", "Live traffic percent the rollout gives its challenger.",
                        ("model", "challenger"), multiprocess_mode="livemostrecent", registry=REGISTRY)
ROLLOUT_STEP = Gauge("mlgate_rollout_step", "Index of the rollout's canary step (-1: shadow phase).",
                     ("model", "challenger"), multiprocess_mode="livemostrecent", registry=REGISTRY)
ROLLOUT_TRANSITIONS = Counter("mlgate_rollout_transitions_total",
                              "Rollout state changes this gateway's controller made, by new state.",
                              ("model", "to"), registry=REGISTRY)


def record_rollout(model: str, challenger: str, state: str, step: int, percent: int, states: Iterable[str]) -> None:
    """``states``: every state a rollout can be in (``routing.rollout.RolloutState``), so all but one read 0."""
    for name in states:
        ROLLOUT_STATE.labels(model=model, challenger=challenger, state=name).set(1.0 if name == state else 0.0)
    ROLLOUT_PERCENT.labels(model=model, challenger=challenger).set(percent)
    ROLLOUT_STEP.labels(model=model, challenger=challenger).set(step)
