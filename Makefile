# photoindex: `make index DIR=~/Pictures` installs everything and indexes a folder;
# `make test` installs everything and runs the checks and tests (CI runs exactly this).
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
DIR ?=

.PHONY: install index serve test test-fast lint

$(BIN)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/.installed

index: install
	@test -n "$(DIR)" || { echo "usage: make index DIR=/path/to/photos" >&2; exit 2; }
	$(BIN)/photoindex index "$(DIR)"

serve: install
	$(BIN)/photoindex serve

lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install lint
	$(BIN)/pytest -q -ra

# The developer's loop: lint, types and every test that needs no session, server or browser.
test-fast: install lint
	$(BIN)/pytest -q -ra -m "not slow"
