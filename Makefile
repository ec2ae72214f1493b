# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
# The Makefile creates and reuses a local virtualenv (.venv): `make` (or
# `make test`) installs the project in editable mode with the dev extra plus
# the interoperability suite (interop/); `make demo` installs only the project.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-dev
BASE    = $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck check clean

# Everything for development: the dev extra (tests, linters) and m2mproto-interop.
$(STAMP): pyproject.toml interop/pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]' -e ./interop
	touch $(STAMP) $(BASE)

# Just the library and the m2m command (what the demo needs).
$(BASE): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e .
	touch $(BASE)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

demo: $(BASE)
	$(BIN)/m2m demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The suite without the tests marked slow (long soak and scale runs).
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check m2mproto interop

typecheck: $(STAMP)
	$(BIN)/mypy m2mproto

check: test lint typecheck

# The documentation site, built into site/ with warnings (broken links included) as errors.
.PHONY: docs
DOCS_STAMP = $(VENV)/.installed-docs

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e '.[docs]'
	touch $(DOCS_STAMP)

docs: $(DOCS_STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
