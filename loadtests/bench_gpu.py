"""GPU batching benchmark: the gateway on ONNX Runtime's CUDA provider against ONNX Runtime's own offline peak.

Usage (on a machine with an NVIDIA GPU and onnxruntime-gpu)::

    python -m loadtests.bench_gpu --models models --out loadtests/results/bench_gpu.md \\
        [--slo-ms 20] [--rows 1,1024,16384] [--workers 4,8]

One call builds, checks and times everything that issue 3's GPU target needs:

1. **Environment.** GPU name and driver (``nvidia-smi``) and ONNX Runtime's providers. Without
   ``CUDAExecutionProvider`` the script stops with exit status 2; ``--allow-cpu`` runs the same steps
   on the CPU as a dry run of the script itself (its figures then say nothing about a GPU).
2. **Offline peak.** The heavy model in this process on the CUDA provider, for each batch size, in
   rows per second:

   - ``run``: ``session.run`` from host numpy arrays to host numpy arrays (what an offline user does);
   - ``iobinding``: the replica's own path (``serving.deployment.io_binding_runner``);
   - ``resident``: inputs already on the GPU and outputs left there, no copies -- the compute
     ceiling, shown for reference only.

   It also times single calls made 5 ms apart, as an idle server makes them, beside the back-to-back
   figure.

   The offline peak is the best of ``run`` and ``iobinding`` over batch sizes: a served model must
   also get its rows from host memory and back. The CUDA answers are checked against the CPU
   provider's.
3. **The gateway.** ``mlgate serve`` with the heavy model on ``device: cuda``, the adaptive batcher
   with the SLO as its latency objective, the manifest's row bound raised to the offline best
   batch size (so the batcher may form the batches that ORT likes best), and ``--replica-cpus``
   as the replica's ``num_cpus``: ONNX Runtime's threads for the nodes CUDA has no kernel for (the
   wide model's scaler and casts), which with 2 threads took twice the offline time on an H100.
   Checked before timing:
   model metadata says ``device: cuda``, ``mlgate_model_device_info{device="cuda"}`` is 1, and the
   gateway's answer for 64 rows equals the offline CUDA answer.
4. **Load.** For each rows-per-request R, an open-loop Poisson ramp (from 500 req/s or
   ``--start-fraction`` of the offline peak, whichever is less, each rate ``--growth`` times the last;
   each point long enough for ``--min-requests``) until, at ``--misses`` rates in a row, p99 misses
   the SLO or the gateway answers less than 80% of what is offered, driven by several
   generator processes whose latencies are merged before the percentiles are taken. Requests carry
   binary tensors both ways (as tritonclient sends them). Throughput at the SLO is the best goodput
   (rows answered within the SLO per second) over the rates whose p99 met the SLO; its ratio to the
   offline peak is the target (at least 0.8 at p99 <= 20 ms). A ramp, not a closed loop, finds the
   top: a closed loop resends every 429 at once, a retry storm that measures the refusal path.
   Each point also gives the gateway's mean batch size, its mean round trip per batch, its mean
   queue wait (from its own histograms), the way its batches went and its batchers' refusals by
   reason.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import onnxruntime as ort
import orjson
import yaml

from loadtests.bench_batching import settle
from loadtests.bench_oip import environment_lines, mlgate_command
from loadtests.bench_routing import metric_sum, scrape
from loadtests.loadgen import LoadConfig, run_load_sync_keeping_latencies
from loadtests.payloads import json_body, load_rows
from loadtests.procs import free_port, http_request, running, wait_ready
from serving.batch_inputs import Arrays
from serving.deployment import io_binding_runner
from serving.device import CPU, CUDA
from serving.transports import TRANSPORTS
from telemetry.metrics import REJECTION_REASONS

MODEL = "breast-cancer-wide"
PACED = "run, 5 ms apart"


@dataclass(frozen=True)
class OfflinePoint:
    """Rows per second of one way of running the model at one batch size."""

    path: str
    batch_rows: int
    rows_per_s: float
    ms_per_batch: float


@dataclass(frozen=True)
class LoadPoint:
    """One load level against the gateway, merged over the generator processes."""

    workers: int
    rows_per_request: int
    offered_rps: float
    ok_rps: float
    goodput_rows_per_s: float
    p50_ms: float
    p99_ms: float
    refused: int
    failed: int
    rows_per_batch: float
    round_trip_ms: float
    """Mean time from sending a batch to the replica to having its outputs (the gateway's histogram)."""
    queue_wait_ms: float
    client_cpu_pct: float
    transports: str
    """The ways the point's batches reached the replica, as shares (``mlgate_batch_transport_total``)."""
    refusals: str
    """The batchers' refusals by reason (``mlgate_batcher_rejections_total``), e.g. ``objective 12``."""

    @property
    def kept_up(self) -> bool:
        """Whether the gateway answered at least 80% of what was offered (refusals at low load do not end a
        ramp: they are the admission control's to answer for, and the table shows them)."""
        return self.ok_rps >= 0.8 * self.offered_rps


# ----------------------------------------------------------------------------------------------------------------
# Offline peak


def tiled_rows(batch_rows: int) -> np.ndarray:
    """``batch_rows`` real rows (the dataset repeated), FP32 as the model takes them."""
    data = load_rows().astype(np.float32)
    return np.ascontiguousarray(np.resize(data, (batch_rows, data.shape[1])))


def session(model_file: Path, providers: list[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(model_file), sess_options=options, providers=providers)


def rows_per_second(run: Callable[[], object], batch_rows: int, min_s: float) -> tuple[float, float]:
    """(rows/s, ms per batch) of ``run`` over at least ``min_s`` seconds and 5 calls, after 5 untimed calls."""
    for _ in range(5):
        run()
    calls, t0 = 0, time.perf_counter()
    while True:
        run()
        calls += 1
        elapsed = time.perf_counter() - t0
        if calls >= 5 and elapsed >= min_s:
            return batch_rows * calls / elapsed, 1e3 * elapsed / calls


def resident_runner(sess: ort.InferenceSession, inputs: Arrays, device: str) -> Callable[[], object]:
    """Run with inputs already on ``device`` and outputs left there: no host copies at all."""
    binding = sess.io_binding()
    for name, array in inputs.items():
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(array, device, 0))
    for out in sess.get_outputs():
        binding.bind_output(out.name, device)

    def run() -> None:
        sess.run_with_iobinding(binding)

    return run


def cuda_works(model_file: Path) -> bool:
    """Whether a session really gets the CUDA provider: onnxruntime-gpu offers it even where no GPU or CUDA
    library is found, and then silently falls back to the CPU."""
    if CUDA not in ort.get_available_providers():
        return False
    return bool(session(model_file, [CUDA, CPU]).get_providers()[0] == CUDA)


def paced_ms(run: Callable[[], object], calls: int = 100, gap_s: float = 0.005) -> float:
    """Median time of one call when calls come ``gap_s`` apart (an idle server), after 5 untimed calls."""
    for _ in range(5):
        run()
    times = []
    for _ in range(calls):
        time.sleep(gap_s)
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def offline_sweep(model_file: Path, device: str, batch_sizes: list[int], min_s: float) -> list[OfflinePoint]:
    """Every (path, batch size) in rows/s, after checking the device's answers against the CPU provider's."""
    providers = [CUDA, CPU] if device == "cuda" else [CPU]
    sess = session(model_file, providers)
    if device == "cuda" and sess.get_providers()[0] != CUDA:
        raise SystemExit(f"error: ONNX Runtime did not give the session CUDA (providers {sess.get_providers()})")
    input_name = sess.get_inputs()[0].name
    output_names = [o.name for o in sess.get_outputs()]
    check_against_cpu(sess, session(model_file, [CPU]), input_name, output_names)
    bound = io_binding_runner(sess, output_names, device, force=True)
    assert bound is not None
    points = []
    for batch_rows in batch_sizes:
        inputs = {input_name: tiled_rows(batch_rows)}
        paths: dict[str, Callable[[], object]] = {
            "run": partial(sess.run, output_names, inputs),
            "iobinding": partial(bound, inputs),
            "resident": resident_runner(sess, inputs, device),
        }
        for path, run in paths.items():
            rate, ms = rows_per_second(run, batch_rows, min_s)
            points.append(OfflinePoint(path, batch_rows, rate, ms))
            print(f"  offline {path:9s} batch {batch_rows:6d}: {rate:12,.0f} rows/s, {ms:8.3f} ms/batch",
                  file=sys.stderr, flush=True)
        if batch_rows in (1, 1024):
            ms = paced_ms(paths["run"])
            points.append(OfflinePoint(PACED, batch_rows, batch_rows * 1e3 / ms, ms))
    return points


def check_against_cpu(sess: ort.InferenceSession, cpu: ort.InferenceSession, input_name: str,
                      output_names: list[str]) -> None:
    """The device's answers for 569 real rows equal the CPU provider's (labels exactly, probabilities to 1e-4)."""
    feed = {input_name: load_rows().astype(np.float32)}
    got = dict(zip(output_names, sess.run(output_names, feed), strict=True))
    want = dict(zip(output_names, cpu.run(output_names, feed), strict=True))
    for name in output_names:
        if got[name].dtype.kind == "f":
            np.testing.assert_allclose(got[name], want[name], rtol=0, atol=1e-4, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def offline_peak(points: list[OfflinePoint]) -> OfflinePoint:
    """The best host-to-host point (``run`` or ``iobinding``): the figure the gateway is held to."""
    return max((p for p in points if p.path in ("run", "iobinding")), key=lambda p: p.rows_per_s)


# ----------------------------------------------------------------------------------------------------------------
# The gateway


def build_repository(models: Path, target: Path, max_batch_rows: int, names: tuple[str, ...] = (MODEL,)) -> None:
    """A copy of version 1 of the ``names``d demo models (the heavy one by default) whose manifests let batches, and
    requests, grow to ``max_batch_rows``."""
    shutil.rmtree(target, ignore_errors=True)  # a --workdir kept from an earlier run
    for name in names:
        source = models / name / "1"
        if not (source / "model.onnx").is_file():
            raise SystemExit(f"error: {source}/model.onnx not found; build the demo repository first "
                             f"(`make models` or `mlgate models build-demo {models}`)")
        copy = target / name / "1"
        shutil.copytree(source, copy)
        manifest = json.loads((copy / "manifest.json").read_text(encoding="utf-8"))
        manifest["max_batch_rows"] = max_batch_rows
        (copy / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")


def write_config(path: Path, repository: Path, http_port: int, workers: int, device: str, slo_ms: float,
                 max_batch_rows: int, replica_cpus: int) -> None:
    config = {
        "server": {"host": "127.0.0.1", "http_port": http_port, "grpc_port": free_port(), "workers": workers},
        "repository": str(repository),
        "models": {MODEL: {
            "versions": ["1"],
            "batching": {"latency_objective_ms": slo_ms, "max_batch_rows": max_batch_rows,
                         "max_queue_rows": max(65536, 8 * max_batch_rows)},
            "deployment": {"device": device, "num_cpus": replica_cpus},
        }},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def check_gateway(port: int, device: str, reference: Callable[[np.ndarray], Arrays]) -> list[str]:
    """What the gateway says about its device, and that its answer equals the offline one; RuntimeError if not."""
    status, body = http_request(port, "GET", f"/v2/models/{MODEL}")
    if status != 200:
        raise RuntimeError(f"error: model metadata answered {status}: {body[:200]!r}")
    said = orjson.loads(body).get("parameters", {}).get("device")
    if said != device:
        raise RuntimeError(f"error: model metadata says device {said!r}, expected {device!r}")
    on_device = metric_sum(scrape(port), "mlgate_model_device_info", model=MODEL, device=device)
    if on_device < 1:
        raise RuntimeError(f'error: mlgate_model_device_info{{device="{device}"}} is {on_device}, expected >= 1')
    rows = load_rows()[:64]
    status, body = http_request(port, "POST", f"/v2/models/{MODEL}/infer", json_body(rows).body,
                                {"Content-Type": "application/json"})
    if status != 200:
        raise RuntimeError(f"error: inference answered {status}: {body[:200]!r}")
    outputs = {o["name"]: np.asarray(o["data"]).reshape(o["shape"]) for o in orjson.loads(body)["outputs"]}
    want = reference(rows.astype(np.float32))
    np.testing.assert_allclose(outputs["probabilities"], want["probabilities"], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(outputs["label"], want["label"])
    return [f"model metadata: device `{said}`", f'`mlgate_model_device_info{{device="{device}"}}` = {on_device:g}',
            "64 rows through the gateway: the same probabilities (to 1e-5) and labels as ONNX Runtime offline"]


# ----------------------------------------------------------------------------------------------------------------
# Load, from several generator processes


@dataclass(frozen=True)
class Reading:
    """The model's counters in the gateway at one moment, from one scrape of ``/metrics``."""

    batches: float
    rows: float
    round_trip: tuple[float, float]
    """(sum, count) of the batch round-trip histogram."""
    queue_wait: tuple[float, float]
    """(sum, count) of the queue-wait histogram."""
    transports: dict[str, float]
    """Batches so far by the way they reached the replica."""
    refusals: dict[str, float]
    """The batchers' refusals so far by reason."""


def read_counters(port: int) -> Reading:
    samples = scrape(port)

    def total(name: str, **labels: str) -> float:
        return metric_sum(samples, name, model=MODEL, **labels)

    return Reading(
        batches=total("mlgate_batch_rows_count"), rows=total("mlgate_batch_rows_sum"),
        round_trip=(total("mlgate_batch_execution_seconds_sum"), total("mlgate_batch_execution_seconds_count")),
        queue_wait=(total("mlgate_queue_wait_seconds_sum"), total("mlgate_queue_wait_seconds_count")),
        transports={t: total("mlgate_batch_transport_total", transport=t) for t in TRANSPORTS},
        refusals={r: total("mlgate_batcher_rejections_total", reason=r) for r in REJECTION_REASONS})


def transport_shares(before: dict[str, float], after: dict[str, float]) -> str:
    """``way share`` for each way some batches took between two readings, e.g. ``shared_direct 100%``."""
    took = {t: after[t] - before[t] for t in after}
    total = sum(took.values())
    return ", ".join(f"{t} {n / total:.0%}" for t, n in took.items() if n) if total else "-"


def _mean_ms(before: tuple[float, float], after: tuple[float, float]) -> float:
    count = after[1] - before[1]
    return 1e3 * (after[0] - before[0]) / count if count else float("nan")


def drive(pool: ProcessPoolExecutor, parts: int, base: LoadConfig, port: int, workers: int) -> LoadPoint:
    """One load level split evenly over ``parts`` generator processes; latencies merged before percentiles."""
    configs = [replace(base, rate=base.rate / parts, connections=max(1, base.connections // parts), seed=base.seed + i)
               for i in range(parts)]
    before = read_counters(port)
    results = list(pool.map(run_load_sync_keeping_latencies, configs))
    after = read_counters(port)
    settle(port, mlgate=True)
    reports = [r for r, _ in results]
    latencies = np.concatenate([lat for _, lat in results])
    errors: dict[str, int] = {}
    for r in reports:
        for kind, n in r.errors.items():
            errors[kind] = errors.get(kind, 0) + n
    refused = errors.pop("http_429", 0)
    within = int(np.count_nonzero(latencies <= (base.slo_ms or 0.0) * 1e6))
    p50, p99 = (np.percentile(latencies, [50, 99]) / 1e6) if latencies.size else (np.nan, np.nan)
    batches = after.batches - before.batches
    return LoadPoint(
        workers=workers, rows_per_request=base.rows,
        offered_rps=sum(r.offered_rate or 0.0 for r in reports), ok_rps=sum(r.throughput for r in reports),
        goodput_rows_per_s=within * base.rows / base.duration_s, p50_ms=float(p50), p99_ms=float(p99),
        refused=refused, failed=sum(errors.values()),
        rows_per_batch=(after.rows - before.rows) / batches if batches else float("nan"),
        round_trip_ms=_mean_ms(before.round_trip, after.round_trip),
        queue_wait_ms=_mean_ms(before.queue_wait, after.queue_wait),
        client_cpu_pct=float(np.mean([r.client_cpu_percent for r in reports])),
        transports=transport_shares(before.transports, after.transports),
        refusals=", ".join(f"{r} {after.refusals[r] - before.refusals[r]:g}" for r in REJECTION_REASONS
                           if after.refusals[r] > before.refusals[r]) or "-")


def ramp(pool: ProcessPoolExecutor, parts: int, port: int, workers: int, rows: int, peak_rows_per_s: float,
         args: argparse.Namespace) -> list[LoadPoint]:
    """Open-loop rates growing by ``args.growth`` until p99 misses the SLO or the gateway falls behind at
    ``args.misses`` rates in a row.

    A point lasts long enough for ``args.min_requests`` requests (up to three times ``args.duration``): at
    8 req/s, 3 s give 24 latencies, whose p99 is their maximum, and one slow request ended the ramp there."""
    base = LoadConfig(url=f"http://127.0.0.1:{port}", model=MODEL, mode="open", rows=rows, payload="binary",
                      binary_outputs=True, duration_s=args.duration, warmup_s=args.warmup, timeout_s=5.0, quiet=True,
                      slo_ms=args.slo_ms, connections=256 * parts,
                      rate=max(2.0, min(args.start_rps, args.start_fraction * peak_rows_per_s / rows)))
    points: list[LoadPoint] = []
    missed = 0
    while len(points) < args.max_steps and base.rate * rows <= 1.5 * peak_rows_per_s:
        duration = min(3 * args.duration, max(args.duration, args.min_requests / base.rate))
        point = drive(pool, parts, replace(base, duration_s=duration), port, workers)
        _show(point)
        points.append(point)
        missed = missed + 1 if point.p99_ms > args.slo_ms or not point.kept_up else 0
        if missed >= args.misses:
            break
        base = replace(base, rate=base.rate * args.growth)
    return points


def _show(p: LoadPoint) -> None:
    print(f"  workers {p.workers} rows {p.rows_per_request:5d} offered {p.offered_rps:8.0f}/s ok {p.ok_rps:8.0f}/s "
          f"good {p.goodput_rows_per_s:12,.0f} rows/s p50 {p.p50_ms:7.2f} p99 {p.p99_ms:7.2f} refused {p.refused} "
          f"failed {p.failed} rows/batch {p.rows_per_batch:8.1f} round trip {p.round_trip_ms:6.2f} ms queue "
          f"{p.queue_wait_ms:6.2f} ms client cpu {p.client_cpu_pct:3.0f}% ({p.transports}; refused: {p.refusals})",
          file=sys.stderr, flush=True)


def run_gateway(args: argparse.Namespace, work: Path, workers: int, device: str, peak: OfflinePoint,
                reference: Callable[[np.ndarray], Arrays]) -> tuple[list[str], list[LoadPoint]]:
    repository = work / f"repository-{workers}"
    build_repository(args.models, repository, peak.batch_rows)
    port = free_port()
    config = work / f"mlgate-{workers}.yaml"
    write_config(config, repository, port, workers, device, args.slo_ms, peak.batch_rows, args.replica_cpus)
    command = mlgate_command(config)
    if command is None:
        raise SystemExit("error: no mlgate CLI in this environment")
    parts = args.generators
    points: list[LoadPoint] = []
    with running("mlgate", command, work / f"mlgate-{workers}.log") as server, \
            ProcessPoolExecutor(parts, mp_context=get_context("spawn")) as pool:
        startup = wait_ready(server, port, f"/v2/models/{MODEL}/infer", json_body(load_rows()[:1]).body, 600.0,
                             "/v2/health/ready")
        print(f"--- mlgate, {workers} worker(s), ready after {startup:.0f} s", file=sys.stderr, flush=True)
        checks = check_gateway(port, device, reference)
        for rows in args.rows:
            points += ramp(pool, parts, port, workers, rows, peak.rows_per_s, args)
        fixed = metric_sum(scrape(port), "mlgate_latency_model_fixed_seconds", model=MODEL)
        checks.append(f"latency model at the end: {1e3 * fixed:.2f} ms fixed cost per batch (the largest over "
                      "worker processes)")
    return checks, points


def at_slo(points: list[LoadPoint], slo_ms: float) -> LoadPoint | None:
    """The point with the best goodput among those whose p99 met the SLO."""
    met = [p for p in points if p.p99_ms <= slo_ms]
    return max(met, key=lambda p: p.goodput_rows_per_s, default=None)


# ----------------------------------------------------------------------------------------------------------------
# Report


def gpu_lines() -> list[str]:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        return [f"- GPU: none found ({exc.__class__.__name__})"]
    return [f"- GPU: {line}" for line in out.splitlines()]


def render(args: argparse.Namespace, argv: list[str], device: str, offline: list[OfflinePoint],
           checks: dict[int, list[str]], points: list[LoadPoint]) -> str:
    peak = offline_peak(offline)
    lines = ["# GPU batching: the gateway against ONNX Runtime's offline peak", "",
             environment_lines(argv, "loadtests.bench_gpu"), *gpu_lines(),
             f"- ONNX Runtime providers: {', '.join(ort.get_available_providers())}; model ran on **{device}**",
             f"- model: {MODEL}; SLO p99 <= {args.slo_ms:g} ms; {args.duration:g} s measured after {args.warmup:g} s "
             f"warm-up per point (longer for {args.min_requests} requests); {args.generators} load generator "
             f"processes, binary tensor payloads; the replica has num_cpus {args.replica_cpus}", "",
             "## Offline, ONNX Runtime alone (rows/s)", "",
             "| batch rows | run (host in/out) | IOBinding (the replica's path) | resident on device (no copies) |",
             "|---:|---:|---:|---:|"]
    by_key = {(p.path, p.batch_rows): p for p in offline}
    for batch in sorted({p.batch_rows for p in offline}):
        cells = [f"{by_key[(path, batch)].rows_per_s:,.0f}" for path in ("run", "iobinding", "resident")]
        lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    paced = [f"batch {p.batch_rows}: {p.ms_per_batch:.3f} ms "
             f"(back to back: {by_key[('run', p.batch_rows)].ms_per_batch:.3f})" for p in offline if p.path == PACED]
    lines += ["", f"Offline peak (host to host): **{peak.rows_per_s:,.0f} rows/s** ({peak.path}, batch "
              f"{peak.batch_rows}, {peak.ms_per_batch:.3f} ms per batch).", ""]
    if paced:
        lines += [f"One `run` call when calls come 5 ms apart, median: {'; '.join(paced)}.", ""]
    for workers, said in checks.items():
        lines += [f"## Gateway, {workers} worker process(es)", "", *[f"- {line}" for line in said], "",
                  "| rows/request | offered req/s | ok req/s | goodput rows/s | p50 ms | p99 ms | refused | failed "
                  "| rows/batch | round trip ms | queue wait ms | client CPU | batches went | batchers refused |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
        mine = [p for p in points if p.workers == workers]
        for p in mine:
            lines.append(f"| {p.rows_per_request} | {p.offered_rps:,.0f} | {p.ok_rps:,.0f} "
                         f"| {p.goodput_rows_per_s:,.0f} | {p.p50_ms:.2f} | {p.p99_ms:.2f} | {p.refused} "
                         f"| {p.failed} | {p.rows_per_batch:.1f} | {p.round_trip_ms:.2f} | {p.queue_wait_ms:.2f} "
                         f"| {p.client_cpu_pct:.0f}% | {p.transports} | {p.refusals} |")
        lines.append("")
        for rows in args.rows:
            best = at_slo([p for p in mine if p.rows_per_request == rows], args.slo_ms)
            if best is None:
                lines.append(f"- {rows} row(s) per request: p99 met {args.slo_ms:g} ms at no load level.")
            else:
                lines.append(f"- {rows} row(s) per request: **{best.goodput_rows_per_s:,.0f} rows/s** within the "
                             f"SLO (p99 {best.p99_ms:.2f} ms), **{best.goodput_rows_per_s / peak.rows_per_s:.3f}x** "
                             f"the offline peak.")
        lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(prog="python -m loadtests.bench_gpu", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=Path("models"), help="demo model repository")
    p.add_argument("--out", type=Path, default=None, help="write the markdown report here (and .json beside it)")
    p.add_argument("--slo-ms", type=float, default=20.0)
    p.add_argument("--rows", type=ints, default=[1, 1024, 16384], help="rows per request, one ramp each")
    p.add_argument("--workers", type=ints, default=[4, 8], help="gateway processes, one gateway run each")
    p.add_argument("--batch-sizes", type=ints, default=[1, 16, 64, 256, 1024, 4096, 16384, 65536])
    p.add_argument("--offline-s", type=float, default=1.0, help="seconds timed per offline (path, batch size)")
    p.add_argument("--start-rps", type=float, default=500.0,
                   help="first rate of each ramp, req/s (lower where that would exceed --start-fraction)")
    p.add_argument("--start-fraction", type=float, default=0.01,
                   help="the first rate of a ramp offers at most this share of the offline peak's rows/s")
    p.add_argument("--growth", type=float, default=1.5, help="each rate of a ramp over the last")
    p.add_argument("--max-steps", type=int, default=14, help="most rates per ramp")
    p.add_argument("--duration", type=float, default=3.0, help="measured seconds per point (at least)")
    p.add_argument("--min-requests", type=int, default=200,
                   help="a point lasts until this many requests were offered, up to 3x --duration")
    p.add_argument("--misses", type=int, default=2, help="a ramp ends after this many rates in a row miss the SLO")
    p.add_argument("--replica-cpus", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                   help="the replica's num_cpus, which are ONNX Runtime's threads for the model's nodes that run on "
                        "the CPU (the wide model's scaler and casts); the offline session uses every core")
    p.add_argument("--warmup", type=float, default=1.0, help="discarded seconds per point")
    p.add_argument("--generators", type=int, default=max(1, min(4, (os.cpu_count() or 1) // 4)),
                   help="load generator processes")
    p.add_argument("--workdir", type=Path, default=None,
                   help="keep configs and gateway logs here (default: a temporary folder, removed)")
    p.add_argument("--allow-cpu", action="store_true", help="dry run on the CPU when no CUDA provider is offered")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    model_file = args.models / MODEL / "1" / "model.onnx"
    if cuda_works(model_file):
        device = "cuda"
    elif args.allow_cpu:
        device = "cpu"
    else:
        print(f"error: ONNX Runtime cannot run {model_file} on {CUDA} (offered: {ort.get_available_providers()}); "
              "run this on a machine with an NVIDIA GPU and onnxruntime-gpu, or pass --allow-cpu for a dry run",
              file=sys.stderr)
        return 2
    offline = offline_sweep(model_file, device, args.batch_sizes, args.offline_s)
    peak = offline_peak(offline)
    print(f"--- offline peak {peak.rows_per_s:,.0f} rows/s at batch {peak.batch_rows} ({peak.path})",
          file=sys.stderr, flush=True)
    reference_session = session(model_file, [CUDA, CPU] if device == "cuda" else [CPU])
    reference_outputs = [o.name for o in reference_session.get_outputs()]

    def reference(rows: np.ndarray) -> Arrays:
        outputs = reference_session.run(reference_outputs, {reference_session.get_inputs()[0].name: rows})
        return dict(zip(reference_outputs, outputs, strict=True))

    checks: dict[int, list[str]] = {}
    points: list[LoadPoint] = []
    with tempfile.TemporaryDirectory(prefix="mlgate-bench-gpu-") as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for workers in args.workers:
            try:
                checks[workers], mine = run_gateway(args, work, workers, device, peak, reference)
            except Exception as exc:  # one gateway run failing must not lose the figures already measured
                print(f"--- mlgate with {workers} worker(s) failed: {exc!r}", file=sys.stderr, flush=True)
                checks[workers], mine = [f"**failed**: {exc!r} (its log: mlgate-{workers}.log)"], []
            points += mine
    report = render(args, argv, device, offline, checks, points)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n", encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(
            {"offline": [asdict(p) for p in offline], "gateway": [asdict(p) for p in points]}, indent=1),
            encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
