# dreambot — `make test` and `make run` are the two commands a new user needs.
SHELL := /bin/bash
VENV := .venv
BIN := $(VENV)/bin
PYTHON ?= $(shell command -v python3.11 || command -v python3)
STAMP := $(VENV)/.stamp-install
EXTRAS ?= bot,worker,s3,dev

.PHONY: install test ci lint typecheck pytest pytest-all run bench format clean

# (Re)install when the venv is missing or pyproject.toml changed since the last install.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]'
	@touch $(STAMP)

install: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy dreambot bot storage trainer/cli.py trainer/cli_train.py trainer/cli_support.py trainer/config.py trainer/errors.py trainer/worker trainer/checkpoints trainer/train_config.py

# Everyday run: everything not marked slow, with a quick Hypothesis profile.
pytest: $(STAMP)
	HYPOTHESIS_PROFILE=dev $(BIN)/pytest -m "not slow"

# CI: every test, slow ones included, with the thorough Hypothesis profile.
pytest-all: $(STAMP)
	HYPOTHESIS_PROFILE=ci $(BIN)/pytest

test: lint typecheck pytest

ci: lint typecheck pytest-all

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

run: $(STAMP)
	$(BIN)/dreambot up

bench: $(STAMP)
	@for b in bench/[a-z]*.py; do m=$$(basename $$b .py); echo "== bench.$$m"; \
		$(BIN)/python -m bench.$$m || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info
