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

setup: $(BIN)/.installed browser

# Chromium for the browser tests (tests/test_web.py, tests/test_report.py): Debian's packages, installed when
# missing and we are root; Playwright drives /usr/bin/chromium and never downloads a browser of its own.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "make setup: installing chromium and chromium-driver (browser tests)"; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) \
	      || echo "make setup: apt-get could not install chromium; the browser tests will fail" >&2; \
	  else echo "make setup: chromium is missing; as root: apt-get install -y chromium chromium-driver" >&2; fi; }

demo: setup
	$(BIN)/poisonlab demo

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider

.PHONY: setup browser demo test
