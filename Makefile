# The two commands the README gives: `make run` and `make test`. Both set up .venv first.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
# On CPU-only machines this resolves to the 2.13.0 CPU wheel; pin it before anything
# else asks for torch, or pip pulls the multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup run test lint format bench-synthetic clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	# MovieLens-100K ships inside recbole; --no-deps because only its data files are read.
	$(BIN)/python -m pip install --quiet --no-deps recbole==1.2.1
	touch $@

# The main job on the embedded default, as far as the pipeline goes today: on
# MovieLens-100K, SASRec (stage A), text embeddings (B) and the dual-codebook tokenizer
# (C), reusing whatever runs/ml-100k already holds; then SASRec's test metrics.
run: setup
	$(BIN)/flexcode train tokenizer --dataset ml-100k --run-dir runs/ml-100k
	$(BIN)/flexcode evaluate runs/ml-100k --dataset ml-100k

test: setup lint
	$(BIN)/pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench-synthetic: setup
	$(BIN)/python scripts/bench_synthetic.py --items 1000000 --interactions 10000000 --preprocess

clean:
	rm -rf $(VENV) artifacts reports .pytest_cache .ruff_cache
