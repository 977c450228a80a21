"""What request metrics and tracing cost: the same gateway with both off and with both on (sampling 1 %).

Usage::

    python -m loadtests.bench_telemetry --models models [--duration 15] [--repeats 4] [--rate 300] \\
        [--out loadtests/results/bench_telemetry.md]

The issue's target: "metrics+tracing off vs on (sampling 1%), same run: p50 within 3%". "Off" is
``telemetry.request_metrics: false`` and ``telemetry.tracing.enabled: false``; "on" counts and times
every request and traces with ``sampling_ratio: 0.01``, exporting over OTLP/HTTP to a sink this
benchmark runs (so the exporter does its real work: batching, protobuf encoding, HTTP posts). The
batching, routing and drift metrics stay on in both: they are part of the batcher, not of this switch.

Two views:

1. **In process**: ``RequestMetrics.observe`` (one counter increment and one histogram observation on
   label children bound once) and the tracing hooks of one unsampled and one sampled request, per call.
2. **End to end**: two real gateways (``loadtests.bench_drift.side_by_side``): open-loop Poisson load,
   same schedule for both in a round, ABBA order over ``--repeats`` rounds, latency from the intended send
   time, the gateway process's CPU per request.
"""

from __future__ import annotations

import argparse
import http.server
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from loadtests.bench_drift import OFF, ON, Phase, paired, side_by_side
from loadtests.bench_oip import environment_lines
from loadtests.bench_routing import _fmt, _median, workdir
from telemetry.metrics import RequestMetrics
from telemetry.tracing import build_tracing

TARGET_RATIO = 1.03
SAMPLING = 0.01


class OtlpSink(http.server.BaseHTTPRequestHandler):
    """Accepts OTLP/HTTP exports and counts them (a collector's receiving end, minus the storage)."""

    posts = 0
    bytes = 0

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length", 0))
        self.rfile.read(length)
        type(self).posts += 1
        type(self).bytes += length
        self.send_response(200)
        self.send_header("content-type", "application/x-protobuf")
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def otlp_sink() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), OtlpSink)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1/traces"
    finally:
        server.shutdown()


def per_call_ns(call: Callable[[], object], calls: int, repeats: int) -> float:
    """Median over ``repeats`` timings of ``calls`` calls, ns per call."""
    timings = []
    for _ in range(repeats):
        started = time.perf_counter_ns()
        for _ in range(calls):
            call()
        timings.append((time.perf_counter_ns() - started) / calls)
    return _median(timings)


def in_process(args: argparse.Namespace) -> list[tuple[str, float]]:
    recorder = RequestMetrics(lambda model: True)
    tracing = build_tracing(True, "http://127.0.0.1:9/v1/traces", {}, SAMPLING, "bench")
    assert tracing is not None
    unsampled_caller = f"00-{'ab' * 16}-{'cd' * 8}-00"
    rows = [
        ("RequestMetrics.observe (counter + histogram)",
         per_call_ns(lambda: recorder.observe("m", "1", "champion", "http", 200, 0.002), args.calls, 25)),
        (f"Tracing.start_request, new trace (sampling {SAMPLING:.0%}: mostly not recorded)",
         per_call_ns(lambda: tracing.start_request("m", "http", lambda name: None), args.calls, 25)),
        ("Tracing.start_request, caller's traceparent not sampled",
         per_call_ns(lambda: tracing.start_request("m", "http", lambda name: unsampled_caller if name == "traceparent"
                                                   else None), args.calls, 25)),
    ]
    tracing.shutdown()
    return rows


def variants(endpoint: str) -> dict[str, dict[str, object]]:
    return {
        OFF: {"telemetry": {"request_metrics": False, "tracing": {"enabled": False}}},
        ON: {"telemetry": {"request_metrics": True,
                           "tracing": {"enabled": True, "sampling_ratio": SAMPLING, "endpoint": endpoint}}},
    }


def render(argv: list[str], args: argparse.Namespace, calls: list[tuple[str, float]], phases: list[Phase],
           exports: tuple[int, int]) -> str:
    lines = ["# Request metrics and tracing: off vs on", "", environment_lines(argv, "loadtests.bench_telemetry"), "",
             "## In process", "", "| operation | ns per call |", "|---|---:|"]
    lines += [f"| {name} | {ns:,.0f} |" for name, ns in calls]
    if phases:
        lines += ["", "## End to end (two real gateways, Ray, ONNX Runtime)", "",
                  f"Open loop, Poisson {args.rate:g} req/s, {args.warmup:g} s warm-up + {args.duration:g} s "
                  f"measured per phase, {args.repeats} round(s) ABBA; on = request metrics + tracing at "
                  f"{SAMPLING:.0%} sampling exporting to a local OTLP/HTTP sink ({exports[0]} posts, "
                  f"{exports[1]:,} bytes received).", "",
                  "| round | telemetry | offered | ok | errors | p50 ms | p99 ms | gateway CPU µs/req |",
                  "|---:|---|---:|---:|---:|---:|---:|---:|"]
        for p in phases:
            lines.append(f"| {p.round + 1} | {p.monitoring} | {p.offered} | {p.ok} | {sum(p.errors.values())} | "
                         f"{p.p50_ms:.3f} | {p.p99_ms:.3f} | {p.gateway_cpu_us:,.0f} |")
        lines += ["", "| measure | off | on | paired on / off |", "|---|---:|---:|---:|"]
        measures: list[tuple[str, Callable[[Phase], float]]] = [
            ("p50 latency (ms)", lambda p: p.p50_ms), ("p99 latency (ms)", lambda p: p.p99_ms),
            ("gateway CPU per request (µs)", lambda p: p.gateway_cpu_us)]
        for name, get in measures:
            off = _median([get(p) for p in phases if p.monitoring == OFF])
            on = _median([get(p) for p in phases if p.monitoring == ON])
            lines.append(f"| {name} | {_fmt(off, 3)} | {_fmt(on, 3)} | {_fmt(paired(phases, get, ratio=True), 3)} |")
        ratio = paired(phases, lambda p: p.p50_ms, ratio=True)
        verdict = "within" if ratio <= TARGET_RATIO else "NOT within"
        lines += ["", f"**p50 on/off (paired median): {ratio:.3f}, {verdict} the {TARGET_RATIO - 1:.0%} target.**"]
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_telemetry", description=(__doc__ or "").split("\n")[0])
    p.add_argument("--models", type=Path, default=Path("models"), help="demo model repository")
    p.add_argument("--duration", type=float, default=15.0, help="measured seconds per phase")
    p.add_argument("--warmup", type=float, default=2.0, help="discarded seconds before each phase")
    p.add_argument("--prime", type=float, default=5.0, help="unmeasured seconds of load on each gateway first")
    p.add_argument("--rate", type=float, default=300.0, help="open-loop Poisson rate, req/s")
    p.add_argument("--connections", type=int, default=64, help="open-loop connection pool")
    p.add_argument("--repeats", type=int, default=4, help="rounds (off and on each)")
    p.add_argument("--calls", type=int, default=20_000, help="calls per in-process timing")
    p.add_argument("--skip-e2e", action="store_true", help="in-process measurements only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", type=Path, default=None, help="keep configs, state and logs here")
    p.add_argument("--out", type=Path, default=Path("loadtests/results/bench_telemetry.md"))
    args = p.parse_args(argv)
    if args.duration <= 0 or args.rate <= 0 or args.repeats < 1 or args.prime <= 0 or args.calls < 1:
        p.error("--duration, --rate, --repeats, --prime and --calls must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    calls = in_process(args)
    phases: list[Phase] = []
    with workdir(args.workdir) as work, otlp_sink() as endpoint:
        if not args.skip_e2e:
            phases = side_by_side(work, variants(endpoint), args)
    report = render(argv, args, calls, phases, (OtlpSink.posts, OtlpSink.bytes))
    print(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report, encoding="utf-8")
    raw = {"in_process_ns": dict(calls), "phases": [asdict(p) for p in phases]}
    args.out.with_suffix(".json").write_text(json.dumps(raw, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
