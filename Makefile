# `make demo` and `make test` each create .venv when missing, install medsynth with the tested pins
# (constraints.txt) and run. Only python3 (3.10+) is needed beforehand.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.medsynth-installed

.PHONY: install tools demo test lint bench docs clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".[test]"
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/medsynth demo

# DICOM/NIfTI validators for the export conformance tests and headless chromium for the report tests
# (Debian packages); installed only when one is missing, with sudo only when not root. Without them those
# tests fail under CI=1 and skip locally.
EXPORT_TOOLS := dciodvfy dcentvfy dcmftest dcm2niix
REPORT_TOOLS := chromium
tools:
	@missing=""; pkgs=""; \
	for t in $(EXPORT_TOOLS); do command -v $$t >/dev/null 2>&1 || missing="$$missing $$t"; done; \
	if [ -n "$$missing" ]; then pkgs="dicom3tools dcmtk dcm2niix"; fi; \
	for t in $(REPORT_TOOLS); do command -v $$t >/dev/null 2>&1 || { missing="$$missing $$t"; pkgs="$${pkgs:+$$pkgs }chromium"; }; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing $$pkgs (missing:$$missing)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; \
	  else echo "not root and no sudo: install $$pkgs yourself" >&2; exit 1; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$pkgs; \
	fi

test: $(STAMP) tools
	$(BIN)/python -m pytest -n 2 -q -p no:cacheprovider --durations=25

lint: $(STAMP)
	$(BIN)/python -m pip install --quiet ruff && $(BIN)/ruff check medsynth tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_data.py

# the documentation site (mkdocs.yml over docs/) into site/; --strict fails on broken links and pages missing from nav
docs: $(STAMP)
	$(BIN)/python -m mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs .pytest_cache
