# `make demo` and `make test` build .venv/ from requirements.lock on first use, and again when the lock changes.
PYTHON ?= python3
VENV := .venv
DEMO_OUT ?= demo_output
DEMO_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: demo test lock

$(STAMP): requirements.lock pyproject.toml tools/locked_env.py
	$(PYTHON) tools/locked_env.py sync --venv $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ue-dpo demo --out $(DEMO_OUT) $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# Re-resolve requirements.lock from pyproject.toml's ranges (newest releases within them).
lock:
	$(PYTHON) tools/locked_env.py lock --venv $(VENV)
