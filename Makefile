# `make demo` and `make test` set up .venv/ on first use and reuse it afterwards.
PYTHON ?= python3
VENV := .venv
DEMO_OUT ?= demo_output
DEMO_ARGS ?=
STAMP := $(VENV)/.installed

.PHONY: demo test

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ue-dpo demo --out $(DEMO_OUT) $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)
