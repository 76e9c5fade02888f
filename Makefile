PY ?= python3

.PHONY: install test test-fast lint bench

install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e .[dev]

test:
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"

lint:
	$(PY) -m ruff check .

bench:
	$(PY) -m benchmarks.run
