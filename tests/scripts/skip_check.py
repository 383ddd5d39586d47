"""Run by tests/test_train.py in its own process (one rank): does a skipped step touch any state?"""

import json
import sys
import warnings
from pathlib import Path

import deepspeed
import torch

from llada_ds.config import load_run_config
from llada_ds.train.distributed import exit_process, init_distributed, shutdown_distributed
from llada_ds.train.engine import load_ds_config
from llada_ds.train.loop import Trainer

warnings.filterwarnings("ignore", category=FutureWarning)
REPO = Path(__file__).resolve().parents[2]


def snapshot(trainer):
    params = list(trainer.engine.module.parameters())
    with deepspeed.zero.GatheredParameters(params):
        weights = [p.detach().clone() for p in params]
    inner = trainer.engine.optimizer.optimizer  # torch AdamW inside ZeRO-3, over flat fp32 partitions
    state = [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in s.items()} for s in inner.state.values()]
    return weights, state


def same(a, b):
    return all(torch.equal(x, y) for x, y in zip(a, b)) and len(a) == len(b)


def main():
    recipe, tmp = sys.argv[1], Path(sys.argv[2])
    cfg = load_run_config(recipe, ["--faults.nonfinite_steps=[2]", "--eval.every=0",
                                   "--recovery.spike_factor=10", "--recovery.spike_warmup_steps=1"])
    dist = init_distributed()
    trainer = Trainer(cfg, load_ds_config(str(REPO / "ds_configs" / "cpu.json")), tmp / "run", "never", dist)
    trainer.train_step(0)
    w0, s0 = snapshot(trainer)
    r1 = trainer.train_step(1)
    w1, s1 = snapshot(trainer)
    r2 = trainer.train_step(2)
    w2, s2 = snapshot(trainer)
    # A finite loss spike goes through the other path: only the last backward is poisoned.
    trainer.state.loss_ema, trainer.state.good_steps = 1e-3, 100
    r3 = trainer.train_step(3)
    w3, s3 = snapshot(trainer)
    spike_untouched = same(w2, w3) and all(
        all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a) for a, b in zip(s2, s3))
    states_equal = len(s0) == len(s1) and all(
        all(torch.equal(a[k], b[k]) if torch.is_tensor(a[k]) else a[k] == b[k] for k in a) for a, b in zip(s0, s1))
    print(json.dumps({
        "skipped_reason": r1.reason, "weights_unchanged": same(w0, w1), "adam_state_unchanged": states_equal,
        "next_step_applied": r2.reason is None, "weights_changed_after_good_step": not same(w1, w2),
        "spike_reason": (r3.reason or "").split(" (")[0], "spike_left_state_untouched": spike_untouched,
    }))


if __name__ == "__main__":
    main()
    shutdown_distributed()
    exit_process(0)
