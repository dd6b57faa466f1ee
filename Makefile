# Two entry points: `make demo` and `make test`. Both create .venv when missing and install the
# project (editable) with constraints.txt; re-running them reinstalls only when pyproject.toml or
# constraints.txt changed.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.fxquant-installed
PYTEST_ARGS ?=

.PHONY: demo test test-fast install clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --upgrade pip
	$(VENV)/bin/python -m pip install -q -c constraints.txt -e '.[test,demo]'
	@touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fxquant demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The inner loop: everything but the slow model-zoo sweeps.
test-fast: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
