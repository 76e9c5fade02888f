PY ?= python3


.PHONY: install venv constraints versions browser-deps web test test-fast test-claims lint bench bench-sd gpu-check

EXTRAS ?= dev
TORCH ?= torch==2.13.0
# empty: pip's configured index. On Linux, PyPI's torch wheel is the CUDA build (GBs of CUDA libraries); for the
# CPU build: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=
# pip constraints, e.g. CONSTRAINTS=constraints.txt: the versions CI last ran (.ci/run uses it)
CONSTRAINTS ?=
install:
	@echo "make install: $(TORCH) from $(if $(TORCH_INDEX),$(TORCH_INDEX),pip's configured index (on Linux PyPI gives \
	the CUDA build; for the CPU build: make install TORCH_INDEX=https://download.pytorch.org/whl/cpu))"
	$(PY) -m pip install $(TORCH) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(if $(CONSTRAINTS),-c $(CONSTRAINTS))
	@$(PY) -c "import torch; c = torch.version.cuda; \
	print('make install: got torch', torch.__version__, f'(CUDA {c} build)' if c else '(CPU build)')"
	$(PY) -m pip install -e .[$(EXTRAS)] $(if $(CONSTRAINTS),-c $(CONSTRAINTS))

# Debian/Ubuntu's Python refuses `pip install` outside a virtual environment (PEP 668): make one, activate it,
# then `make install` uses its python3.
VENV ?= .venv
venv:
	python3 -m venv $(VENV)
	@echo "now: . $(VENV)/bin/activate && make install"

# The versions of the packages lodsgs depends on, as pip constraints (torch without its +cpu / +cuXXX tag, so
# a GPU machine keeps its CUDA build): run after a green CI, commit constraints.txt.
PINNED = torch diffusers transformers huggingface[-_]hub peft tokenizers safetensors accelerate gsplat plyfile numpy \
	typer rich pyyaml pillow imageio viser ray matplotlib pytest pytest[-_]timeout pytest[-_]xdist execnet psutil ruff build wheel \
	scikit[-_]image scipy trimesh fast[-_]simplification playwright zstandard
constraints:
	$(PY) -m pip freeze --all --exclude-editable | grep -iE '^($(shell echo $(PINNED) | tr ' ' '|'))==' \
	  | sed 's/+.*//' > constraints.txt
	@cat constraints.txt

versions:
	@$(PY) -c "import platform, importlib.metadata as m; print('python', platform.python_version()); \
	[print(p, m.version(p)) for p in 'torch diffusers transformers huggingface_hub peft gsplat'.split()]"

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
	cd $(WEB_CACHE) && npm ci --no-audit --no-fund --ignore-scripts

# -n 2 (pytest-xdist): two worker processes, one torch thread each, so both cores of a 2-core CI box are busy
# (one pytest process at one thread left the second idle for most of the suite); worksteal: an idle worker
# takes queued tests from the busy one (a few tests take minutes)
XDIST ?= -n 2 --dist worksteal
test:
	$(PY) -m pytest -q $(XDIST)

# the exhaustive form of claims the suite checks on a subset (the layout start over all 30 single objects; every
# preset run at its own step count, 2,500 for the paper's, on the tiny prior)
test-claims:
	LODSGS_EXHAUSTIVE=1 $(PY) -m pytest -q -m slow tests/test_lift.py -k layout_start_is_the_ball
	LODSGS_EXHAUSTIVE=1 $(PY) -m pytest -q -m slow tests/test_schedules.py -k own_step_count

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
