# make run   start the whole shop on this machine (Ctrl-C stops it)
# make test  run the whole test suite
# make test-browser  the storefront and admin in headless Chromium (apt-get install chromium first)
# make lint  ruff
# make clean remove var/ (databases, NATS data, generated secrets)
#
# The venv is created once; the project is (re)installed only when pyproject.toml changes,
# so a second `make run` costs a timestamp check.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test test-browser lint clean

run: $(VENV)/.installed
	$(BIN)/cartwheel up

test: $(VENV)/.installed-dev
	$(BIN)/pytest $(PYTEST_ARGS)

test-browser: $(VENV)/.installed-dev
	$(BIN)/pytest tests/e2e/browser $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .

clean:
	rm -rf var

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[local]"
	touch $@

# dev extras include everything `run` needs, so they satisfy its stamp too
$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -e ".[dev]"
	touch $@ $(VENV)/.installed
