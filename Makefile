PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_STAMP := $(VENV)/.lint-installed

.PHONY: install test demo bench lint clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(LINT_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $(LINT_STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/mcsync demo

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(LINT_STAMP)
	$(BIN)/python -m ruff check mcsync tests
	$(BIN)/python -m ruff format --check mcsync tests
	$(BIN)/python -m mypy mcsync

clean:
	rm -rf $(VENV) *.egg-info
