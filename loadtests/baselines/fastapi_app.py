"""Baseline (c): FastAPI + uvicorn + ONNX Runtime in one process, no Ray.

This is the app a user writes after reading the FastAPI tutorial: pydantic
request models, ``session.run`` inline in an ``async def`` handler, a dict
returned and serialised by FastAPI. It has no batching, no isolation and no
routing -- it is the ceiling for "one Python process doing HTTP + inference",
which is what mlgate's gateway-side batching has to be compared against.

Run: ``python -m loadtests.baselines.fastapi_app --model-file PATH --port P``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from loadtests.baselines.oip_json import output_tensor

# OIP datatype of each numpy dtype the model can return.


class InferInput(BaseModel):
    """One OIP input tensor, JSON data flattened row-major."""

    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[float]


class InferRequest(BaseModel):
    """OIP inference request body."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[InferInput]
    outputs: list[dict[str, Any]] | None = None


def load_session(model_file: Path) -> ort.InferenceSession:
    """CPU session with one intra-op thread: the box has 2 cores and HTTP needs one of them."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(model_file), opts, providers=["CPUExecutionProvider"])


def create_app(model_file: Path, model_name: str) -> FastAPI:
    """The FastAPI app serving one ONNX model under ``/v2/models/{model_name}``."""
    session = load_session(model_file)
    input_name = session.get_inputs()[0].name
    output_names = [o.name for o in session.get_outputs()]
    app = FastAPI(title=f"{model_name} (FastAPI baseline)")

    @app.get("/v2/health/ready")
    async def ready() -> dict[str, bool]:
        return {"ready": True}

    @app.post("/v2/models/{name}/infer", response_model=None)
    async def infer(name: str, request: InferRequest) -> dict[str, Any] | JSONResponse:
        if name != model_name:
            return JSONResponse({"error": f"unknown model {name!r}"}, status_code=404)
        tensor = request.inputs[0]
        try:
            x = np.asarray(tensor.data, dtype=np.float32).reshape(tensor.shape)
        except ValueError as exc:
            return JSONResponse({"error": f"bad input: {exc}"}, status_code=400)
        results = session.run(output_names, {input_name: x})
        response: dict[str, Any] = {
            "model_name": model_name,
            "outputs": [output_tensor(n, np.asarray(v)) for n, v in zip(output_names, results, strict=True)],
        }
        if request.id is not None:
            response["id"] = request.id
        return response

    @app.post("/v2/models/{name}/versions/{version}/infer", response_model=None)
    async def infer_version(name: str, version: str, request: InferRequest) -> dict[str, Any] | JSONResponse:
        return await infer(name, request)

    return app


def main() -> None:
    """CLI: serve the model with uvicorn (uvloop + httptools, one worker, no access log)."""
    import uvicorn

    p = argparse.ArgumentParser(prog="python -m loadtests.baselines.fastapi_app")
    p.add_argument("--model-file", type=Path, required=True)
    p.add_argument("--model-name", default="breast-cancer")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    args = p.parse_args()
    app = create_app(args.model_file, args.model_name)
    uvicorn.run(
        app, host=args.host, port=args.port, workers=1, loop="uvloop", http="httptools",
        access_log=False, log_level="warning",
    )


if __name__ == "__main__":
    main()
