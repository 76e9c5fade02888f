PY ?= python3

.PHONY: install browser-deps web test test-fast lint bench bench-sd gpu-check

EXTRAS ?= dev
install:
	$(PY) -m pip install torch==2.13.0
	$(PY) -m pip install -e .[$(EXTRAS)]

# What the browser tests need: Debian's chromium, Playwright for Python (it drives that chromium; no browser
# download), and the web viewers of web/package.json in a cache folder.
browser-deps:
	@command -v chromium >/dev/null || (apt-get update && apt-get install -y --no-install-recommends chromium)
	$(PY) -m pip install -e .[browser]
	$(MAKE) web

WEB_CACHE ?= $(HOME)/.cache/lodsgs-web
web:
	mkdir -p $(WEB_CACHE)
	cp web/package.json web/package-lock.json $(WEB_CACHE)/
	cd $(WEB_CACHE) && npm ci --no-audit --no-fund

test:
	$(PY) -m pytest -q

test-fast:
	$(PY) -m pytest -q -m "not slow"

lint:
	$(PY) -m ruff check .

bench:
	$(PY) -m benchmarks.run

bench-sd:
	$(PY) -m benchmarks.run sd

# On a CUDA machine without a package index: put the wheels it lacks (gsplat, diffusers, transformers, peft,
# plyfile, typer, rich, ...) in .whl/ and they are installed to /tmp/lodsgs-site first.
gpu-check:
	@if ls .whl/*.whl >/dev/null 2>&1; then \
	  $(PY) -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/lodsgs-site .whl/*.whl; fi
	PYTHONPATH=/tmp/lodsgs-site:$(CURDIR):$$PYTHONPATH $(PY) -m benchmarks.gpu_check --out .
