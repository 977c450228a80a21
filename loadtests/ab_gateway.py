"""A/B of two revisions of the gateway under the same open-loop load points, alternating, round after round.

On the 2-core box one code at one overload point answered 107 to 1,846 requests/s
within the objective in four rounds, and with the same code on both sides one side
"won" both rounds at three of four points (A/A runs, loadtests/README.md). So an
A/A run (``--baseline`` and ``--candidate`` the same revision) comes first, and a
change is credited only when it wins every one of many rounds.

Each side is a git revision checked out in a temporary worktree (``.``: the
working tree as it is), served by this environment's ``mlgate`` with
``PYTHONPATH`` pointing at that tree, so Ray's workers import it too. Both sides
serve the demo champion and the wide model with the same latency objective;
each point is one ``loadtests.loadgen`` open-loop run (or closed-loop: ``MODEL:N:closed``, N
connections), optionally beside a ``loadtests.cpu_neighbour``. Per point and round it reports goodput (answers
within the objective per second), refusals per second and the p99 of answers, and in a second table the
gateway process's CPU per answer: a figure that moves far less than goodput from round to round.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import yaml

from loadtests.bench_batching import BASE_MODELS, closed_loop, open_loop, settle
from loadtests.bench_gpu import build_repository
from loadtests.bench_oip import mlgate_command
from loadtests.bench_routing import cpu_ticks
from loadtests.loadgen import Arrival
from loadtests.payloads import json_body, load_rows
from loadtests.procs import CLK_TCK, all_procs, free_port, running, wait_ready

CLOSED = "closed"
"""A point's "arrival" for a closed loop: its RATE is then the number of connections, each sending its next request
when the last is answered. The gateway's CPU per answer is steadiest there."""
ARRIVALS = (*get_args(Arrival), CLOSED)
NEIGHBOUR_MAX_S = 3600.0
"""The neighbour is stopped when its point ends; this only bounds it if the tool itself dies."""
REPO = Path(__file__).resolve().parent.parent


def parse_point(text: str) -> tuple[str, float, str]:
    """``MODEL:RATE:ARRIVAL``, e.g. ``breast-cancer-wide:1130:poisson``; ``breast-cancer:8:closed``: 8 connections."""
    try:
        model, rate, arrival = text.split(":")
        value = float(rate)
    except ValueError:
        raise argparse.ArgumentTypeError(f"point {text!r} is not MODEL:RATE:ARRIVAL") from None
    if model not in BASE_MODELS or arrival not in ARRIVALS or not value > 0:
        raise argparse.ArgumentTypeError(f"point {text!r}: model one of {BASE_MODELS}, a rate above 0, "
                                         f"arrival one of {ARRIVALS}")
    return model, value, arrival


@contextlib.contextmanager
def checked_out(revision: str, tree: Path) -> Iterator[Path]:
    """The tree of ``revision`` at ``tree`` (``.``: the working tree itself), removed afterwards."""
    if revision == ".":
        yield REPO
        return
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(tree), revision], check=True)
    try:
        yield tree
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)], check=True)


def write_config(path: Path, models: Path, objective_ms: float, max_batch_rows: int | None = None,
                 workers: int = 1) -> int:
    """Both demo models with one objective (and row bound, if given), a sliver of a CPU each, served by ``workers``
    gateway processes; returns the HTTP port.

    The state file is the side's own (beside ``path``, named after it): the two revisions may not
    agree on its schema, and routing left by one side must not steer the other.
    """
    port = free_port()
    batching: dict[str, Any] = {"latency_objective_ms": objective_ms}
    if max_batch_rows is not None:
        batching["max_batch_rows"] = max_batch_rows
    deployment = {"batching": batching, "deployment": {"num_cpus": 0.05}}
    config = {"server": {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port(), "workers": workers},
              "repository": str(models.resolve()), "state": {"path": f".{path.stem}-state/state.db"},
              "models": {m: deployment for m in BASE_MODELS}}
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return port


def run_side(name: str, tree: Path, args: argparse.Namespace, work: Path) -> list[dict[str, Any]]:
    """Serve ``tree`` and run every point once against it."""
    config = work / f"{name}.yaml"
    port = write_config(config, args.models, args.slo_ms, args.max_batch_rows, args.workers)
    command = mlgate_command(config)
    if command is None:
        raise SystemExit("error: no mlgate CLI in this environment")
    results = []
    with running(name, command, work / f"{name}.log", env={"PYTHONPATH": str(tree)}) as server:
        probe = json_body(load_rows()[:1]).body
        wait_ready(server, port, f"/v2/models/{BASE_MODELS[-1]}/infer", probe, 300.0, "/v2/health/ready")
        time.sleep(3.0)
        for model, rate, arrival in args.points:
            neighbour = None
            if args.neighbour is not None:  # busy for the whole point, however long loadgen takes to prepare
                busy, period = args.neighbour
                neighbour = subprocess.Popen([sys.executable, "-m", "loadtests.cpu_neighbour", "--busy-ms", str(busy),
                                              "--period-ms", str(period), "--duration", str(NEIGHBOUR_MAX_S)],
                                             cwd=REPO)
            gateway = gateway_pids(server.popen.pid)
            ticks_before = cpu_ticks(gateway)
            try:
                result = (closed_loop(port, model, int(rate), args, args.rows) if arrival == CLOSED
                          else open_loop(port, model, arrival, rate, args, args.rows))
                result["cpu_us_per_answer"] = _per_answer(cpu_ticks(gateway) - ticks_before, result, args)
            finally:
                if neighbour is not None:
                    neighbour.terminate()
                    neighbour.wait()
            settle(port, mlgate=True)
            results.append({"model": model, "rate": rate, "arrival": arrival, **result})
            print(f"  {name:9s} {model:20s} {rate:7.0f} {arrival:8s} good {result['goodput']:7.0f}/s "
                  f"refused {result['refused']:6d} p99 {result['p99_ms']:8.1f} ms", file=sys.stderr, flush=True)
    return results


def gateway_pids(supervisor: int) -> list[int]:
    """The gateway's processes: the one started and its worker processes (``server.workers``), not Ray's."""
    workers = [p.pid for p in all_procs() if p.ppid == supervisor and "mlgate.workers" in _command_line(p.pid)]
    return [supervisor, *workers]


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _per_answer(ticks: int, result: dict[str, Any], args: argparse.Namespace) -> float:
    """Gateway CPU µs per answer over the whole point: its ticks (warm-up included) over the answers counted in
    the measured window, scaled to the warm-up too (as if the rate were steady). Refusals cost CPU as well; at
    overload the figure is what each answer cost, refusals included."""
    answers = result["ok"] * (args.warmup + args.duration) / args.duration
    return ticks * 1e6 / CLK_TCK / answers if answers else float("nan")


def render(args: argparse.Namespace, rounds: list[dict[str, list[dict[str, Any]]]]) -> str:
    seconds = args.duration
    lines = [f"A/B: baseline `{args.baseline}` vs candidate `{args.candidate}`, {len(rounds)} rounds, objective "
             f"{args.slo_ms:g} ms, {args.workers} gateway process(es), {args.rows} row(s) per request, neighbour "
             f"{args.neighbour or 'none'}; per round: "
             "goodput/s (refused/s, p99 ms)",
             "", "| model | offered | arrivals | baseline | candidate |", "|---|---:|---|---|---|"]
    for i, (model, rate, arrival) in enumerate(args.points):
        cells = []
        for side in ("baseline", "candidate"):
            cells.append("; ".join(f"{r[side][i]['goodput']:,.0f} ({r[side][i]['refused'] / seconds:,.0f}, "
                                   f"{r[side][i]['p99_ms']:,.0f})" for r in rounds))
        lines.append(f"| {model} | {rate:,.0f} | {arrival} | {cells[0]} | {cells[1]} |")
    lines += ["", "The gateway processes' CPU per answer, µs, per round:", "",
              "| model | offered | arrivals | baseline | candidate |", "|---|---:|---|---|---|"]
    for i, (model, rate, arrival) in enumerate(args.points):
        cpu = ["; ".join(f"{r[side][i]['cpu_us_per_answer']:,.0f}" for r in rounds)
               for side in ("baseline", "candidate")]
        lines.append(f"| {model} | {rate:,.0f} | {arrival} | {cpu[0]} | {cpu[1]} |")
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.ab_gateway", description=__doc__.split("\n")[0])
    p.add_argument("--baseline", required=True, help="git revision (or . for the working tree)")
    p.add_argument("--candidate", default=".", help="git revision (default: the working tree)")
    p.add_argument("--points", required=True, type=lambda s: [parse_point(x) for x in s.split(",")],
                   help="MODEL:RATE:ARRIVAL,... (models: breast-cancer, breast-cancer-wide)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--models", type=Path, default=Path("models"), help="demo model repository")
    p.add_argument("--slo-ms", type=float, default=25.0, help="latency objective of both models and loadgen's SLO")
    p.add_argument("--neighbour", type=lambda s: tuple(float(x) for x in s.split("/")), default=None,
                   help="BUSY_MS/PERIOD_MS: run loadtests.cpu_neighbour beside every point")
    p.add_argument("--rows", type=int, default=1,
                   help="rows per request; more than one are sent and answered as binary tensors")
    p.add_argument("--max-batch-rows", type=int, default=None,
                   help="serve copies of both models whose manifests allow this many rows per request and batch, "
                        "with batching.max_batch_rows set to it (default: the manifests' own bound)")
    p.add_argument("--workers", type=int, default=1, help="gateway processes (server.workers) on both sides")
    p.add_argument("--duration", type=float, default=6.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="discarded seconds per point")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help="write the markdown table here (and .json beside it)")
    args = p.parse_args(argv)
    if args.rounds < 1:
        p.error("--rounds must be at least 1")
    if args.workers < 1:
        p.error("--workers must be at least 1")
    if args.rows < 1 or (args.max_batch_rows is not None and args.max_batch_rows < args.rows):
        p.error("--rows must be at least 1, and --max-batch-rows at least --rows")
    if args.neighbour is not None and (len(args.neighbour) != 2 or not 0 < args.neighbour[0] < args.neighbour[1]):
        p.error("--neighbour must be BUSY_MS/PERIOD_MS with 0 < BUSY_MS < PERIOD_MS")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rounds: list[dict[str, list[dict[str, Any]]]] = []
    with tempfile.TemporaryDirectory(prefix="mlgate-ab-") as tmp:
        work = Path(tmp)
        if args.max_batch_rows is not None:
            build_repository(args.models, work / "models", args.max_batch_rows, BASE_MODELS)
            args.models = work / "models"
        with checked_out(args.baseline, work / "baseline-tree") as baseline, \
                checked_out(args.candidate, work / "candidate-tree") as candidate:
            trees = {"baseline": baseline, "candidate": candidate}
            for number in range(args.rounds):
                order = ("baseline", "candidate") if number % 2 == 0 else ("candidate", "baseline")
                print(f"--- round {number + 1}: {' then '.join(order)}", file=sys.stderr, flush=True)
                rounds.append({side: run_side(side, trees[side], args, work) for side in order})
    table = render(args, rounds)
    print(table)
    if args.out is not None:
        args.out.write_text(table, encoding="utf-8")
        args.out.with_suffix(".json").write_text(json.dumps(rounds, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
