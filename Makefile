# Two commands do all set-up on a fresh clone: `make demo` and `make test`.
# The Makefile creates and reuses a local virtualenv (.venv): `make` (or
# `make test`) installs the project in editable mode with the dev extra plus
# the interoperability suite (interop/); `make demo` installs only the project.

PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed-dev
BASE    = $(VENV)/.installed

.PHONY: demo test test-fast lint typecheck check clean compiled test-compiled

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

# Optional accelerator: the sans-IO core compiled with mypyc (setup.py, M2M_COMPILE=1)
# into its own virtualenv. The install is NOT editable and is built outside the
# source tree's package directory (a stale .so next to the .py files would silently
# shadow edits), so the checkout itself always stays pure Python.
CVENV   = .venv-compiled
CBIN    = $(CVENV)/bin
CSTAMP  = $(CVENV)/.installed-compiled
CORE_SOURCES = $(shell find m2mproto -name '*.py') setup.py pyproject.toml

$(CSTAMP): $(CORE_SOURCES) interop/pyproject.toml
	[ -x $(CBIN)/python ] || $(PYTHON) -m venv $(CVENV)
	$(CBIN)/python -m pip install --quiet --upgrade pip
	$(CBIN)/python -m pip install --quiet 'setuptools>=77' wheel mypy
	# Dependencies first (mypyc type-checks against them), then the compiled package.
	$(CBIN)/python -m pip install --quiet --no-build-isolation '.[dev,fuzz]' ./interop
	rm -rf build
	M2M_COMPILE=1 $(CBIN)/python -m pip install --quiet --no-build-isolation \
		--force-reinstall --no-deps .
	rm -rf build
	PYTHONSAFEPATH=1 $(CBIN)/python -c 'import m2mproto, sys; sys.exit(0 if m2mproto.COMPILED else "not compiled")'
	# The checkout AFTER site-packages (bench, fuzz and tests' helpers import from it;
	# m2mproto itself resolves to the installed, compiled package first).
	echo "$(CURDIR)" > "$$($(CBIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/m2mproto-checkout.pth"
	# It also is what `make demo VENV=.venv-compiled` needs (tests run that): keep it as is.
	touch $(CSTAMP) $(CVENV)/.installed

compiled: $(CSTAMP)

# The whole suite, the in-process conformance run and every fuzzer against the
# compiled build. PYTHONSAFEPATH keeps the checkout off sys.path (the installed,
# compiled package is imported); M2M_EXPECT_COMPILED makes a test fail if the
# pure package was imported after all.
test-compiled: $(CSTAMP)
	PYTHONSAFEPATH=1 M2M_EXPECT_COMPILED=1 $(CBIN)/python -m pytest -q -p no:cacheprovider
	PYTHONSAFEPATH=1 $(CBIN)/m2m interop run -q
	M2M_EXPECT_COMPILED=1 PYTHON=$(CURDIR)/$(CBIN)/python $(CBIN)/python fuzz/run 10

clean:
	rm -rf $(VENV) $(CVENV) build .pytest_cache .mypy_cache .ruff_cache .hypothesis
