# The two commands: `make train` and `make test`. Both create .venv on first use.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Stamps: the package with its runtime dependencies (enough for make train), then the test extras.
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
# oneDNN convolutions for XLA:CPU (synthjax/kernels). If they cannot build, synthjax runs on XLA's own.
NATIVE := synthjax/kernels/_onednn_conv.so
NATIVE_STAMP := $(VENV)/.native
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

# Builds the kernels once per change of their sources. The stamp records the outcome ("built", or
# "failed: REASON"), so a machine that cannot build them says why once instead of retrying on every
# `make train`; `make native` always retries.
$(NATIVE_STAMP): synthjax/kernels/onednn_conv.cc synthjax/kernels/build.py $(STAMP)
	@if $(PY) -m synthjax.kernels.build > $(VENV)/native.log 2>&1; then echo built > $@; \
	else echo "failed: $$(tail -n 1 $(VENV)/native.log)" > $@; \
	  echo "make: oneDNN kernels not built ($$(tail -n 1 $(VENV)/native.log)); convolutions stay on XLA's own kernels. Log: $(VENV)/native.log"; fi

native:
	rm -f $(NATIVE_STAMP)
	$(MAKE) $(NATIVE_STAMP)
	@cat $(NATIVE_STAMP)

install: $(DEV_STAMP) $(NATIVE_STAMP)

train: $(STAMP) $(NATIVE_STAMP)
	@echo "Training $(CONFIG) into workdir: $(WORKDIR)"
	$(PY) train.py --config $(CONFIG) --workdir $(WORKDIR)
	@echo "Done. Samples and metrics are in $(WORKDIR)"

test: $(DEV_STAMP) $(NATIVE_STAMP)
	$(PY) -m pytest -n 2 --dist loadgroup $(PYTEST_ARGS) tests

bench: $(DEV_STAMP) $(NATIVE_STAMP)
	$(PY) benchmarks/compare.py

clean:
	rm -rf $(VENV) runs .pytest_cache $(NATIVE)
