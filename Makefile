# normfuse: `make demo` (the main job) and `make test`. Each sets up .venv by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.normfuse-installed
PYTEST_ARGS ?=

.PHONY: demo test test-pandas3 venv sysdeps bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first, pinned: on machines whose pip configuration serves the CPU wheel (the
# project's CI), nothing later pulls a multi-GB CUDA build; plain PyPI gives the CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the test suite drives for real (installed only when missing).
sysdeps:
	@bash .ci/sysdeps.sh

demo: $(STAMP)
	$(VENV)/bin/normfuse demo --out demo-output

test: $(STAMP) sysdeps
	$(PY) -m pytest $(PYTEST_ARGS)

# The code must work on pandas 2.2+ and 3.x; pcntoolkit (in [dev]) pins pandas 2.x, so a
# second environment runs the suite on pandas 3 without it (pcntoolkit tests skip).
VENV3 ?= .venv-pandas3
PY3 := $(VENV3)/bin/python
STAMP3 := $(VENV3)/.normfuse-installed

$(PY3):
	$(PYTHON) -m venv $(VENV3)
	$(PY3) -m pip install -q --upgrade pip

$(STAMP3): pyproject.toml | $(PY3)
	$(PY3) -m pip install -q torch==2.13.0
	$(PY3) -m pip install -q 'pandas>=3' pytest pytest-timeout hypothesis websocket-client \
		nbclient nbformat ipykernel -e '.[dask,sql,explain]'
	touch $(STAMP3)

test-pandas3: $(STAMP3) sysdeps
	$(PY3) -c "import pandas, sys; sys.exit(0 if int(pandas.__version__.split('.')[0]) >= 3 else 1)"
	$(PY3) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check normfuse normative features models analyses tests benchmarks

clean:
	rm -rf demo-output .pytest_cache build *.egg-info .venv-pandas3
