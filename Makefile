# Two commands do everything on a fresh machine: `make train` and `make test`.
PY      ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed

.PHONY: setup data train test lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

data: setup
	$(BIN)/lenet data fetch

train: data
	$(BIN)/lenet train

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint data
	$(BIN)/pytest

bench: data
	$(BIN)/python benchmarks/bench_train.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .ruff_cache
