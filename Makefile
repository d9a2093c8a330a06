# Two commands set up everything on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
# Every install takes its versions from constraints.txt (the set the tests passed with); `make lock` refreshes it.
# A deployment's environment (the flower extra) cannot share it (SQLAlchemy: flwr needs 2, optuna 2.10 needs 1.4):
# `make install-flower` builds .venv-flower from constraints-flower.txt.
LOCK   ?= constraints.txt
FLOWER_VENV ?= .venv-flower
FLOWER_LOCK ?= constraints-flower.txt
PY     := $(VENV)/bin/python
DATA   ?= data
ARGS   ?=

.PHONY: run test test-fast data install install-dev install-flower lint lock bench bench-scaling bench-gpu gpu-wheels clean

$(VENV)/.installed: pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -c $(LOCK) -e '.[search]'
	$(PY) -m pip check
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install -c $(LOCK) -e '.[search,dev]'
	$(PY) -m pip check
	touch $@

$(FLOWER_VENV)/.installed: pyproject.toml $(FLOWER_LOCK)
	$(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/pip install --upgrade pip
	$(FLOWER_VENV)/bin/pip install -c $(FLOWER_LOCK) -e '.[flower,dev]'
	$(FLOWER_VENV)/bin/pip check
	touch $@

# Resolve pyproject.toml's dependencies anew in scratch venvs (base + search + dev; base + flower + dev), check
# them, and write both locks. Then run `make test` (and the flower tests) before committing them.
lock:
	$(MAKE) lock-one EXTRAS=search,dev OUT=$(LOCK) WHAT="the base install and the search and dev extras"
	$(MAKE) lock-one EXTRAS=flower,dev OUT=$(FLOWER_LOCK) WHAT="the base install and the flower and dev extras (.venv-flower)"

lock-one:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --upgrade pip && .lock-venv/bin/pip install -q -e '.[$(EXTRAS)]' && .lock-venv/bin/pip check
	{ echo "# Every package of $(WHAT) at the versions the tests passed with (make lock refreshes it)."; \
	  .lock-venv/bin/pip freeze --exclude-editable | grep -iv '^pfedla'; } > $(OUT)
	rm -rf .lock-venv

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev
install-flower: $(FLOWER_VENV)/.installed

# Fashion-MNIST offline: Debian's dataset-fashion-mnist, unpacked into $(DATA)/FashionMNIST/raw.
# Without it (and not root with apt), torchvision downloads the files on first use (needs internet).
data: $(VENV)/.installed
	@if [ ! -d /usr/share/datasets/fashion-mnist ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)); \
	fi
	$(PY) -m pfedla.datasets.fetch --root $(DATA)

run: data
	$(PY) -m pfedla.run $(ARGS)

# The whole suite needs the flower extra's environment too (tests/test_flower.py runs a real deployment).
# Lint first: a second, and style left to `make lint` alone had drifted.
test: install-dev install-flower data
	$(VENV)/bin/ruff check pfedla tests benchmarks
	PFEDLA_DATA_ROOT=$(abspath $(DATA)) $(PY) -m pytest -q --durations=25

test-fast: install-dev
	$(PY) -m pytest -q -m "not slow"

bench: data
	PFEDLA_DATA_ROOT=$(abspath $(DATA)) $(PY) benchmarks/throughput.py $(ARGS)

# The GPU check (ARGS="--smoke" runs it on the CPU in seconds). On a bare GPU machine: benchmarks/gpu.sh,
# with .whl/ (make gpu-wheels: the pure-Python packages its image lacks) and data/ carried along.
bench-gpu: data
	PY=$(PY) PFEDLA_DATA_ROOT=$(abspath $(DATA)) benchmarks/gpu.sh $(ARGS)

gpu-wheels: $(VENV)/.installed
	$(PY) -m pip download -q --no-deps --only-binary=:all: -d .whl hydra-core==1.3.2 omegaconf==2.3.0
	$(PY) -m pip wheel -q --no-deps -w .whl antlr4-python3-runtime==4.9.3

bench-scaling: data
	PFEDLA_DATA_ROOT=$(abspath $(DATA)) $(PY) benchmarks/scaling.py $(ARGS)

lint: install-dev
	$(VENV)/bin/ruff check pfedla tests benchmarks

clean:
	rm -rf outputs multirun wandb lightning_logs .pytest_cache
