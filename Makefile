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

# The suite runs in two parts: every test but those marked bigmem on one pytest-xdist worker per
# core (at most 4; each file stays whole on one worker, so its fixtures are built once; torch
# keeps its thread count, whose waiting threads sleep instead of spinning), then the
# bigmem tests (the largest model-zoo models, several GB each) one at a time in one process, so
# that two of them never add up. PYTEST_ARGS go to both parts; a part with no test selected
# (pytest's exit status 5) is not a failure.
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); [ $$n -gt 4 ] && n=4; echo $$n)
XDIST := -n $(WORKERS) --dist loadfile

test: $(STAMP)
	@OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/python -m pytest $(XDIST) -m "not bigmem" $(PYTEST_ARGS); \
	a=$$?; \
	$(VENV)/bin/python -m pytest -m bigmem $(PYTEST_ARGS); b=$$?; \
	[ $$a -eq 5 ] && a=0; [ $$b -eq 5 ] && b=0; \
	echo "make test: parallel part exit status $$a, bigmem part $$b"; \
	[ $$a -eq 0 ] && [ $$b -eq 0 ]

# The inner loop: everything but the slow model-zoo sweeps (which include every bigmem test).
test-fast: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE $(VENV)/bin/python -m pytest $(XDIST) -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
