# hestkit: set-up, demo, tests. Every target creates the virtual environment first.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]' -c constraints.txt
	touch $@

setup: $(VENV)/.installed

## Generate a synthetic cohort, ingest it, print the catalog and write a spatial plot.
demo: setup
	$(VENV)/bin/hestkit demo demo

## The test suite (about 6-7 minutes on 2 cores, after a first set-up of 3-6 minutes).
test: setup
	$(VENV)/bin/pytest -q

lint: setup
	$(VENV)/bin/ruff check hestkit catalog seal cli tests bench
	$(VENV)/bin/mypy

bench: setup
	$(PY) bench/bench_block_vs_region.py

clean:
	rm -rf $(VENV) demo .pytest_cache .mypy_cache .ruff_cache
