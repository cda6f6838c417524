# Every target creates .venv itself on a fresh machine, installing only what it needs:
# `make demo` the package with its CLI extra; `make test` the dev tools too (a
# dependency group, which needs pip >= 25.1); `make bench` the alternatives measured.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip -q --disable-pip-version-check

# A .venv made by another Python (an older one, another minor version, or one since
# removed) is rebuilt instead of reused: checked each time make reads this file.
PY_ID := import sys; print(sys.implementation.name, *sys.version_info[:2])
WANT := $(shell $(PYTHON) -c '$(PY_ID)' 2>/dev/null)
HAVE := $(shell $(BIN)/python -c '$(PY_ID)' 2>/dev/null)
ifneq ($(WANT),$(HAVE))
$(shell rm -rf $(VENV))
endif

.PHONY: test demo bench lint typecheck docs dist-check

$(BIN)/python:
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "plexd-api needs Python 3.11 or newer; run make with PYTHON=python3.11 (or newer)")'
	$(PYTHON) -m venv $(VENV)

$(VENV)/.demo: pyproject.toml | $(BIN)/python
	$(PIP) install -e '.[cli]'
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(PIP) install --upgrade 'pip>=25.1'
	$(PIP) install -e '.[cli,emulator]' --group dev
	touch $@ $(VENV)/.demo

$(VENV)/.bench: pyproject.toml $(VENV)/.dev
	$(PIP) install --group bench
	touch $@

$(VENV)/.docs: pyproject.toml $(VENV)/.dev
	$(PIP) install --group docs
	touch $@

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench examples scripts

typecheck: $(VENV)/.dev
	$(BIN)/mypy --strict src examples

test: lint typecheck
	$(BIN)/pytest -W error

demo: $(VENV)/.demo
	$(BIN)/plexd-api demo

bench: $(VENV)/.bench
	@for b in bench/bench_*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# The documentation site (site/): warnings fail the build, and every public name must be
# in the API reference.
docs: $(VENV)/.docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site
	$(BIN)/python scripts/check_docs_reference.py site

# The wheel and sdist as a user gets them: built, checked by twine, and the wheel
# installed and imported in a clean venv of its own.
dist-check: $(VENV)/.dev
	rm -rf dist .dist-venv
	$(BIN)/python -m build -q --outdir dist .
	$(BIN)/twine check --strict dist/*
	$(PYTHON) -m venv .dist-venv
	.dist-venv/bin/python -m pip -q --disable-pip-version-check install "$$(ls dist/*.whl)[cli]"
	cd / && $(CURDIR)/.dist-venv/bin/python -c 'import plexd.api, plexd.api.errors, plexd.emulator; print("wheel imports: plexd-api", plexd.api.__version__)'
	.dist-venv/bin/plexd-api --version
	rm -rf .dist-venv
