# normfuse: `make demo` (the main job) and `make test`. Each sets up .venv by itself.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.normfuse-installed
PYTEST_ARGS ?=

.PHONY: demo test venv sysdeps bench lint clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch first (the CPU wheel), so nothing later pulls a multi-GB CUDA build.
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

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

lint: $(STAMP)
	$(VENV)/bin/ruff check normfuse normative features models analyses tests benchmarks

clean:
	rm -rf demo-output .pytest_cache build *.egg-info
