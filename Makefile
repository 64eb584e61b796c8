# The two commands: `make train` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Stamps: the package with its runtime dependencies (enough for make train), then the test extras.
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# oneDNN convolutions for XLA:CPU (synthjax/kernels). If they cannot build, synthjax runs on XLA's own.
NATIVE := synthjax/kernels/_onednn_conv.so
WORKDIR ?= runs/dcgan
CONFIG ?= configs/dcgan.py
# Tests use both cores; `make test PYTEST_ARGS=-x` to stop at the first failure.
PYTEST_ARGS ?=

.PHONY: train test install native bench clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "make: $(PYTHON) not found; run 'make PYTHON=python3 ...' with a Python 3.11 interpreter"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e .
	touch $(STAMP)

$(DEV_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(DEV_STAMP)

# The headers come from onednn-devel, installed without its dependency: that is oneDNN 2026's
# TBB/SYCL build, whose libdnnl.so would replace onednn-cpu-gomp's. The kernels use only the
# oneDNN 3.x C API, stable across 3.x; the link (--no-undefined) checks it against 3.2.
$(NATIVE): synthjax/kernels/onednn_conv.cc synthjax/kernels/build.py $(STAMP)
	$(PY) -m pip install --quiet --no-deps onednn-devel==2026.1.0 && $(PY) -m synthjax.kernels.build \
	  || echo "make: oneDNN kernels not built (reason above); convolutions stay on XLA's own kernels"

native: $(NATIVE)

install: $(DEV_STAMP) $(NATIVE)

train: $(STAMP) $(NATIVE)
	@echo "Training $(CONFIG) into workdir: $(WORKDIR)"
	$(PY) train.py --config $(CONFIG) --workdir $(WORKDIR)
	@echo "Done. Samples and metrics are in $(WORKDIR)"

test: $(DEV_STAMP) $(NATIVE)
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS) tests

bench: $(DEV_STAMP) $(NATIVE)
	$(PY) benchmarks/compare.py

clean:
	rm -rf $(VENV) runs .pytest_cache $(NATIVE)
