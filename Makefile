# The README's two commands are `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# `make demo` installs the runtime alone; `make test` adds the dev and bench extras to the same
# venv. Each has its own stamp, so neither one's install stands in for the other's.
DEMO_STAMP := $(VENV)/.installed-runtime
TEST_EXTRAS := [dev,bench]
# pytriton (a tritonserver for the Triton backend's tests) pins its own numpy: a venv of its own.
TRITON_VENV := .venv-triton
TRITON_STAMP := $(TRITON_VENV)/.installed

.PHONY: demo test lint typecheck unit bench models redis-server prometheus wrk triton-venv clean

define install
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.$(1)'
	touch $@
endef

$(STAMP): pyproject.toml
	$(call install,$(TEST_EXTRAS))

$(DEMO_STAMP): pyproject.toml
	$(call install,)

$(TRITON_STAMP): tests/triton_support/requirements.txt
	test -x $(TRITON_VENV)/bin/python || $(PY) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install -q -r tests/triton_support/requirements.txt
	touch $(TRITON_STAMP)

triton-venv: $(TRITON_STAMP)

# MLGATE_PORT (and every other MLGATE_* setting) picks the port: MLGATE_PORT=8080 make demo
demo: $(DEMO_STAMP)
	$(BIN)/mlgate serve

# redis-cli (redis-tools) forms the tests' Redis Cluster.
redis-server:
	@command -v redis-server >/dev/null && command -v redis-cli >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server redis-tools >/dev/null; \
	  else echo "redis-server or redis-cli is missing: run 'sudo apt-get install redis-server redis-tools' and retry"; exit 1; fi; }

# promtool checks and unit-tests the alert rules; the alerting test runs a real Prometheus.
# Its service must not start on install: a policy-rc.d that refuses starts is put in place for
# the install when the machine has none (Docker images ship one), and removed after.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    own=; [ -e /usr/sbin/policy-rc.d ] || { own=1; printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; \
	    status=$$?; [ -z "$$own" ] || rm -f /usr/sbin/policy-rc.d; exit $$status; \
	  else echo "prometheus or promtool is missing: run 'sudo apt-get install prometheus' and retry"; exit 1; fi; }

# wrk: the C-speed HTTP client `mlgate bench --client wrk` drives.
wrk:
	@command -v wrk >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq wrk >/dev/null; \
	  else echo "wrk is missing: run 'sudo apt-get install wrk' and retry"; exit 1; fi; }

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# MLGATE_REQUIRE_TRITON: the Triton tests fail rather than skip when the Triton venv is missing.
test: $(STAMP) redis-server prometheus wrk triton-venv lint typecheck
	MLGATE_REQUIRE_TRITON=1 $(BIN)/pytest -q

models: $(STAMP)
	$(BIN)/python -m models.build

bench: $(STAMP) redis-server wrk triton-venv
	$(BIN)/mlgate bench suite

clean:
	rm -rf $(VENV) $(TRITON_VENV) .mypy_cache .pytest_cache .ruff_cache
