# The verbs: setup, run, test, bench, lint, install, deb.
VENV     := .venv
PY       := $(VENV)/bin/python
# What running needs (Debian packages, .venv with portwatchd), and what
# testing adds (build tools, the pinned tools of requirements-dev.txt).
RUN_STAMP := $(VENV)/.run-stamp
STAMP    := $(VENV)/.setup-stamp
RUN_ARGS ?=
BENCH_ARGS ?=
PYTEST_ARGS ?=

.PHONY: setup run test bench lint install uninstall deb clean

setup:
	./scripts/setup.sh all

$(RUN_STAMP): pyproject.toml scripts/setup.sh
	./scripts/setup.sh run

$(STAMP): pyproject.toml requirements-dev.txt scripts/setup.sh
	./scripts/setup.sh test

# The daemon in the foreground, on built-in defaults, state and socket
# under ./run so that it needs nothing installed system-wide, and events on
# this terminal rather than in the journal. It needs no PyPI.
run: $(RUN_STAMP)
	$(VENV)/bin/portwatchd --state-dir run/state --socket run/control.sock \
		--log-target stderr $(RUN_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# No setup prerequisite: setup needs the network, install must work without.
install:
	./scripts/install.sh

uninstall:
	./scripts/install.sh --uninstall

deb: $(STAMP)
	./scripts/deb.sh

clean:
	rm -rf run dist build *.egg-info .pytest_cache .mypy_cache .ruff_cache
