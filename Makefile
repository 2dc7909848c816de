# Two commands do all set-up on a fresh machine:
#   make demo   - install into .venv and run the main job
#   make test   - install into .venv and run every check and test (what CI runs)
# Override the torch build with e.g. TORCH="torch==2.5.1 torchvision==0.20.1" or a CUDA index URL.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: setup demo test lint
.DEFAULT_GOAL := demo

$(BIN)/solov2: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[trainer,operator,dev]'
	touch $@

setup: $(BIN)/solov2

demo: setup
	$(BIN)/solov2 smoke --config solov2_tiny_cpu --steps 10

lint: setup
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test: lint
	$(BIN)/python -m pytest
