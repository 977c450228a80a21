"""Side-by-side OIP benchmark: (a) mlgate vs (b) plain Ray Serve vs (c) FastAPI, one run, one machine.

Usage::

    python -m loadtests.bench_oip --models models --duration 20 --concurrency 16 \\
        --repeats 3 --out loadtests/results/bench_oip.md [--only a,b,c] [--open-rates 500,1000,2000]

Why it works this way:

* Ratios, not absolute numbers, are what transfers between machines, and
  only numbers measured in the same run on the same box are comparable -- so
  all three servers are measured here, one at a time, never overlapping.
* Each server runs in its own session and is stopped (SIGTERM, then SIGKILL
  of every process in that session) and verified gone before the next starts,
  so a lingering Ray from (a) cannot steal CPU from (b).
* The box is shared; the CPU used by *other* processes during each run is
  measured and printed next to the result, so a noisy number is visible.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shlex
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import yaml

from loadtests.loadgen import LoadConfig, run_load_sync
from loadtests.payloads import json_body, load_rows
from loadtests.procs import CpuMeter, cpu_model, free_port, running, wait_for_quiet, wait_ready
from loadtests.report import Report

MODEL = "breast-cancer"
VERSION = "1"
INFER_PATH = f"/v2/models/{MODEL}/infer"
LABELS = {
    "a": "(a) mlgate",
    "b": "(b) plain Ray Serve, defaults",
    "b2": "(b') plain Ray Serve, max_ongoing_requests=32",
    "c": "(c) FastAPI + ORT",
}
# Ray 2.60 defaults max_ongoing_requests to 5, below @serve.batch's default max_batch_size of 10, so
# (b) as written never fills a batch and waits the full 10 ms each time. (b') raises the limit so
# batches can fill: the strongest plain-Serve baseline, against which mlgate's targets are judged.
TUNED_MAX_ONGOING = 32
FOREIGN_CPU_WARN = 10.0  # % of one core used by other processes during a run worth flagging


@dataclass(frozen=True)
class ServerPlan:
    """How to start one server under test and how to know it is ready."""

    key: str
    command: list[str]
    port: int
    startup_timeout_s: float
    health_path: str | None = None


@dataclass
class RunResult:
    """One closed-loop measurement of one server, with the interference seen during it."""

    report: Report
    startup_s: float
    server_cpu_pct: float
    foreign_cpu_pct: float
    open_loop: list[Report] = field(default_factory=list)


@dataclass(frozen=True)
class BenchArgs:
    """Parsed command line."""

    models: Path
    duration: float
    warmup: float
    concurrency: int
    repeats: int
    only: list[str]
    rows: int
    payload: str
    out: Path | None
    open_rates: list[float]
    open_duration: float
    workdir: Path
    wait_quiet_s: float


def model_file(models: Path) -> Path:
    """The ONNX file all three servers serve; explain how to build it when it is missing."""
    path = models / MODEL / VERSION / "model.onnx"
    if not path.is_file():
        raise SystemExit(
            f"error: {path} not found. Build the demo model repository first:\n"
            f"    {Path(sys.executable).parent / 'mlgate'} models build-demo {models}\n"
            "(or `make models`)."
        )
    return path


def mlgate_command(config: Path) -> list[str] | None:
    """How to run `mlgate serve`: the venv's console script, else `python -m mlgate.cli`; None if neither."""
    script = Path(sys.executable).parent / "mlgate"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script), "serve", "--config", str(config)]
    if find_spec("mlgate.cli") is not None:
        return [sys.executable, "-m", "mlgate.cli", "serve", "--config", str(config)]
    return None


def write_mlgate_config(path: Path, models: Path, http_port: int, grpc_port: int) -> None:
    """Minimal mlgate config serving version 1 of the model from ``models``."""
    config = {
        "server": {"host": "127.0.0.1", "http_port": http_port, "grpc_port": grpc_port},
        "repository": str(models.resolve()),
        "models": {MODEL: {"champion": VERSION, "versions": [VERSION]}},
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def plan_server(key: str, args: BenchArgs) -> ServerPlan | None:
    """Command line and port for server ``key``; None (with a message) if it cannot run here."""
    port = free_port()
    onnx = str(model_file(args.models).resolve())
    if key == "a":
        config = args.workdir / "mlgate.yaml"
        write_mlgate_config(config, args.models, port, free_port())
        command = mlgate_command(config)
        if command is None:
            print("skipping (a): no mlgate CLI found (neither bin/mlgate nor mlgate.cli)", file=sys.stderr)
            return None
        return ServerPlan("a", command, port, startup_timeout_s=180.0, health_path="/v2/health/ready")
    if key in ("b", "b2"):
        cmd = [sys.executable, "-m", "loadtests.baselines.ray_serve_app", "--model-file", onnx,
               "--port", str(port)]
        if key == "b2":
            cmd += ["--max-ongoing-requests", str(TUNED_MAX_ONGOING)]
        return ServerPlan(key, cmd, port, startup_timeout_s=180.0)
    cmd = [sys.executable, "-m", "loadtests.baselines.fastapi_app", "--model-file", onnx, "--port", str(port)]
    return ServerPlan("c", cmd, port, startup_timeout_s=60.0)


def load_config(args: BenchArgs, port: int, **overrides: Any) -> LoadConfig:
    """The closed-loop load every server gets; open-loop runs override mode/rate/duration."""
    base = LoadConfig(
        url=f"http://127.0.0.1:{port}", model=MODEL, mode="closed", concurrency=args.concurrency,
        duration_s=args.duration, warmup_s=args.warmup, rows=args.rows,
        payload="binary" if args.payload == "binary" else "json", quiet=True,
    )
    return replace(base, **overrides)


def measure(plan: ServerPlan, args: BenchArgs, log_dir: Path, run_no: int) -> RunResult | None:
    """Start the server, wait for a real inference, load it, stop it and check it is gone."""
    label = LABELS[plan.key]
    log = log_dir / f"{plan.key}-run{run_no}.log"
    probe = json_body(load_rows()[:args.rows]).body
    print(f"--- {label}: starting ({shlex.join(plan.command)})", file=sys.stderr, flush=True)
    with running(label, plan.command, log) as server:
        try:
            startup = wait_ready(
                server, plan.port, INFER_PATH, probe, plan.startup_timeout_s, plan.health_path
            )
        except (RuntimeError, TimeoutError) as exc:
            print(f"--- {label}: FAILED to start: {exc}\n(log: {log})", file=sys.stderr, flush=True)
            return None
        print(f"--- {label}: ready after {startup:.1f} s; closed loop c={args.concurrency} "
              f"for {args.warmup:g}+{args.duration:g} s", file=sys.stderr, flush=True)
        meter = CpuMeter(server)
        report = run_load_sync(load_config(args, plan.port))
        server_cpu, foreign = meter.result()
        result = RunResult(report, startup, server_cpu, foreign)
        print(_one_line(label, result), file=sys.stderr, flush=True)
        for rate in args.open_rates:
            result.open_loop.append(run_open(args, plan.port, rate, label))
    print(f"--- {label}: stopped, no process left", file=sys.stderr, flush=True)
    return result


def run_open(args: BenchArgs, port: int, rate: float, label: str) -> Report:
    """One open-loop (Poisson) run at ``rate`` req/s against the running server."""
    cfg = load_config(
        args, port, mode="open", rate=rate, duration_s=args.open_duration, warmup_s=min(args.warmup, 3.0),
        timeout_s=5.0,
    )
    report = run_load_sync(cfg)
    lat = report.latency_ms
    print(f"    open {rate:g}/s: ok {report.throughput:.0f}/s p50 {lat.get('p50', float('nan')):.2f} ms "
          f"p99 {lat.get('p99', float('nan')):.2f} ms errors {_errors(report)}", file=sys.stderr, flush=True)
    return report


def _one_line(label: str, r: RunResult) -> str:
    lat = r.report.latency_ms
    return (
        f"--- {label}: {r.report.throughput:.0f} req/s  p50 {lat.get('p50', float('nan')):.2f} ms  "
        f"p99 {lat.get('p99', float('nan')):.2f} ms  errors {_errors(r.report)}  "
        f"(server CPU {r.server_cpu_pct:.0f}%, loadgen CPU {r.report.client_cpu_percent:.0f}%, "
        f"other processes {r.foreign_cpu_pct:.0f}% of one core)"
    )


def _errors(report: Report) -> str:
    """Error count with its breakdown by kind, e.g. ``12 (http_503=10, timeout=2)``."""
    if not report.errors:
        return "0"
    kinds = ", ".join(f"{k}={v}" for k, v in sorted(report.errors.items()))
    return f"{report.error_count} ({kinds})"


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def closed_table(results: dict[str, list[RunResult]]) -> str:
    """Markdown table of medians over repeats, with the ratios to (b) and (b')."""
    bases = [_median([r.report.throughput for r in results.get(k, [])]) for k in ("b", "b2")]
    lines = [
        "| server | req/s | p50 ms | p99 ms | errors | vs (b) | vs (b') | other CPU % |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, runs in results.items():
        if not runs:
            lines.append(f"| {LABELS[key]} | failed | | | | | | |")
            continue
        rps = _median([r.report.throughput for r in runs])
        p50 = _median([r.report.latency_ms.get("p50", float("nan")) for r in runs])
        p99 = _median([r.report.latency_ms.get("p99", float("nan")) for r in runs])
        errors = sum(r.report.error_count for r in runs)
        ratios = " | ".join(f"{rps / base:.2f}x" if base and base == base else "n/a" for base in bases)
        foreign = max(r.foreign_cpu_pct for r in runs)
        lines.append(
            f"| {LABELS[key]} | {rps:,.0f} | {p50:.2f} | {p99:.2f} | {errors} | {ratios} | {foreign:.0f} |"
        )
    return "\n".join(lines)


def per_run_lines(results: dict[str, list[RunResult]]) -> str:
    """Every individual run, so the spread behind each median is visible."""
    lines = []
    for key, runs in results.items():
        for i, r in enumerate(runs, 1):
            lines.append(f"- {_one_line(LABELS[key], r)[4:]} [run {i}, ready after {r.startup_s:.1f} s]")
    return "\n".join(lines)


def open_table(results: dict[str, list[RunResult]], rates: list[float]) -> str:
    """Markdown table: per server and rate, achieved ok/s and p50/p99 from intended send time.

    "offered" is what the Poisson schedule actually produced in the window
    (it differs from the target by sampling noise; the seed is fixed, so every
    server gets the same schedule).
    """
    lines = [
        "| server | target req/s | offered req/s | ok/s | p50 ms | p99 ms | errors |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for key, runs in results.items():
        for i, rate in enumerate(rates):
            reps = [r.open_loop[i] for r in runs if len(r.open_loop) > i]
            if not reps:
                continue
            ok = _median([r.throughput for r in reps])
            offered = _median([r.offered_rate or 0.0 for r in reps])
            p50 = _median([r.latency_ms.get("p50", float("nan")) for r in reps])
            p99 = _median([r.latency_ms.get("p99", float("nan")) for r in reps])
            errs = sum(r.error_count for r in reps)
            cells = [LABELS[key], f"{rate:,.0f}", f"{offered:,.0f}", f"{ok:,.0f}", f"{p50:.2f}", f"{p99:.2f}"]
            lines.append("| " + " | ".join([*cells, str(errs)]) + " |")
    return "\n".join(lines)


def environment_lines(argv: list[str], module: str = "loadtests.bench_oip") -> str:
    """Command line, date, CPU, cores, versions: what a reader needs to judge the numbers."""
    import numpy
    import onnxruntime
    import ray

    return "\n".join([
        f"- command: `{shlex.join([Path(sys.executable).name, '-m', module, *argv])}`",
        f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        f"- CPU: {cpu_model()}, {os.cpu_count()} cores (load generator, server and Ray share them)",
        f"- Python {platform.python_version()}, ray {ray.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, numpy {numpy.__version__}",
    ])


def render(args: BenchArgs, argv: list[str], results: dict[str, list[RunResult]]) -> str:
    """The whole markdown report."""
    parts = [
        "# OIP serving benchmark: mlgate vs plain Ray Serve vs FastAPI",
        "",
        environment_lines(argv),
        f"- load: closed loop, {args.concurrency} connections, {args.rows} row(s) per request, "
        f"{args.payload} payload, {args.warmup:g} s warm-up + {args.duration:g} s measured, "
        f"median of {args.repeats} run(s)",
        "",
        closed_table(results),
        "",
        "\"other CPU %\": CPU used by processes outside this benchmark during the run (max over runs), "
        "in % of one core; above ~10 the numbers are disturbed.",
        "",
        "Individual runs:",
        "",
        per_run_lines(results),
    ]
    if args.open_rates:
        parts += ["", "## Open loop (Poisson arrivals, latency from intended send time)", "",
                  open_table(results, args.open_rates)]
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str]) -> BenchArgs:
    """Command line -> :class:`BenchArgs`."""
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_oip", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, required=True,
                   help="model repository (built by `mlgate models build-demo DIR`)")
    p.add_argument("--duration", type=float, default=20.0)
    p.add_argument("--warmup", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--only", default="a,b,b2,c",
                   help="comma-separated subset of a (mlgate), b (Ray Serve defaults), b2 (Ray Serve, "
                        "batches can fill), c (FastAPI)")
    p.add_argument("--rows", type=int, default=1)
    p.add_argument("--payload", choices=["json", "binary"], default="json")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    p.add_argument("--open-rates", default="", help="e.g. 500,1000,2000: open-loop runs per server")
    p.add_argument("--open-duration", type=float, default=10.0)
    p.add_argument("--workdir", type=Path, default=None,
                   help="logs and generated configs (default: a new temp dir)")
    p.add_argument("--wait-quiet", type=float, default=60.0,
                   help="before each server, wait up to this many seconds for other processes to go quiet")
    ns = p.parse_args(argv)
    only = [k.strip() for k in ns.only.split(",") if k.strip()]
    if not only or any(k not in LABELS for k in only):
        p.error("--only takes a comma-separated subset of a,b,b2,c")
    if ns.repeats < 1 or ns.duration <= 0 or ns.concurrency < 1:
        p.error("--repeats and --concurrency must be >= 1, --duration > 0")
    rates = [float(r) for r in ns.open_rates.split(",") if r.strip()]
    workdir = ns.workdir or Path(tempfile.mkdtemp(prefix="bench_oip-"))
    workdir.mkdir(parents=True, exist_ok=True)
    return BenchArgs(
        models=ns.models, duration=ns.duration, warmup=ns.warmup, concurrency=ns.concurrency,
        repeats=ns.repeats, only=[k for k in LABELS if k in only], rows=ns.rows, payload=ns.payload, out=ns.out,
        open_rates=rates, open_duration=ns.open_duration, workdir=workdir, wait_quiet_s=ns.wait_quiet,
    )


def run_cycles(args: BenchArgs, measure_fn: Callable[[ServerPlan, BenchArgs, Path, int], RunResult | None]
               ) -> dict[str, list[RunResult]]:
    """Repeat the (a, b, c) cycle; servers never overlap, and each one gets a short cool-down after it."""
    results: dict[str, list[RunResult]] = {k: [] for k in args.only}
    for run_no in range(1, args.repeats + 1):
        for key in args.only:
            plan = plan_server(key, args)
            if plan is None:
                continue
            _settle(args.wait_quiet_s)
            result = measure_fn(plan, args, args.workdir, run_no)
            if result is not None:
                results[key].append(result)
            time.sleep(2.0)  # let the kernel finish tearing down the last server's sockets and memory
    return results


def _settle(max_wait_s: float) -> None:
    """Wait for the machine to be quiet (other users' jobs) before starting the next server."""
    if max_wait_s <= 0:
        return
    waited, pct = wait_for_quiet(max_wait_s, FOREIGN_CPU_WARN)
    if pct >= FOREIGN_CPU_WARN:
        print(f"--- machine still busy after {waited:.0f} s (other processes {pct:.0f}% of one core); "
              "measuring anyway, see the 'other CPU %' column", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: run the cycles, print the markdown, optionally write it to --out."""
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, so the `running` context managers stop whatever server is up.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    model_file(args.models)  # fail early with the build hint
    print(f"logs and configs in {args.workdir}", file=sys.stderr)
    try:
        results = run_cycles(args, measure)
    except KeyboardInterrupt:  # the `running` context managers have already stopped the server
        print("interrupted; the server under test was stopped", file=sys.stderr)
        return 130
    text = render(args, argv, results)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text, encoding="utf-8")
        print(f"written to {args.out}", file=sys.stderr)
    return 0 if all(results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
