# Set-up and everyday commands. Every install uses constraints.txt (torch pinned).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# Real datasets for the tests (CI has ../shared/data beside the checkout).
AEVB_DATA_DIR ?= $(abspath ../shared/data)
export AEVB_DATA_DIR

.PHONY: demo test lint typecheck format bench install docs docs-serve package

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

## The main job: train on the embedded digits data; the run lands in runs/digits (figures/ inside).
demo: install
	rm -rf runs/digits
	$(BIN)/aevb train --out runs/digits

## The test suite (what CI runs), one pytest-xdist worker per core.
test: install
	$(BIN)/python -m pytest -q -n auto

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

## Static type check of src/aevb (configuration: [tool.mypy] in pyproject.toml).
typecheck: install
	$(BIN)/mypy

format: install
	$(BIN)/ruff format src tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_train.py

## Build the sdist and wheel, twine check them, install the wheel into a fresh venv and train
## from it (.ci/package-check; a few minutes).
package: install
	PYTHON=$(PYTHON) BUILD_PYTHON=$(BIN)/python .ci/package-check

## The documentation site (mkdocs.yml): built into site/, every link and API reference checked.
docs: install
	$(BIN)/mkdocs build --strict

docs-serve: install
	$(BIN)/mkdocs serve
