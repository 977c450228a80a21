"""What a request costs the gateway process when it is answered and when it is refused, against two floors.

Usage::

    python -m loadtests.bench_refusal --models models [--rates 4000,8000] [--rounds 3] [--duration 4]

Why: under overload a gateway keeps up with its callers only if refusing costs much less than
answering. With answers costing ``a`` and refusals ``r = rho * a`` of one saturated core, at ``k``
times the rate it can answer it answers at most ``(1 - k * rho) / (1 - rho)`` of that rate in time,
and nothing once ``rho >= 1 / k``. The rest waits in the callers' connection pools, where no
admission control sees it. This measures ``rho`` on this box, open loop, one server at a time:

* ``answer``: ``mlgate serve`` with the demo champion (latency objective 25 ms), the gateway
  process's CPU per answered request (its replica's process is not counted);
* ``refusal``: the same gateway asked for a model it does not serve: refused (404) where a shed
  request (429 at the objective's limit) is refused, after the headers are parsed, before the body
  is read, with the same error path, metrics and response writing;
* ``shed``: mlgate's HTTP application and protocol with no Ray, over a champion whose batcher is at
  its latency objective's limit, so that every request is shed (429 before the body is read);
* ``uvicorn floor``: uvicorn with mlgate's HTTP protocol class on uvloop and an ASGI app that
  answers a canned 429: the least a refusal costs while it goes through an ASGI request cycle;
* ``protocol floor``: ``loadtests.trivial_server``, an asyncio protocol writing canned bytes.

Rounds alternate the servers; the report gives medians in microseconds of CPU per request.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from loadtests.bench_oip import environment_lines, mlgate_command
from loadtests.loadgen import LoadConfig, run_load_sync
from loadtests.payloads import json_body, load_rows
from loadtests.procs import CLK_TCK, Server, free_port, http_request, read_proc, running, wait_ready

MODEL = "breast-cancer"
INFER = f"/v2/models/{MODEL}/infer"
KINDS = ("answer", "refusal", "shed", "uvicorn floor", "protocol floor")
CANNED_BODY = b'{"error":"at its limit for a 25 ms latency objective"}'
CANNED_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(CANNED_BODY)).encode()),
                  (b"retry-after", b"1")]


async def canned_refusal(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """ASGI app of the uvicorn floor: every request refused with fixed bytes, its body never read."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 429, "headers": CANNED_HEADERS})
    await send({"type": "http.response.body", "body": CANNED_BODY})


def _serve(app: Any, port: int, before: Callable[[], Awaitable[None]] | None = None) -> None:
    """Serve ``app`` on loopback as ``mlgate serve`` runs its HTTP listener (uvicorn on uvloop); ``before``
    runs on the same loop first."""
    import uvicorn
    import uvloop

    from gateway.http_protocol import listener_config

    async def main() -> None:
        if before is not None:
            await before()
        await uvicorn.Server(listener_config(app, "127.0.0.1", port)).serve()

    uvloop.run(main())


class _Stuck:
    """The shedding server's deployment: it never answers the first batch, which holds the batcher at its
    admission limit; any later batch means a request got past the limit."""

    def __init__(self) -> None:
        self.batches = 0

    async def __call__(self, inputs: Any) -> Any:
        self.batches += 1
        if self.batches > 1:
            raise AssertionError("a request past the admission limit reached the deployment")
        await asyncio.Event().wait()  # never set: the batch stays in flight


def serve_shedding(port: int) -> None:
    """mlgate's HTTP application and protocol, with no Ray, over a champion whose batcher is at its latency
    objective's limit, so that every inference request is shed (429), as ``mlgate serve`` sheds them."""
    from gateway.batcher import Batcher, BatchPolicy
    from gateway.errors import Overloaded
    from gateway.http_app import OipHttpApp
    from gateway.registry import ModelRegistry, ServedVersion
    from gateway.service import InferenceService
    from gateway.shadows import ShadowMirror
    from serving.manifest import Manifest, TensorSpec
    from telemetry.metrics import BatchMetrics

    manifest = Manifest(name=MODEL, version="1", sha256="0" * 64,
                        inputs=(TensorSpec(name="features", datatype="FP32", shape=(-1, 30)),),
                        outputs=(TensorSpec(name="label", datatype="INT64", shape=(-1,)),))
    registry = ModelRegistry()
    entry = ServedVersion(MODEL, "1", manifest)
    registry.add(entry)
    policy = BatchPolicy(max_batch_rows=64, max_wait_s=0.0, max_inflight=1, objective_s=0.025)
    batcher = Batcher(entry.label, _Stuck(), policy, BatchMetrics.for_deployment(MODEL, "1"))
    entry.mark_ready(batcher, "cpu")
    registry.champions[MODEL] = "1"
    service = InferenceService(registry, "bench", None, shadows=ShadowMirror())
    service.started = True
    backlog: list[asyncio.Task[Any]] = []

    async def fill_to_the_limit() -> None:
        """A batch of the limit's rows (one slot of 64 rows to start with) that is never answered."""
        rows = policy.max_inflight * policy.max_batch_rows
        backlog.append(asyncio.create_task(batcher.submit({"features": np.zeros((rows, 30), np.float32)}, rows)))
        while batcher.inflight == 0:
            await asyncio.sleep(0)
        try:
            batcher.shed_early()
        except Overloaded:
            return
        raise AssertionError("the batcher is not at its limit: the shedding server would answer")

    _serve(OipHttpApp(service, 1 << 20), port, before=fill_to_the_limit)


def write_config(path: Path, models: Path, port: int) -> None:
    config = {"server": {"host": "127.0.0.1", "http_port": port, "grpc_port": free_port()},
              "repository": str(models.resolve()),
              "models": {MODEL: {"batching": {"latency_objective_ms": 25}}}}
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")


def cpu_per_request_us(server: Server, port: int, model: str, rate: float, args: argparse.Namespace) -> float:
    """CPU of ``server``'s own process per request sent, in µs, over one open-loop Poisson run at ``rate``."""
    cfg = LoadConfig(url=f"http://127.0.0.1:{port}", model=model, mode="open", rate=rate, arrival="poisson",
                     connections=256, duration_s=args.duration, warmup_s=0.0, timeout_s=5.0, quiet=True)
    before = read_proc(server.pid)
    report = run_load_sync(cfg)
    after = read_proc(server.pid)
    if before is None or after is None:
        raise SystemExit(f"error: {server.name} exited during the run (see {server.log_path})")
    sent = report.sent
    if sent == 0:
        raise SystemExit(f"error: no request reached {server.name}")
    time.sleep(1.0)  # let the last answers drain before the next run
    return (after.cpu_ticks - before.cpu_ticks) / CLK_TCK / sent * 1e6


def measure(args: argparse.Namespace, work: Path) -> dict[tuple[str, float], list[float]]:
    """Every (kind, rate) → its µs per request, one per round."""
    gateway_port, canned_port, trivial_port, shed_port = (free_port() for _ in range(4))
    config = work / "mlgate.yaml"
    write_config(config, args.models, gateway_port)
    command = mlgate_command(config)
    if command is None:
        raise SystemExit("error: no mlgate CLI in this environment")
    probe = json_body(load_rows()[:1]).body
    costs: dict[tuple[str, float], list[float]] = {}
    this = [sys.executable, "-m", "loadtests.bench_refusal", "--serve"]
    with (running("mlgate", command, work / "mlgate.log") as gateway,
          running("shed", [*this, "shed", str(shed_port)], work / "shed.log") as shed,
          running("uvicorn floor", [*this, "canned", str(canned_port)], work / "canned.log") as canned,
          running("protocol floor", [sys.executable, "-m", "loadtests.trivial_server", "--port", str(trivial_port)],
                  work / "trivial.log") as trivial):
        wait_ready(gateway, gateway_port, INFER, probe, 300.0, "/v2/health/ready")
        wait_ready(trivial, trivial_port, INFER, probe, 30.0)
        for server, port in ((canned, canned_port), (shed, shed_port)):
            _wait_refusing(server, port, probe)
        runs = {"answer": (gateway, gateway_port, MODEL), "refusal": (gateway, gateway_port, "no-such-model"),
                "shed": (shed, shed_port, MODEL),
                "uvicorn floor": (canned, canned_port, MODEL), "protocol floor": (trivial, trivial_port, MODEL)}
        for round_no in range(args.rounds):
            for rate in args.rates:
                for kind in KINDS:
                    server, port, model = runs[kind]
                    us = cpu_per_request_us(server, port, model, rate, args)
                    costs.setdefault((kind, rate), []).append(us)
                    print(f"  round {round_no + 1} {rate:6.0f} req/s {kind:15s} {us:6.1f} µs/request",
                          file=sys.stderr, flush=True)
    return costs


def _wait_refusing(server: Server, port: int, body: bytes) -> None:
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        server.alive()
        try:
            if http_request(port, "POST", INFER, body)[0] == 429:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"error: {server.name} did not answer 429 (see {server.log_path})")


def render(args: argparse.Namespace, argv: list[str], costs: dict[tuple[str, float], list[float]]) -> str:
    lines = ["# What a request costs the gateway: answered, refused, and two floors", "",
             environment_lines(argv, "loadtests.bench_refusal"), "",
             f"Open loop, Poisson, 256 connections, {args.duration:g} s per run, {args.rounds} rounds; "
             "µs of the server process's CPU per request, medians (every round in brackets).", "",
             "| rate | " + " | ".join(KINDS) + " | shed / answer |", "|---:|" + "---:|" * (len(KINDS) + 1)]
    for rate in args.rates:
        medians = {kind: statistics.median(costs[kind, rate]) for kind in KINDS}
        cells = [f"{medians[k]:.1f} ({', '.join(f'{v:.0f}' for v in costs[k, rate])})" for k in KINDS]
        lines.append(f"| {rate:.0f} | " + " | ".join(cells) + f" | {medians['shed'] / medians['answer']:.2f} |")
    return "\n".join(lines)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m loadtests.bench_refusal", description=__doc__.split("\n")[0])
    p.add_argument("--models", type=Path, default=Path("models"), help="demo model repository")
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[4000.0, 8000.0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per run")
    p.add_argument("--out", type=Path, default=None, help="also write the markdown report here")
    p.add_argument("--serve", nargs=2, default=None, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.serve is not None:
        kind, port = args.serve[0], int(args.serve[1])
        if kind == "canned":
            _serve(canned_refusal, port)
        else:
            serve_shedding(port)
        return 0
    with tempfile.TemporaryDirectory(prefix="mlgate-bench-refusal-") as tmp:
        report = render(args, argv, measure(args, Path(tmp)))
    print(report)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(report + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
