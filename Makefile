# Every target sets itself up: a fresh machine needs only python3 and make.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel that lies on disk here; override for CUDA, e.g. make TORCH_SPEC='torch>=2.4' demo
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

export HF_HUB_OFFLINE ?= 1
export TRANSFORMERS_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py $(wildcard src/prunescope/formats/_native/*.c) $(wildcard src/prunescope/formats/_native/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, so no other requirement can pull a different (multi-GB) build
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev,tasks]"
	touch $@

demo: $(STAMP)
	$(BIN)/prunescope study --out results/demo --overwrite

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py --out bench-results

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info results bench-results

# On a GPU host (Colab, a cluster node): the Python that is there, with its own CUDA torch; no venv and
# nothing downloaded (--no-deps; --no-build-isolation builds with the setuptools already installed).
.PHONY: gpu-check
gpu-check:
	$(PYTHON) -m pip install -q --no-deps --no-build-isolation -e .
	$(PYTHON) benchmarks/gpu_check.py --out gpu-check.json
