# Two commands do all set-up on a fresh machine:
#   make demo   - install into .venv and run the main job
#   make test   - install into .venv and run every check and test (what CI runs)
# Override the torch build with e.g. TORCH="torch==2.5.1 torchvision==0.20.1" or a CUDA index URL.

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
BIN := $(VENV)/bin

.PHONY: setup demo test lint tools
.DEFAULT_GOAL := demo

$(BIN)/solov2: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[trainer,export,operator,dev]'
	touch $@

setup: $(BIN)/solov2

DEMO ?= runs/demo

# The main job: make a synthetic COCO-format data set, train the tiny config on the CPU for a few
# minutes, evaluate it (the AP table is printed), and draw predictions for a few validation images.
# Each run starts over (make-synthetic and train refuse to write over an earlier set or run).
demo: setup
	rm -rf $(DEMO)
	$(BIN)/solov2 make-synthetic $(DEMO)/data --train 800 --val 50
	$(BIN)/solov2 train --config solov2_tiny_cpu --data-path $(DEMO)/data --work-dir $(DEMO)/work \
	    --device cpu --termination-log $(DEMO)/work/termination-log --metrics-port 0
	$(BIN)/solov2 predict $$(ls $(DEMO)/data/val2017/*.jpg | head -n 4) --checkpoint $(DEMO)/work/checkpoints \
	    --out $(DEMO)/predictions --device cpu

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/shellcheck --external-sources --source-path=SCRIPTDIR trainer/scripts/*.sh tools/install.sh .ci/run

# helm, kubectl, prometheus and promtool for the delivery tests, cached in .tools/ (quick when cached).
tools:
	bash tools/install.sh

test: lint tools
	$(BIN)/python -m pytest
