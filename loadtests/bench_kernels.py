"""What the drift kernels cost: histogram updates per batch, the window path, divergences over all features.

Usage::

    python -m loadtests.bench_kernels [--out loadtests/results/bench_kernels.md] [--repeats 200]

The issue's targets: one single-row update of 30 features under 2 µs (it runs inline on
the request path, once per decoded batch), and a full divergence pass (PSI) over 256
features under 100 µs (the rollout controller runs it for every variant every few seconds).

Cases, all on float32 input and 11 edges per feature (the deciles 0, 0.1, ..., 1.0 of a
training sample, as the manifests store them: 12 bins plus NaN), 30 and 256 features:

* ``update_counts`` at 1, 8, 64 and 512 rows; beside it the same kernel forced to binary
  search (``K`` padded past ``LINEAR_SCAN_MAX_EDGES``: what the issue first asked for) and the
  numpy equivalent (``searchsorted`` + ``bincount`` per feature: what the kernel replaces);
* the request-path idiom ``update_counts(ring.current(time.monotonic()), ...)`` on a
  12 x 5 s ``WindowRing``;
* PSI, KL, JS, KS and W1 over all features, all five together, ``ring.total(now)`` + PSI
  (the controller's read), and PSI in vectorised numpy for comparison.

Fresh data on every call: each update timing cycles through up to 256 distinct batches
cut from 16,384 rows of traffic. Replaying one batch would let the branch predictor learn
it and make a binary search look 4-5x faster than it is on real traffic.

Timing: every case is called first (numba compiles or loads its cache), then timed
``--repeats`` times; one timing runs through the distinct argument sets (with
``deque(starmap(...))``, no Python loop per call) as often as needed to last >= ~50 µs and
reports ns per call, call overhead included. Min and median over the timings are
reported: min is the cost on a quiet core (the targets are judged on it), median what a
2-core box shared with other work gives (shown beside each verdict too).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import statistics
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import starmap
from pathlib import Path
from typing import Any

import numba
import numpy as np
import numpy.typing as npt

from kernels import (
    WindowRing,
    js,
    kl,
    ks,
    new_counts,
    pack_edges,
    psi,
    update_counts,
    wasserstein1,
)
from kernels.histograms import LINEAR_SCAN_MAX_EDGES
from loadtests.procs import cpu_model

ROWS = (1, 8, 64, 512)
FEATURES = (30, 256)
POOL_ROWS = 16_384
MAX_BATCHES = 256
UPDATE_TARGET_US = 2.0
PSI_TARGET_US = 100.0
MIN_TIMING_NS = 50_000


@dataclass(frozen=True)
class Timing:
    """ns per call over the repeats."""

    min_ns: float
    median_ns: float


def measure(fn: Callable[..., object], arg_sets: Sequence[tuple[Any, ...]], repeats: int) -> Timing:
    """ns per ``fn(*args)``: warm up, then ``repeats`` timings, each cycling through ``arg_sets``."""
    deque(starmap(fn, arg_sets), maxlen=0)
    start = time.perf_counter_ns()
    deque(starmap(fn, arg_sets), maxlen=0)
    one_pass = max(time.perf_counter_ns() - start, 1)
    passes = max(1, MIN_TIMING_NS // one_pass)
    calls = list(arg_sets) * passes
    samples = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        deque(starmap(fn, calls), maxlen=0)
        samples.append((time.perf_counter_ns() - start) / len(calls))
    return Timing(min(samples), statistics.median(samples))


@dataclass
class Setup:
    """Edges, reference counts and float32 traffic for one feature count."""

    edges: npt.NDArray[np.float64]
    n_edges: npt.NDArray[np.int64]
    reference: npt.NDArray[np.int64]
    live: npt.NDArray[np.int64]
    traffic: npt.NDArray[np.float32]

    def batches(self, rows: int) -> list[npt.NDArray[np.float32]]:
        """Distinct C-contiguous batches of ``rows`` rows (views of the traffic pool)."""
        count = min(MAX_BATCHES, self.traffic.shape[0] // rows)
        return [self.traffic[i * rows : (i + 1) * rows] for i in range(count)]


def make_setup(n_features: int, rng: np.random.Generator) -> Setup:
    """Training deciles per feature from 20,000 rows; traffic scaled and shifted from training, 1% NaN."""
    scale = rng.uniform(0.5, 5.0, n_features)
    train = rng.normal(size=(20_000, n_features)) * scale
    edges, n_edges = pack_edges([np.unique(np.quantile(train[:, f], np.linspace(0, 1, 11))) for f in range(n_features)])
    reference = new_counts(edges)
    update_counts(reference, edges, n_edges, train.astype(np.float32))
    traffic = (rng.normal(size=(POOL_ROWS, n_features)) * scale * 1.1 + 0.2).astype(np.float32)
    traffic[rng.random(traffic.shape) < 0.01] = np.nan
    live = new_counts(edges)
    update_counts(live, edges, n_edges, traffic)
    return Setup(edges, n_edges, reference, live, traffic)


def numpy_update(counts: npt.NDArray[np.int64], edges: npt.NDArray[np.float64], n_edges: npt.NDArray[np.int64],
                 x: npt.NDArray[np.float32]) -> None:
    """What the kernel replaces: searchsorted + bincount, one Python iteration per feature."""
    nan_col = counts.shape[1] - 1
    for f in range(x.shape[1]):
        col = x[:, f]
        nan = np.isnan(col)
        n = int(n_edges[f])
        counts[f, : n + 1] += np.bincount(np.searchsorted(edges[f, :n], col[~nan], side="right"), minlength=n + 1)
        counts[f, nan_col] += int(nan.sum())


def numpy_psi(a: npt.NDArray[np.int64], e: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """PSI in vectorised numpy, for comparison (no empty-side handling)."""
    p = np.maximum(a / a.sum(axis=1, keepdims=True), 1e-4)
    q = np.maximum(e / e.sum(axis=1, keepdims=True), 1e-4)
    out: npt.NDArray[np.float64] = np.sum((p - q) * np.log(p / q), axis=1)
    return out


def ring_update(ring: WindowRing, edges: npt.NDArray[np.float64], n_edges: npt.NDArray[np.int64],
                x: npt.NDArray[np.float32]) -> None:
    """The request-path idiom: the current slot for now, updated in place."""
    update_counts(ring.current(time.monotonic()), edges, n_edges, x)


def all_five(s: Setup) -> object:
    a, e = s.live, s.reference
    return psi(a, e), kl(a, e), js(a, e), ks(a, e), wasserstein1(a, e, s.edges, s.n_edges)


def ring_psi(ring: WindowRing, reference: npt.NDArray[np.int64]) -> object:
    """The controller's read: the window's total, then PSI against the reference."""
    return psi(ring.total(59.0), reference)


def us(ns: float) -> str:
    return f"{ns / 1000:.2f}"


def bench_updates(setups: dict[int, Setup], repeats: int) -> tuple[list[str], dict[str, Timing]]:
    lines = [
        "| features | rows | `update_counts` µs min / median | ns per value (min) "
        "| binary search µs (min) | numpy per-feature loop µs (min) | numpy / kernel |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    raw: dict[str, Timing] = {}
    for n_features, s in setups.items():
        # The same edges padded past the linear-scan limit: the kernel then binary-searches each value.
        wide = np.full((n_features, LINEAR_SCAN_MAX_EDGES + 1), np.inf)
        wide[:, : s.edges.shape[1]] = s.edges
        for rows in ROWS:
            batches = s.batches(rows)
            counts, wide_counts = new_counts(s.edges), new_counts(wide)
            kernel = measure(update_counts, [(counts, s.edges, s.n_edges, x) for x in batches], repeats)
            binary = measure(update_counts, [(wide_counts, wide, s.n_edges, x) for x in batches], repeats)
            np_t = measure(numpy_update, [(counts, s.edges, s.n_edges, x) for x in batches[:16]],
                           max(10, repeats // 10))
            raw[f"update_{n_features}x{rows}"] = kernel
            lines.append(
                f"| {n_features} | {rows} | {us(kernel.min_ns)} / {us(kernel.median_ns)} "
                f"| {kernel.min_ns / (rows * n_features):.1f} | {us(binary.min_ns)} | {us(np_t.min_ns)} "
                f"| {np_t.min_ns / kernel.min_ns:.0f}x |"
            )
    return lines, raw


def bench_ring(setups: dict[int, Setup], repeats: int) -> list[str]:
    lines = [
        "| features | rows | `update_counts(ring.current(time.monotonic()), ...)` µs min / median |",
        "|---:|---:|---:|",
    ]
    for n_features, s in setups.items():
        ring = WindowRing(12, 5.0, new_counts(s.edges).shape)
        for rows in (1, 64):
            t = measure(ring_update, [(ring, s.edges, s.n_edges, x) for x in s.batches(rows)], repeats)
            lines.append(f"| {n_features} | {rows} | {us(t.min_ns)} / {us(t.median_ns)} |")
    return lines


def bench_divergences(setups: dict[int, Setup], repeats: int) -> tuple[list[str], dict[str, Timing]]:
    lines = ["| measure | " + " | ".join(f"{f} features µs min / median" for f in setups) + " |",
             "|---|" + "---:|" * len(setups)]
    raw: dict[str, Timing] = {}
    rows: dict[str, list[str]] = {}
    for n_features, s in setups.items():
        a, e = s.live, s.reference
        ring = WindowRing(12, 5.0, a.shape)
        for k in range(12):  # every slot live
            ring.current(k * 5.0)[:] = a
        cases: dict[str, tuple[Callable[..., object], tuple[Any, ...]]] = {
            "PSI": (psi, (a, e)),
            "KL": (kl, (a, e)),
            "JS": (js, (a, e)),
            "KS": (ks, (a, e)),
            "W1": (wasserstein1, (a, e, s.edges, s.n_edges)),
            "all five": (all_five, (s,)),
            "`ring.total(now)` (12 slots) + PSI": (ring_psi, (ring, e)),
            "PSI in vectorised numpy (comparison)": (numpy_psi, (a, e)),
        }
        for name, (fn, args) in cases.items():
            t = measure(fn, [args], repeats)
            raw[f"{name}_{n_features}"] = t
            rows.setdefault(name, []).append(f"{us(t.min_ns)} / {us(t.median_ns)}")
    lines += [f"| {name} | " + " | ".join(cells) + " |" for name, cells in rows.items()]
    return lines, raw


def verdict(what: str, t: Timing, target_us: float) -> str:
    met = "met" if t.min_ns < target_us * 1000 else "NOT met"
    return f"- {what} < {target_us:g} µs: **{met}** ({us(t.min_ns)} µs min, {us(t.median_ns)} µs median)"


def render(argv: list[str], args: argparse.Namespace) -> str:
    rng = np.random.default_rng(0)
    setups = {f: make_setup(f, rng) for f in FEATURES}
    update_lines, update_raw = bench_updates(setups, args.repeats)
    ring_lines = bench_ring(setups, args.repeats)
    div_lines, div_raw = bench_divergences(setups, args.repeats)
    lines = [
        "# Drift kernels benchmark",
        "",
        f"- command: `python -m loadtests.bench_kernels{''.join(' ' + a for a in argv)}`",
        f"- date: {dt.datetime.now(dt.timezone.utc).strftime('%Y-%m-%dT%H:%M:%SZ')}",
        f"- machine: {cpu_model()}; nproc {len(os.sched_getaffinity(0))}; shared with other work",
        f"- Python {platform.python_version()}, numpy {np.__version__}, numba {numba.__version__}",
        f"- input: float32, 11 edges per feature (deciles 0..1.0: 12 bins + NaN), fresh batches each call; "
        f"{args.repeats} timings per case",
        "",
        "## Against the targets",
        "",
        verdict("one single-row update of 30 features (`update_counts`)", update_raw["update_30x1"], UPDATE_TARGET_US),
        verdict("PSI over all 256 features", div_raw["PSI_256"], PSI_TARGET_US),
        "",
        "## Histogram update, one call per batch",
        "",
        *update_lines,
        "",
        "## Request-path idiom with a 12 x 5 s window ring",
        "",
        *ring_lines,
        "",
        "## Divergences over all features (live vs reference counts)",
        "",
        *div_lines,
        "",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_kernels", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    p.add_argument("--repeats", type=int, default=200, help="timings per case (default 200)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    report = render(argv, args)
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
