"""Baseline (b): a plain Ray Serve app, written the way Ray's documentation shows.

A ``@serve.deployment`` class whose ``__call__`` takes a Starlette request,
parses the OIP JSON and awaits a ``@serve.batch`` method with Serve's default
batching settings (``max_batch_size=10``, ``batch_wait_timeout_s=0.01``);
the batch method stacks the rows, runs ONNX Runtime once and splits the
result. Requests arrive through Serve's own HTTP proxy, so every request makes
a proxy -> replica Ray call -- the per-request Ray hop whose cost
(DESIGN.md: ~1-2 ms of CPU each) mlgate is designed to avoid.

Run: ``python -m loadtests.baselines.ray_serve_app --model-file PATH --port P``
(starts a private local Ray; stops Serve and Ray on SIGTERM/SIGINT).
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import onnxruntime as ort
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from loadtests.baselines.oip_json import output_tensor

MODEL_NAME = "breast-cancer"
ROUTE_PREFIX = f"/v2/models/{MODEL_NAME}"


@serve.deployment
class OnnxModel:
    """One replica holding an ONNX Runtime session; requests are batched by ``@serve.batch``."""

    def __init__(self, model_file: str) -> None:
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        self.session = ort.InferenceSession(model_file, opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    @serve.batch
    async def predict(self, batch: list[np.ndarray]) -> list[list[dict[str, Any]]]:
        """Run the stacked batch once, then give each request back its own rows."""
        stacked = np.concatenate(batch, axis=0)
        results = self.session.run(self.output_names, {self.input_name: stacked})
        bounds = np.cumsum([len(x) for x in batch])[:-1]
        per_output = [np.split(np.asarray(r), bounds) for r in results]
        return [
            [output_tensor(name, parts[i]) for name, parts in zip(self.output_names, per_output, strict=True)]
            for i in range(len(batch))
        ]

    async def __call__(self, request: Request) -> dict[str, Any] | JSONResponse:
        """POST {ROUTE_PREFIX}/infer with an OIP JSON body."""
        if request.method != "POST" or not request.url.path.rstrip("/").endswith("/infer"):
            return JSONResponse({"error": "not found"}, status_code=404)
        body = await request.json()
        tensor = body["inputs"][0]
        try:
            x = np.asarray(tensor["data"], dtype=np.float32).reshape(tensor["shape"])
        except (KeyError, ValueError) as exc:
            return JSONResponse({"error": f"bad input: {exc}"}, status_code=400)
        outputs = await self.predict(x)
        return {"model_name": MODEL_NAME, "outputs": outputs}


def _wait_for_signal() -> None:
    """Block the main thread until SIGTERM or SIGINT (installed after ray.init, which sets its own)."""
    stop = threading.Event()

    def handler(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    while not stop.wait(1.0):
        pass


def main() -> None:
    """Start a private local Ray, Serve's proxy on 127.0.0.1:PORT, the app; serve until signalled."""
    import ray

    p = argparse.ArgumentParser(prog="python -m loadtests.baselines.ray_serve_app")
    p.add_argument("--model-file", type=Path, required=True)
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--num-cpus", type=int, default=2)
    p.add_argument(
        "--max-ongoing-requests", type=int, default=None,
        help="override Serve's default (5 in Ray 2.60, below max_batch_size=10, so batches never fill; "
        "Serve warns about it). Default: leave Serve's default, as a user following the docs would.",
    )
    args = p.parse_args()

    # address="local": always a new private instance, never someone else's running cluster.
    ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": args.port})
        deployment = OnnxModel
        if args.max_ongoing_requests is not None:
            deployment = OnnxModel.options(max_ongoing_requests=args.max_ongoing_requests)  # type: ignore[attr-defined]
        serve.run(
            deployment.bind(str(args.model_file.resolve())),  # type: ignore[attr-defined]  # serve's decorator
            name=MODEL_NAME,
            route_prefix=ROUTE_PREFIX,
        )
        print(f"ray serve baseline ready on http://127.0.0.1:{args.port}{ROUTE_PREFIX}/infer", flush=True)
        _wait_for_signal()
    finally:
        try:
            serve.shutdown()  # type: ignore[no-untyped-call]
        finally:
            ray.shutdown()


if __name__ == "__main__":
    main()
