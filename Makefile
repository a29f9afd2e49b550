# Two entry points, each doing all of its own set-up on a fresh machine:
#   make demo   -> environment + the embedded default job
#   make test   -> environment + the test suite
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU torch is installed first where no NVIDIA GPU is present: an unpinned torch
# would pull a multi-GB CUDA build. Override TORCH_SPEC / TORCH_INDEX if needed,
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu on a machine without a local wheel.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench-quick clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q "$(TORCH_SPEC)"; \
	else \
	  $(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),); \
	fi
	$(PY) -m pip install -q -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zipvl-batch run jobs/captions.yaml

# One torch thread per process in tests: Ray workers and the test process share the
# cores, and the tiny models are overhead-bound, so more threads only oversubscribe.
test: $(STAMP)
	$(VENV)/bin/ruff check zipvl pipeline tests benchmarks
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider tests

lint: $(STAMP)
	$(VENV)/bin/ruff check zipvl pipeline tests benchmarks

clean:
	rm -rf $(VENV) output runs .cache
