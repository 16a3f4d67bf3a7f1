# Set-up and everyday commands. Every install uses constraints.txt (torch pinned).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Real datasets for the tests (CI has ../shared/data beside the checkout).
AEVB_DATA_DIR ?= $(abspath ../shared/data)
export AEVB_DATA_DIR

.PHONY: demo test lint format bench install

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

## The main job: train on the embedded digits data; the run lands in runs/digits (figures/ inside).
demo: install
	rm -rf runs/digits
	$(BIN)/aevb train --out runs/digits

## The test suite (what CI runs).
test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

format: install
	$(BIN)/ruff format src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_train.py
