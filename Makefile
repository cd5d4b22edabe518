# Two commands for a fresh machine (only python3 >= 3.10 needed):
#   make demo   set up, then run a live windowed query over the built-in Nexmark generator
#   make test   set up, then run lint, type checks and the whole test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_ARGS ?= --duration 30
# pytest-xdist workers for `make pytest` (CI has 2 cores; many slow tests wait on a broker, a
# kernel or a subprocess, so one more worker than cores). PYTEST_WORKERS=0 runs in-process.
# The tests marked `serial` (a time budget that a loaded machine would break) run after, alone.
PYTEST_WORKERS ?= 3
PYTEST_ARGS ?=

.PHONY: setup system-deps kafka schema-registry browser-deps demo test lint typecheck pytest bench peers clean

setup: $(VENV)/.installed

# java + maven for the real Kafka broker the tests start; the broker's jars (cached once)
system-deps:
	scripts/install-system-deps

kafka: system-deps setup
	scripts/kafka-local fetch

# a Confluent-compatible Schema Registry (Apicurio, built once from Maven Central jars)
schema-registry: system-deps
	scripts/schema-registry-local fetch

# Debian chromium + playwright-core (npm, from the lockfile) for the real-browser test
browser-deps: setup
	scripts/install-browser-deps $(PY)

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

demo: setup
	$(PY) -m streamnb demo $(DEMO_ARGS)

lint: setup
	$(PY) -m ruff check streamnb tests bench
	$(PY) -m ruff format --check streamnb tests bench
	$(VENV)/bin/lint-imports

typecheck: setup
	$(PY) -m mypy

pytest: setup kafka schema-registry browser-deps
	rc=0; \
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadgroup -m 'not serial' $(PYTEST_ARGS) || rc=$$?; \
	$(PY) -m pytest -m serial $(PYTEST_ARGS) || { s=$$?; [ $$s -eq 5 ] || rc=$$s; }; \
	exit $$rc

test: lint typecheck pytest

# Every benchmark that writes a section of BENCHMARKS.md, one after another, each with its
# defaults (hours on the 2-core machine; see bench/README.md), then the peers and their plots.
# disk_state.py needs root (a memory cgroup): skipped, and said so, otherwise.
# keyed_windows.py and keyed_sessions.py print tables only (kept by hand in BENCHMARKS.md).
bench: setup system-deps kafka schema-registry
	$(PY) bench/nexmark_memory.py
	$(PY) bench/notebook_latency.py
	$(PY) bench/kernel_throughput.py
	$(PY) bench/nexmark_kafka.py
	$(PY) bench/registry_kafka.py
	$(PY) bench/nexmark_joins.py
	$(PY) bench/worker_kafka.py
	$(PY) bench/table_bootstrap.py
	$(PY) bench/worker_joins.py
	$(PY) bench/keyed_state.py --write
	$(PY) bench/worker_keyed_state.py --write
	if [ "$$(id -u)" = 0 ]; then $(PY) bench/disk_state.py --write; \
	else echo "bench: disk_state.py skipped (needs root: sudo $(PY) bench/disk_state.py --write)"; fi
	$(PY) bench/peers.py $(PEERS_ARGS)
	$(PY) bench/peers.py $(LATENCY_FLOOR_ARGS)

# streamnb against the plain loop alone, five runs a cell: the latency-floor section
LATENCY_FLOOR_ARGS = --modes latency --engines streamnb,plain --latency-queries q1,w1 \
	--rates 10000,50000 --latency-seconds 20 --repeats 5 --section latency-floor

# streamnb next to Kafka Streams, Spark, Quix Streams, Bytewax, Faust and a plain consumer
peers: setup system-deps kafka
	$(PY) bench/peers.py $(PEERS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
