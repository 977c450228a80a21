# syntax=docker/dockerfile:1
#
# mlgate with the demo models baked in: `mlgate serve --config /app/configs/demo.yaml --host 0.0.0.0`.
#
# CPU (default base python:3.11-slim):
#   docker build -t mlgate .
#   docker run --rm -p 8000:8000 -p 8001:8001 --shm-size=1g mlgate
# (--shm-size: Ray puts its object store in /dev/shm; Docker's default 64 MB makes it fall back to /tmp.)
#
# GPU: BASE_IMAGE must be a CUDA 12 + cuDNN 9 runtime image (what onnxruntime-gpu >= 1.20 links against)
# that also has Python >= 3.10 with the venv module. The nvidia/cuda images have no Python, so make one:
#   cat > Dockerfile.cuda-base <<'EOF'
#   FROM nvidia/cuda:12.4.1-cudnn-runtime-ubuntu22.04
#   RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
#       && rm -rf /var/lib/apt/lists/*
#   EOF
#   docker build -f Dockerfile.cuda-base -t mlgate-cuda-base .
#   docker build --build-arg BASE_IMAGE=mlgate-cuda-base -t mlgate:cuda .
#   docker run --rm --gpus all -p 8000:8000 -p 8001:8001 --shm-size=1g mlgate:cuda
# Both stages use the same base so the virtual environment copied between them finds the same Python.

ARG BASE_IMAGE=python:3.11-slim

# ---------------------------------------------------------------------------------------------- builder
# Builds two virtual environments: /opt/venv holds only the runtime dependencies and is copied into the
# final image; /opt/build-venv adds scikit-learn and skl2onnx to train and convert the demo models and is
# thrown away with this stage.
FROM ${BASE_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src
RUN python3 -m venv /opt/venv && python3 -m venv /opt/build-venv

COPY . .

# The cache mount lets the second install reuse the wheels the first one downloaded (and keeps them out of
# the layers); versions come from pyproject.toml.
RUN --mount=type=cache,target=/root/.cache/pip \
    /opt/venv/bin/pip install . \
    && /opt/build-venv/bin/pip install ".[dev]"

# Deterministic (fixed seeds), verified against scikit-learn with ONNX Runtime on the CPU before writing.
RUN /opt/build-venv/bin/mlgate models build-demo /app/models

# ---------------------------------------------------------------------------------------------- runtime
FROM ${BASE_IMAGE} AS runtime

# A fixed numeric UID lets Kubernetes' runAsNonRoot verify the user without reading /etc/passwd.
RUN groupadd --system --gid 10001 mlgate \
    && useradd --system --uid 10001 --gid mlgate --create-home --home-dir /home/mlgate mlgate

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOME=/home/mlgate \
    NUMBA_CACHE_DIR=/home/mlgate/.cache/numba

# Owned by root and read-only for the server: a compromised process cannot swap a model file (and the
# manifests' SHA-256 would refuse a swapped one anyway).
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app/models /app/models
COPY configs/demo.yaml /app/configs/demo.yaml

WORKDIR /app
USER 10001:10001

# HTTP (OIP REST + /metrics) and gRPC, Triton's defaults.
EXPOSE 8000 8001

# slim images have no curl: ask the gateway itself, with the Python that runs it. Any error status or
# refused connection raises, which exits non-zero. Ray and the models need a while to start.
HEALTHCHECK --interval=10s --timeout=3s --start-period=90s --retries=3 \
    CMD ["python3", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/v2/health/ready', timeout=2)"]

ENTRYPOINT ["mlgate"]
CMD ["serve", "--config", "/app/configs/demo.yaml", "--host", "0.0.0.0"]
