# beambridge: the two commands a fresh Debian machine needs are `make demo` and `make test`.
# Each installs what is missing itself (Debian's Erlang packages, a virtualenv, the package).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# gcc and python3-dev build the compiled term codec (without them the pure-Python one is used);
# erlang-dialyzer checks the Erlang side (tests/compute/test_otp_app.py).
DEB_PACKAGES := erlang-nox erlang-dev erlang-src erlang-eunit erlang-dialyzer erlang-mochiweb erlang-jiffy gcc python3-dev
STAMP  := $(VENV)/.installed

.PHONY: setup demo test test-fast lint bench fuzz clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py src/beambridge/term/_cterm.c
	@missing=""; for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

## The main job on a local default: starts its own Erlang node, round-trips terms through it.
demo: setup
	$(PY) -m beambridge demo

## The whole test suite (both OTP releases, property and fuzz tests, lint and types).
test: setup
	$(PY) -m ruff check
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)
	@# The whole suite again on the pure-Python codec (the run above uses the compiled one).
	BEAMBRIDGE_PURE_PYTHON=1 $(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -x -q -m 'not slow' $(PYTEST_ARGS)

lint: setup
	$(PY) -m ruff check
	$(PY) -m mypy

## Codec benchmark against BEAM and the PyPI peers (bench/README.md); BENCH_ARGS="--quick" etc.
bench: setup
	$(PY) bench/run.py --install-peers
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) _build .pytest_cache .mypy_cache .ruff_cache .hypothesis
