# `make demo` and `make test` are all a fresh clone needs: each builds what it uses in .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PLUGINS := $(wildcard plugins/*/pyproject.toml)
SOURCES := pyproject.toml setup.py $(wildcard src/gatekit/*.py src/gatekit/*/*.py src/gatekit/*/*.pyx \
	src/gatekit/*/*.pxd src/gatekit/*/*.h) \
	$(wildcard plugins/*/pyproject.toml plugins/*/setup.py plugins/*/src/*/*)
DEBUG_DIR := build/debug-install

.PHONY: demo test bench install clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The build requirements go in first so gatekit and its plugins build without isolation,
# against the same NumPy, SciPy and Cython they run with.
$(VENV)/.installed: $(SOURCES) | $(BIN)/python
	$(BIN)/python -m pip install --quiet "setuptools>=77" "Cython>=3.0" "numpy>=2.0" "scipy>=1.11" \
		pluggy pytest hypothesis pytest-benchmark threadpoolctl
	$(BIN)/python -m pip install --quiet --no-build-isolation ".[test,bench,plot,distributed,data]"
	$(foreach p,$(PLUGINS),$(BIN)/python -m pip install --quiet --no-build-isolation --no-deps ./$(dir $(p)) &&) true
	@if [ -n "$$CI" ]; then $(BIN)/python -m pip install --quiet torch==2.13.0 || echo "torch not installed"; fi
	@if [ -n "$$CI" ]; then $(BIN)/python -m pip install --quiet jax==0.10.2 jaxlib==0.10.2 \
		|| echo "jax not installed: the tests of gatekit.jax will be skipped"; fi
	@if [ -n "$$CI" ]; then $(BIN)/python -m pip install --quiet keras==3.15.1 onnx==1.23.2 onnxruntime==1.32.0 \
		|| echo "keras/onnx/onnxruntime not installed: their interop tests will be skipped"; fi
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/gatekit variants

# The suite runs twice: on the optimised build users get, and on a build with bounds checks.
test: install
	$(BIN)/pytest -q -p no:cacheprovider tests plugins
	rm -rf $(DEBUG_DIR)
	GATEKIT_DEBUG=1 $(BIN)/python -m pip install --quiet --no-build-isolation --no-deps \
		--target $(DEBUG_DIR) .
	PYTHONPATH=$(CURDIR)/$(DEBUG_DIR) GATEKIT_EXPECT_DEBUG=1 $(BIN)/pytest -q -p no:cacheprovider tests plugins

# The benchmark suite (benchmarks/, docs/benchmarks.md), run by its harness (benchmarks/run.py,
# not part of the package): correctness guards, then gatekit, gatekit on its avx2 and baseline
# kernels, PyTorch and JAX each timed in its own process, merged into one markdown report.
# PyTorch and JAX are optional: installed here if possible, their benchmarks skipped without them.
# LOAD=busy times every family with one CPU-bound process beside it, LOAD=idle,busy both (twice
# as long). Quick run: make bench SHAPES=S1,fixed. More: BENCH_FLAGS="--families gatekit
# --budget 3" (the options of `python benchmarks/run.py run --help`).
SHAPES ?= S1,S2,S3,S4,S5,S1sq,S6,fixed
REPORT ?= .benchmarks/report.md
LOAD ?= idle
BENCH_FLAGS ?=
bench: install
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install --quiet torch==2.13.0 \
		|| echo "bench: PyTorch could not be installed; its benchmarks will be skipped"
	@$(BIN)/python -c "import jax" 2>/dev/null || $(BIN)/python -m pip install --quiet jax jaxlib \
		|| echo "bench: JAX could not be installed; its benchmarks will be skipped"
	$(BIN)/python benchmarks/run.py run --shapes $(SHAPES) --load $(LOAD) --out $(REPORT) $(BENCH_FLAGS)

clean:
	rm -rf $(VENV) build src/*.egg-info
