PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
LINT_STAMP := $(VENV)/.lint-installed

# Debian's chromium renders `mcsync report --html` in tests/test_report_browser.py.
CHROMIUM := /usr/bin/chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)

.PHONY: install browser test demo bench lint package-check clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

$(LINT_STAMP): $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,lint]'
	touch $(LINT_STAMP)

install: $(STAMP) browser

# Installs chromium with apt-get when it is missing and apt-get is there (else the browser test
# skips; CI sets MCSYNC_REQUIRE_BROWSER so it fails instead).
browser:
	@if [ ! -x $(CHROMIUM) ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing chromium for the report's browser test"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium \
		|| { $(SUDO) apt-get update -q && $(SUDO) env DEBIAN_FRONTEND=noninteractive \
			apt-get install -y chromium; } \
		|| echo "could not install chromium: the browser test will skip"; \
	fi

test: $(STAMP) browser
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/mcsync demo

bench: $(STAMP)
	$(BIN)/python bench/run.py

lint: $(LINT_STAMP)
	$(BIN)/python -m ruff check mcsync tests
	$(BIN)/python -m ruff format --check mcsync tests
	$(BIN)/python -m mypy mcsync

# Build the wheel and sdist, install the wheel into a fresh venv (no checkout on the path) and
# run it: a packaging mistake (missing package data, undeclared dependency) fails here.
PKG_VENV := .pkg-venv
package-check: $(STAMP)
	$(BIN)/pip install --quiet -e '.[test,package]'
	rm -rf dist $(PKG_VENV)
	$(BIN)/python -m build --quiet --outdir dist .
	$(PYTHON) -m venv $(PKG_VENV)
	$(PKG_VENV)/bin/pip install --quiet dist/*.whl
	cd /tmp && $(CURDIR)/$(PKG_VENV)/bin/mcsync --help >/dev/null
	cd "$$(mktemp -d)" && $(CURDIR)/$(PKG_VENV)/bin/mcsync demo >/dev/null
	@echo "package-check: wheel and sdist built; the installed wheel ran --help and demo"

clean:
	rm -rf $(VENV) $(PKG_VENV) dist build *.egg-info
