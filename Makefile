# Two entry points (see README): `make demo` and `make test`. Both set up .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export POISONLAB_THREADS ?= 2

$(BIN)/.installed: requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	$(BIN)/pip install -q --disable-pip-version-check --no-deps -e .
	touch $@

setup: $(BIN)/.installed

demo: setup
	$(BIN)/poisonlab demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

.PHONY: setup demo test
