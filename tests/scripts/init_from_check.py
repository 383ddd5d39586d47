"""Run under torchrun by tests/test_train.py: --train.init_from a given (not latest) checkpoint."""

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
    if dist.is_main and (ckpt / "config.json").is_file():  # a Hugging Face folder in LLaDA's layout
        want = load_hf_folder(ckpt)[0].state_dict()
        print(json.dumps({"matches_requested": all(torch.equal(loaded[n], want[n]) for n in loaded),
                          "step": trainer.state.step}))
    elif dist.is_main:
        want = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
        latest = get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent))  # what `latest` names
        print(json.dumps({
            "matches_requested": all(torch.equal(loaded[n], want[n]) for n in loaded),
            "matches_latest": all(torch.equal(loaded[n], latest[n]) for n in loaded),
            "step": trainer.state.step,
        }))


if __name__ == "__main__":
    main()
    shutdown_distributed()
    exit_process(0)
