# mlgate: `make demo` runs the gateway with its demo models; `make test` runs every check.
# Both start from nothing: they create the virtual environment and install what they need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
MODELS := models
CONFIG := configs/demo.yaml

.PHONY: help install prometheus observe models demo test lint typecheck unit load bench bench-batching bench-routing bench-drift bench-kernels bench-telemetry bench-transport bench-refusal bench-gpu proto clean

help:
	@echo "make demo   - install, build the demo models, run the gateway on 127.0.0.1:8000 (HTTP) / 8001 (gRPC)"
	@echo "make test   - install, then ruff, mypy, hadolint, promtool and pytest"
	@echo "make observe - Prometheus with mlgate's rules against a running 'make demo' (UI on 127.0.0.1:9090)"
	@echo "make load   - one minute of load against a running 'make demo', with a report"
	@echo "make bench  - mlgate vs plain Ray Serve vs FastAPI, side by side (loadtests/README.md)"
	@echo "make bench-batching - adaptive batching vs fixed settings and @serve.batch (~25 min)"
	@echo "make bench-routing  - routing, sticky keys and shadow bookkeeping: single route vs 3-version split (~5 min)"
	@echo "make bench-drift    - drift monitoring on vs off: in-process CPU per request, end-to-end p50/p99 (~5 min)"
	@echo "make bench-kernels  - drift kernels: histogram updates, window ring, PSI/KL/JS/KS/W1 (~1 min, no models needed)"
	@echo "make bench-telemetry - request metrics + tracing (1% sampled) on vs off, side by side (~5 min)"
	@echo "make bench-transport - batches to a replica: shared memory vs by value vs by reference (~1 min)"
	@echo "make bench-refusal  - gateway CPU per answer, per refusal and per shed request, against two floors (~4 min)"
	@echo "make bench-gpu      - on an NVIDIA GPU: the gateway against ONNX Runtime's offline peak (~5 min)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian's prometheus package: the telemetry tests scrape a real gateway with it and check the rules with promtool.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
		SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
	@prometheus --version 2>&1 | head -1

observe: install prometheus
	$(BIN)/mlgate observe --config $(CONFIG)

models: install
	$(BIN)/mlgate models build-demo $(MODELS)

DEMO_TOKEN := .mlgate/demo-admin-token

demo: models
	$(BIN)/mlgate token create --config $(CONFIG) --name demo-admin --role admin --out $(DEMO_TOKEN) --if-missing
	$(BIN)/mlgate serve --config $(CONFIG)

lint: install prometheus
	$(BIN)/ruff check .
	$(BIN)/hadolint Dockerfile
	promtool check rules telemetry/prometheus/mlgate-rules.yml

typecheck: install
	$(BIN)/mypy

unit: install prometheus
	$(BIN)/python -m pytest

test: lint typecheck unit

load: install
	$(BIN)/python -m loadtests.loadgen --url http://127.0.0.1:8000 --model breast-cancer \
		--mode closed --concurrency 16 --duration 60

bench: models
	$(BIN)/python -m loadtests.bench_oip --models $(MODELS) --out loadtests/results/bench_oip.md

bench-routing: models
	$(BIN)/python -m loadtests.bench_routing --models $(MODELS) --duration 15 --repeats 4 --rate 400 \
		--out loadtests/results/bench_routing.md

bench-drift: models
	$(BIN)/python -m loadtests.bench_drift --models $(MODELS) --duration 15 --repeats 4 --rate 300 \
		--out loadtests/results/bench_drift.md

bench-batching: models
	$(BIN)/python -m loadtests.bench_batching --models $(MODELS) --out loadtests/results/bench_batching.md

bench-telemetry: models
	$(BIN)/python -m loadtests.bench_telemetry --models $(MODELS) --duration 15 --repeats 4 --rate 300 \
		--out loadtests/results/bench_telemetry.md

bench-transport: install
	$(BIN)/python -m loadtests.bench_transport

bench-refusal: models
	$(BIN)/python -m loadtests.bench_refusal --models $(MODELS) --out loadtests/results/bench_refusal.md

bench-gpu: models
	$(BIN)/python -m loadtests.bench_gpu --models $(MODELS) --workers 8 --rows 16384,32768 --growth 1.2 \
		--start-fraction 0.15 --batch-sizes 1,1024,4096,16384,65536 --offline-s 0.5 \
		--out loadtests/results/bench_gpu.md

bench-kernels: install
	$(BIN)/python -m loadtests.bench_kernels --out loadtests/results/bench_kernels.md

proto: install
	bash gateway/proto/generate.sh

clean:
	rm -rf $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache
