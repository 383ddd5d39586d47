"""Run under torchrun by tests/train/test_lora_training.py: a LoRA run of the real Trainer, then
what can only be checked inside the engine.

- the optimizer holds the adapters only (the parameters it steps, and the size of its Adam state);
- `adapters_disabled(engine)` in the middle of the run (before step 3) gives the base model's
  logits, and training goes on as if it had not been used (the test compares the losses);
- after training, the base weights in the engine are bitwise the ones of train.init_from.
Prints one JSON line (rank 0).
"""

import json
import sys
import warnings
from pathlib import Path

import deepspeed
import torch

from llada_ds.config import load_run_config
from llada_ds.lora import adapters_disabled, base_name, is_adapter_name
from llada_ds.train.distributed import all_reduce_sum, exit_process, init_distributed, shutdown_distributed
from llada_ds.train.engine import load_ds_config
from llada_ds.train.loop import Trainer
from llada_ds.weights import find_weights, load_model, read_weights

warnings.filterwarnings("ignore", category=FutureWarning)
REPO = Path(__file__).resolve().parents[2]


def main():
    recipe, run_dir, overrides = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
    cfg = load_run_config(recipe, overrides)
    dist = init_distributed()
    trainer = Trainer(cfg, load_ds_config(str(REPO / "ds_configs" / "cpu.json")), run_dir, "never", dist)
    engine = trainer.engine
    names = {id(p): n for n, p in engine.module.named_parameters()}
    stepped = sorted(names[id(p)] for group in engine.optimizer.fp16_groups for p in group)
    adapters = sorted(n for n in names.values() if is_adapter_name(n))
    n_adapter = sum(p.ds_numel for n, p in engine.module.named_parameters() if is_adapter_name(n))

    ids = torch.randint(0, 4000, (2, 16), generator=torch.Generator().manual_seed(3))
    base_model = load_model(cfg.train.init_from)[0]
    with torch.no_grad():
        want = base_model(ids)
    seen = {}
    train_step = trainer.train_step

    def step_with_a_reference_forward(step):
        if step == 3:
            flags = [p.requires_grad for p in engine.module.parameters()]
            with torch.no_grad():
                with adapters_disabled(engine):
                    ref = engine(ids)
                adapted = engine(ids)
            seen["reference_is_base"] = bool(torch.allclose(ref, want, rtol=1e-5, atol=1e-6))
            seen["adapted_differs"] = not torch.allclose(adapted, want, rtol=1e-3, atol=1e-4)
            seen["flags_restored"] = flags == [p.requires_grad for p in engine.module.parameters()]
        return train_step(step)

    trainer.train_step = step_with_a_reference_forward
    trainer.run()
    # Adam's state over all ranks: two moments per adapter element (ZeRO-3 pads partitions a little).
    inner = engine.optimizer.optimizer
    moments = sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in inner.state.values())
    moments = int(all_reduce_sum([float(moments)], dist.device)[0])
    base = [(n, p) for n, p in engine.module.named_parameters() if not is_adapter_name(n)]
    with deepspeed.zero.GatheredParameters([p for _, p in base]):
        if dist.is_main:
            source = read_weights(find_weights(Path(cfg.train.init_from)))
            unchanged = all(torch.equal(p.detach(), source[base_name(n)]) for n, p in base)
    if dist.is_main:
        print(json.dumps({"optimizer_steps_adapters_only": stepped == adapters and len(adapters) > 0,
                          "adam_moments_per_adapter_element": round(moments / (2 * n_adapter), 3),
                          "base_unchanged": unchanged, **seen}))


if __name__ == "__main__":
    main()
    shutdown_distributed()
    exit_process(0)
