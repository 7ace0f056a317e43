# `make demo`, `make test` and `make lint` build .venv/ from requirements.lock on first use, and again when the
# lock changes.
PYTHON ?= python3
VENV := .venv
DEMO_OUT ?= demo_output
DEMO_ARGS ?=
STAMP := $(VENV)/.installed
LINT_PATHS := plugin tests bench tools

.PHONY: demo test lint lock

$(STAMP): requirements.lock pyproject.toml tools/locked_env.py
	$(PYTHON) tools/locked_env.py sync --venv $(VENV)
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ue-dpo demo --out $(DEMO_OUT) $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

# ruff's lint rules and formatting (pyproject.toml's [tool.ruff]); `ruff format $(LINT_PATHS)` and
# `ruff check --fix $(LINT_PATHS)` repair what they can.
lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# Re-resolve requirements.lock from pyproject.toml's ranges (newest releases within them).
lock:
	$(PYTHON) tools/locked_env.py lock --venv $(VENV)
