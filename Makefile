# Two entry points, each doing all of its own set-up on a fresh machine:
#   make demo   -> environment + the embedded default job, then a check of its rows
#   make test   -> environment + the test suite, then the ZipVL integration tests again
#                  on the lowest supported transformers, then our video processors against
#                  the stock ones in a venv where torchvision imports (what CI runs)
# Every install goes through constraints.txt (the tested set); `make lock` re-resolves it.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
CONSTRAINTS := constraints.txt
# CPU torch is installed first where no NVIDIA GPU is present: an unpinned torch
# would pull a multi-GB CUDA build. Override TORCH_SPEC / TORCH_INDEX if needed,
# e.g. TORCH_INDEX=https://download.pytorch.org/whl/cpu on a machine without a local wheel.
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
STAMP := $(VENV)/.installed
# The lowest transformers pyproject.toml admits, read from it (one source of truth).
TRANSFORMERS_LOWEST := $(shell sed -n 's/^ *"transformers>=\([0-9.]*\),.*/\1/p' pyproject.toml)
LOWEST_VENV ?= .venv-transformers-$(TRANSFORMERS_LOWEST)
LOWEST_STAMP := $(LOWEST_VENV)/.installed

.PHONY: demo test test-lowest test-video-parity lint lock bench-quick soak clean

# $(1): venv folder, $(2): constraints file, $(3): extra requirements
define install_venv
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q --upgrade pip
	$(1)/bin/python -m pip install -q -c $(2) "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	$(1)/bin/python -m pip install -q -c $(2) -e ".[test]" $(3)
endef

$(STAMP): pyproject.toml $(CONSTRAINTS)
	$(call install_venv,$(VENV),$(CONSTRAINTS),)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/zipvl-batch run jobs/captions.yaml
	$(PY) -m pipeline.demo_check output/captions

# One torch thread per process in tests: Ray workers and the test process share the
# cores, and the tiny models are overhead-bound, so more threads only oversubscribe.
test: $(STAMP)
	$(VENV)/bin/ruff check zipvl pipeline tests benchmarks
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider tests
	$(MAKE) test-lowest
	$(MAKE) test-video-parity

# The lower bound of the transformers range, tested: the same constraints with only
# transformers moved down, and the ZipVL integration tests run on it.
$(LOWEST_STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(LOWEST_VENV)/bin/python || $(PYTHON) -m venv $(LOWEST_VENV)
	grep -v '^transformers==' $(CONSTRAINTS) > $(LOWEST_VENV)/constraints.txt
	$(call install_venv,$(LOWEST_VENV),$(LOWEST_VENV)/constraints.txt,"transformers==$(TRANSFORMERS_LOWEST)")
	touch $(LOWEST_STAMP)

test-lowest: $(LOWEST_STAMP)
	$(LOWEST_VENV)/bin/python -c "import transformers; assert transformers.__version__ == '$(TRANSFORMERS_LOWEST)', transformers.__version__"
	OMP_NUM_THREADS=1 $(LOWEST_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/zipvl tests/zipvl_testing

# The stock transformers video processors need torchvision, which does not import beside
# our torch; pipeline/video_processing mirrors them without it. This venv has a torch and
# torchvision that import together and runs only the parity tests: ours against the stock
# processors. pyproject.toml admits only our torch, so the project goes in without its
# dependencies (--no-deps), and of the tested set (constraints.txt minus torch) only what
# the parity tests import comes in (no Ray, no S3 stack: minutes off the install).
# ZIPVL_REQUIRE_TORCHVISION turns the tests' skip-without-torchvision into a failure.
VIDEO_PARITY_VENV ?= .venv-torchvision
VIDEO_PARITY_STAMP := $(VIDEO_PARITY_VENV)/.installed
VIDEO_PARITY_TORCH ?= torch==2.14.1 torchvision==0.29.1
VIDEO_PARITY_DEPS ?= transformers tokenizers safetensors pillow numpy pyarrow pytest pytest-timeout

$(VIDEO_PARITY_STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(VIDEO_PARITY_VENV)/bin/python || $(PYTHON) -m venv $(VIDEO_PARITY_VENV)
	grep -v '^torch==' $(CONSTRAINTS) > $(VIDEO_PARITY_VENV)/constraints.txt
	$(VIDEO_PARITY_VENV)/bin/python -m pip install -q --upgrade pip
	$(VIDEO_PARITY_VENV)/bin/python -m pip install -q -c $(VIDEO_PARITY_VENV)/constraints.txt $(VIDEO_PARITY_TORCH)
	$(VIDEO_PARITY_VENV)/bin/python -m pip install -q -c $(VIDEO_PARITY_VENV)/constraints.txt $(VIDEO_PARITY_DEPS)
	$(VIDEO_PARITY_VENV)/bin/python -m pip install -q --no-deps -e .
	touch $(VIDEO_PARITY_STAMP)

test-video-parity: $(VIDEO_PARITY_STAMP)
	$(VIDEO_PARITY_VENV)/bin/python -c "import torchvision"
	ZIPVL_REQUIRE_TORCHVISION=1 OMP_NUM_THREADS=1 $(VIDEO_PARITY_VENV)/bin/python -m pytest -q -p no:cacheprovider \
		tests/pipeline/test_video_parity.py tests/zipvl_testing/test_tiny_video.py

# Re-resolve constraints.txt: the newest versions pyproject.toml admits, in a fresh venv.
# torch's local label (+cpu) is dropped so the same pin takes a CUDA build on a GPU
# machine. Then run `make test` before committing the new lock.
lock:
	rm -rf .venv-lock
	$(PYTHON) -m venv .venv-lock
	.venv-lock/bin/python -m pip install -q --upgrade pip
	.venv-lock/bin/python -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX),)
	.venv-lock/bin/python -m pip install -q -e ".[test]"
	{ echo "# The tested set: every runtime and test dependency, pinned. Installs use it"; \
	  echo "# (pip install -c constraints.txt ...); regenerate with \`make lock\`."; \
	  .venv-lock/bin/python -m pip freeze --all --exclude-editable | grep -v '^zipvl-batch\|^pip==' \
	  | sed 's/^\(torch==[0-9.]*\)+.*/\1/'; } > $(CONSTRAINTS)
	rm -rf .venv-lock

# 20,000 rows with actor kills, an S3 restart and a driver SIGKILL; results and a plot in
# benchmarks/results/ (about 10 minutes on 2 cores).
soak: $(STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -m soak tests/pipeline/test_soak.py --timeout 3600

lint: $(STAMP)
	$(VENV)/bin/ruff check zipvl pipeline tests benchmarks

clean:
	rm -rf $(VENV) $(LOWEST_VENV) $(VIDEO_PARITY_VENV) output runs .cache
