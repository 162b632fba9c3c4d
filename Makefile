# compress: set-up, demo and tests. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
export HF_HUB_OFFLINE ?= 1
export HF_DATASETS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test test-slow clean model

setup: $(VENV)/.installed

# Torch first: the CPU build where there is no NVIDIA GPU (a plain `pip install torch` would pull
# a multi-GB CUDA build), the default CUDA build where there is one. Then the project with every
# back end, held to the versions in constraints.txt (checked together; `pip check` clean).
$(VENV)/.installed: pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (set PYTHON=python3.X)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi >/dev/null 2>&1; then \
	  echo "NVIDIA GPU found: installing the CUDA build of torch $(TORCH_VERSION)"; \
	  $(BIN)/pip install "torch==$(TORCH_VERSION)"; \
	elif $(BIN)/python -c "import socket,sys,urllib.parse as u; socket.getaddrinfo(u.urlparse(sys.argv[1]).hostname, 443)" $(TORCH_CPU_INDEX) 2>/dev/null; then \
	  echo "no GPU: installing the CPU build of torch $(TORCH_VERSION)"; \
	  $(BIN)/pip install "torch==$(TORCH_VERSION)+cpu" --extra-index-url $(TORCH_CPU_INDEX); \
	else \
	  echo "no GPU, $(TORCH_CPU_INDEX) unreachable: installing the local CPU build of torch $(TORCH_VERSION)"; \
	  $(BIN)/pip install "torch==$(TORCH_VERSION)+cpu"; \
	fi
	$(BIN)/python -c "import torch; print('torch', torch.__version__)" > $(VENV)/torch-version.txt
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-pin.txt
	$(BIN)/pip install -c constraints.txt -c $(VENV)/torch-pin.txt -e ".[test]"
	$(BIN)/pip check
	touch $@

# The main job on the embedded model: quantize, evaluate, benchmark, gate, export, verify.
# Then a recipe that is too aggressive (2-bit): the gate must FAIL it (exit 1) and export nothing.
demo: setup
	$(BIN)/compress recipes validate recipes/*.yaml recipes/demo/*.yaml
	$(BIN)/compress run recipes/tiny-llama-int4-gptq.yaml --summary runs/demo-summary.md
	$(BIN)/compress verify dist/tiny-llama-int4-gptq
	@$(BIN)/compress run recipes/demo/tiny-llama-int2-rtn.yaml; code=$$?; \
	  if [ $$code -eq 1 ]; then echo "demo: the 2-bit recipe was blocked by its gate (exit 1), as it should be"; \
	  else echo "demo: expected the 2-bit recipe to FAIL its gate (exit 1), got exit $$code"; exit 1; fi
	@test ! -e dist/tiny-llama-int2-rtn || { echo "demo: a failed artifact was exported"; exit 1; }
	$(BIN)/compress report runs --plot runs/report.png

test: setup
	$(BIN)/python -m pytest -m "not slow and not gpu" -q

test-slow: setup
	$(BIN)/python -m pytest -m "slow" -q

# Rebuild the embedded model and its data (about 12 minutes on 2 CPU cores).
model: setup
	$(BIN)/python scripts/build_tiny_model.py

clean:
	rm -rf runs dist .pytest_cache
