"""Run under torchrun by tests/train/test_training.py: --train.init_from a given (not latest) checkpoint.

Prints whether the engine holds exactly the requested weights, and how far one training step moved
them: AdamW's first update moves each weight by at most lr (plus decoupled weight decay), so a
larger move means the step started from other weights (e.g. a stale fp32 master copy)."""

import json
import sys
import warnings
from pathlib import Path

import deepspeed
import torch
from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

from llada_ds.config import load_run_config
from llada_ds.train.distributed import exit_process, init_distributed, shutdown_distributed
from llada_ds.train.engine import load_ds_config
from llada_ds.train.loop import Trainer
from llada_ds.weights import load_hf_folder

warnings.filterwarnings("ignore", category=FutureWarning)
REPO = Path(__file__).resolve().parents[2]


def main():
    recipe, ckpt, run_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    cfg = load_run_config(recipe, [f"--train.init_from={ckpt}", "--eval.every=0"])
    dist = init_distributed()
    trainer = Trainer(cfg, load_ds_config(str(REPO / "ds_configs" / "cpu.json")), run_dir, "never", dist)
    params = dict(trainer.engine.module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values())):
        loaded = {n: p.detach().clone() for n, p in params.items()}
    if (ckpt / "config.json").is_file():  # a Hugging Face folder in LLaDA's layout
        if not dist.is_main:
            return
        want = load_hf_folder(ckpt)[0].state_dict()
        print(json.dumps({"matches_requested": all(torch.equal(loaded[n], want[n]) for n in loaded),
                          "step": trainer.state.step}))
        return
    want = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name) if dist.is_main else None
    result = trainer.train_step(0)
    with deepspeed.zero.GatheredParameters(list(params.values())):
        after = {n: p.detach().clone() for n, p in params.items()}
    if dist.is_main:
        latest = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent))  # what `latest` names
        moved = max((after[n] - want[n]).abs().max().item() for n in after)
        largest = max(want[n].abs().max().item() for n in want)
        print(json.dumps({
            "matches_requested": all(torch.equal(loaded[n], want[n]) for n in loaded),
            "matches_latest": all(torch.equal(loaded[n], latest[n]) for n in loaded),
            "step": trainer.state.step,
            "first_step_moved": moved,
            "first_step_bound": result.lr * (1 + cfg.optim.weight_decay * largest) * 1.001 + 1e-7,
        }))


if __name__ == "__main__":
    main()
    shutdown_distributed()
    exit_process(0)
