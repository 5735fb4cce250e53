# beambridge: the two commands a fresh Debian machine needs are `make demo` and `make test`.
# Each installs what is missing itself (Debian's Erlang packages, a virtualenv, the package).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# What the demo needs: Erlang with MochiWeb (jiffy for fast JSON), and gcc with python3-dev for the
# compiled term codec (without them the pure-Python one is used). The tests need more: the
# Erlang sources and tools (dialyzer checks the Erlang side), EUnit, and the clients we did not
# write (Elixir, Jinterface on Java 17), the test network (iproute2, openssl) and a browser for
# the dashboard (chromium, chromium-driver; tmux for `beambridge top`).
DEMO_DEB := erlang-nox erlang-mochiweb erlang-jiffy gcc python3-dev
TEST_DEB := $(DEMO_DEB) erlang-dev erlang-src erlang-eunit erlang-dialyzer \
            elixir erlang-jinterface openjdk-17-jre-headless iproute2 openssl \
            chromium chromium-driver tmux
DEMO_STAMP := $(VENV)/.installed-demo
PURE_TESTS := tests/term tests/protocol tests/node tests/thirdparty
STAMP  := $(VENV)/.installed

# $(call install,DEBIAN PACKAGES,PIP EXTRAS): what is missing of each, then the package itself.
define install
	@missing=""; for p in $(1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[$(2)]'
endef

.PHONY: setup setup-demo demo test test-fast lint bench fuzz clean

setup: $(STAMP)
setup-demo: $(DEMO_STAMP)

$(STAMP): pyproject.toml setup.py src/beambridge/term/_cterm.c src/beambridge/node/_cwait.c
	$(call install,$(TEST_DEB),test)
	touch $(STAMP) $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml setup.py src/beambridge/term/_cterm.c src/beambridge/node/_cwait.c
	$(call install,$(DEMO_DEB),demo)
	touch $(DEMO_STAMP)

## The main job on a local default: a local cluster, a web app on it, both roads, and the
## cluster beside plain Python and multiprocessing on one question. DEMO_ARGS="--serve" etc.
demo: setup-demo
	$(PY) -m beambridge demo $(DEMO_ARGS)

## The whole test suite (both OTP releases, property and fuzz tests, lint and types).
test: setup
	$(PY) -m ruff check
	$(PY) -m mypy
	$(PY) -m pytest $(PYTEST_ARGS)
	@# Again on the pure-Python codec (the run above uses the compiled one): the suites where
	@# terms are encoded and decoded, the codec itself, the protocol core, and the node against
	@# real Erlang and third-party clients. The layers above reach the codec only through them.
	@# Its nodes run asyncio's own loop (the run above: uvloop, BlockingNode's default when installed).
	BEAMBRIDGE_PURE_PYTHON=1 BEAMBRIDGE_LOOP=asyncio $(PY) -m pytest $(PURE_TESTS) $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -x -q -m 'not slow' $(PYTEST_ARGS)

## The compiled decoder under AddressSanitizer for longer than the test run's 20 s (FUZZ_SECONDS).
FUZZ_SECONDS ?= 600
fuzz: setup
	BEAMBRIDGE_ASAN_REQUIRED=1 BEAMBRIDGE_ASAN_SECONDS=$(FUZZ_SECONDS) $(PY) -m pytest -q tests/term/test_sanitizer.py

lint: setup
	$(PY) -m ruff check
	$(PY) -m mypy

## Codec benchmark against BEAM and the PyPI peers (bench/README.md); BENCH_ARGS="--quick" etc.
bench: setup
	$(PY) bench/run.py --install-peers
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) _build .pytest_cache .mypy_cache .ruff_cache .hypothesis
