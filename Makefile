# The project's verbs. Every target bootstraps .venv itself, so a fresh clone needs only python3 (>= 3.11).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench bench-learning bench-drift venv clean fashion-mnist prometheus

FASHION_MNIST := /usr/share/datasets/fashion-mnist

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's dataset-fashion-mnist where it can be installed (root, apt); the demo falls back to digits.
fashion-mnist:
	@test -d $(FASHION_MNIST) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; }; } || \
	  echo "dataset-fashion-mnist could not be installed: the demo streams scikit-learn's digits"

demo: $(STAMP) fashion-mnist
	$(VENV)/bin/lifelong demo

lint: $(STAMP)
	$(VENV)/bin/ruff check lifelong tests bench
	$(VENV)/bin/ruff format --check lifelong tests bench
	$(VENV)/bin/mypy

# Debian's prometheus (promtool) for the tests that check deploy/ against a real server; skipped without.
prometheus:
	@command -v promtool >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null 2>&1 || \
	    { apt-get update -q >/dev/null 2>&1 && \
	      DEBIAN_FRONTEND=noninteractive apt-get install -y -q prometheus >/dev/null 2>&1; }; }; } || \
	  echo "prometheus could not be installed: the deploy/ tests that need it are skipped"

test: lint prometheus
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) bench/ingest.py --json
	$(PY) bench/memory.py --json
	$(PY) bench/update.py --json

# Continual-learning quality (about 25 minutes on 2 CPU cores); Fashion-MNIST from Debian's package.
bench-learning: $(STAMP)
	$(PY) bench/learning.py --scenario split-digits --memory 500 --round 100 --json
	$(PY) bench/learning.py --scenario split-fashion-mnist --memory 500 --json
	$(PY) bench/learning.py --scenario permuted-fashion-mnist --memory 500 --json
	$(PY) bench/learning.py --scenario rotated-fashion-mnist --memory 500 --json

# The daemon on drifting tabular streams against River, labels 500 samples late (about 5 minutes).
bench-drift: $(STAMP)
	$(PY) bench/drift.py --json

clean:
	rm -rf $(VENV) demo-state demo-report .pytest_cache .mypy_cache .ruff_cache
