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

# Debian packages the tests use, installed when one of commands $(1) is missing: packages $(2)
# (as root; otherwise the command to run is printed). Their services must not start on install:
# a policy-rc.d that refuses starts is put in place when the machine has none (Docker images
# ship one), and removed after.
define debian
	@missing=; for c in $(1); do command -v $$c >/dev/null || missing=1; done; [ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then \
	    own=; [ -e /usr/sbin/policy-rc.d ] || { own=1; printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; }; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(2) >/dev/null; \
	    status=$$?; [ -z "$$own" ] || rm -f /usr/sbin/policy-rc.d; exit $$status; \
	  else echo "$(1): missing; run 'sudo apt-get install $(2)' and retry"; exit 1; fi; }
endef

# redis-cli (redis-tools) forms the tests' Redis Cluster.
redis-server:
	$(call debian,redis-server redis-cli,redis-server redis-tools)

# promtool checks and unit-tests the alert rules; the alerting test runs a real Prometheus.
prometheus:
	$(call debian,prometheus promtool,prometheus)

# wrk: the C-speed HTTP client `mlgate bench --client wrk` drives.
wrk:
	$(call debian,wrk,wrk)

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
