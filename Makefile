# One entry point for setting up, running and testing the cluster on a fresh machine.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
GEN := build/gen
PROTOS := $(wildcard protos/pirm/v1/*.proto) $(wildcard protos/inference/*.proto)
STAMP_INSTALL := $(VENV)/.installed
STAMP_PROTOS := $(GEN)/.generated
# numba caches the compiled metric kernels beside services/metrics/kernels.py (__pycache__), or
# in NUMBA_CACHE_DIR when set; the stamp lives in that cache, so an emptied or another cache
# compiles again.
KERNEL_CACHE := $(or $(NUMBA_CACHE_DIR),services/metrics/__pycache__)
STAMP_KERNELS := $(KERNEL_CACHE)/.pirm-kernels-compiled
# A separate environment for standard clients (tritonclient needs protobuf < 7): the tests use
# it to show that such clients work against our services without our code.
CLIENT_VENV := build/client-venv
STAMP_CLIENT := $(CLIENT_VENV)/.installed

.PHONY: setup kernels test-tools protos kubectl prometheus chromium run test lint unit \
	integration deploy-test clean bench-inference bench-metrics bench-e2e bench-cli bench-load

# What running needs: Python packages, generated protobuf code, compiled metric kernels.
setup: $(STAMP_INSTALL) $(STAMP_PROTOS) $(STAMP_KERNELS)

# What only the tests use, on top of setup: a tritonclient environment, kubectl, Prometheus,
# Chromium and its driver.
test-tools: $(STAMP_CLIENT) kubectl prometheus chromium

# The project is installed editable; the generated package `pirm.v1` is mapped to build/gen,
# so its folder must exist before pip records the mapping.
$(STAMP_INSTALL): pyproject.toml
	@echo "Installing the Python packages into $(VENV) (TensorFlow among them: 3-4 min on a fresh machine) ..."
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	mkdir -p $(GEN)/pirm/v1 $(GEN)/inference
	touch $(GEN)/pirm/__init__.py $(GEN)/pirm/v1/__init__.py $(GEN)/inference/__init__.py
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(STAMP_PROTOS): $(PROTOS) $(STAMP_INSTALL)
	mkdir -p $(GEN)/pirm/v1 $(GEN)/inference
	touch $(GEN)/pirm/__init__.py $(GEN)/pirm/v1/__init__.py $(GEN)/inference/__init__.py
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m grpc_tools.protoc -Iprotos \
	    --python_out=$(GEN) --grpc_python_out=$(GEN) \
	    --mypy_out=$(GEN) --mypy_grpc_out=$(GEN) $(PROTOS)
	touch $@

protos: $(STAMP_PROTOS)

# Compiled here, once, rather than while the metrics service starts (it loads them before it
# reports SERVING): the compilation takes 2-3.5 minutes on this 2-core machine (107 s at a load
# of 2-4, 204 s at 7).
$(STAMP_KERNELS): services/metrics/kernels.py services/metrics/quality.py $(STAMP_INSTALL)
	@echo "Compiling the metric kernels (numba, once: 2-4 min on 2 cores) ..."
	@$(BIN)/python -c 'import time; t = time.monotonic(); \
	    from services.metrics.quality import warm_up; warm_up(); \
	    print(f"  compiled in {time.monotonic() - t:.0f} s")'
	mkdir -p $(KERNEL_CACHE)
	touch $@

kernels: $(STAMP_KERNELS)

$(STAMP_CLIENT):
	test -x $(CLIENT_VENV)/bin/python || $(PYTHON) -m venv $(CLIENT_VENV)
	$(CLIENT_VENV)/bin/pip install --quiet 'tritonclient[grpc]==2.73.0' 'numpy==2.4.6'
	touch $@

# tests/deploy renders the Kubernetes overlays with `kubectl kustomize`. Where kubectl is
# missing, Debian's kubernetes-client provides it (as root); if that fails, those tests skip
# and say why. Bookworm's package is kubectl 1.20, whose kustomize predates components: the
# tests skip rendering with it too.
kubectl:
	@command -v kubectl >/dev/null || ! command -v apt-get >/dev/null || \
	  { export DEBIAN_FRONTEND=noninteractive; \
	    apt-get install -y --no-install-recommends kubernetes-client >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get install -y --no-install-recommends kubernetes-client; }; } || \
	  echo "kubectl could not be installed: tests/deploy will not render the overlays"

# The observability test scrapes the services with a real Prometheus (Debian's package); the
# test starts its own server, so the package's systemd service plays no part. Without apt-get
# (not Debian) the step does nothing and that test skips, saying why.
prometheus:
	@command -v prometheus >/dev/null || ! command -v apt-get >/dev/null || \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus || \
	    { apt-get update && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends prometheus; }

# The report test renders `pirm report`'s HTML in headless Chromium (Debian's package) and
# checks the screenshot and the DOM; the user study's test drives raters through the rating
# page with Selenium and Debian's chromedriver (chromium-driver). Without apt-get the step
# does nothing and those tests skip.
chromium:
	@{ command -v chromium && command -v chromedriver; } >/dev/null || \
	  ! command -v apt-get >/dev/null || \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
	      chromium-driver || \
	    { apt-get update && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
	        chromium-driver; }

# The main job: start the cluster, evaluate the SRCNN baselines of both tracks, print the leaderboards.
run: setup
	$(BIN)/pirm demo

lint: setup
	$(BIN)/ruff check services tests deploy $(wildcard bench)
	$(BIN)/mypy
	$(BIN)/lint-imports --no-cache

# Two pytest processes, whole files each (a file's fixtures start its servers once): on 2 cores
# the suite waits on process starts and polls as much as it computes. TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2

test: setup test-tools lint
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

# The fast tier (under a minute warm): the unit tests not marked slow; `make test` runs all.
unit: setup
	$(BIN)/python -m pytest -q -m "not slow" tests/unit

integration: setup test-tools
	$(BIN)/python -m pytest -q tests/integration

deploy-test: setup test-tools
	$(BIN)/python -m pytest -q tests/deploy

# Benchmarks time ours and the reference side by side in one run and print the ratio.
bench-inference: setup
	$(BIN)/python -m bench.bench_inference

bench-metrics: setup
	$(BIN)/python -m bench.bench_metrics

bench-e2e: setup
	$(BIN)/python -m bench.bench_e2e

# pirm status, jobs and leaderboard as whole processes against a scorer, beside `import grpc`.
bench-cli: setup
	$(BIN)/python -m bench.bench_cli

# Not a comparison: many clients and jobs on a local cluster, with correctness and memory checks.
bench-load: setup
	$(BIN)/python bench/bench_load.py

clean:
	rm -rf build var .pytest_cache .mypy_cache .ruff_cache
