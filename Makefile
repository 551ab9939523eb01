# One venv inside the repo; every target installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA := loadtest/data/online_retail.csv.gz

.PHONY: install test test-nojit bench eval run clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The kernels' pure-Python twins: the whole suite with the JIT off.
test-nojit: $(STAMP)
	NUMBA_DISABLE_JIT=1 $(BIN)/python -m pytest -q

eval: $(STAMP)
	$(BIN)/covisit eval --preset online-retail --data $(DATA)

bench: $(STAMP)
	$(BIN)/python loadtest/bench_core.py

clean:
	rm -rf $(VENV) build *.egg-info
