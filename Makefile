# The two commands of the README. Each creates the virtual environment .venv on first use:
# torch first, under the CPU constraints (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/cpu.txt

.PHONY: demo test clean

$(VENV)/.installed: setup.py $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

# The embedded default: until the training loop lands, size the tiny model and overfit one batch.
demo: $(VENV)/.installed
	DS_ACCELERATOR=cpu $(BIN)/llada-ds info --preset tiny --gpus 2
	$(BIN)/llada-ds overfit --preset tiny

test: $(VENV)/.installed
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info
