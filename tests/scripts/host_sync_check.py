"""Run by tests/train/test_host_sync.py in its own process (one rank): device-to-host copies per
step (tests/host_sync.py), and the step's figures against the plain loop's.

Also runs against an older checkout of the package (on PYTHONPATH) to count its copies.
"""

import json
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from host_sync import HostSyncSpy  # noqa: E402

from llada_ds.config import load_run_config  # noqa: E402
from llada_ds.train.distributed import init_distributed, shutdown_distributed  # noqa: E402
from llada_ds.train.engine import load_ds_config  # noqa: E402
from llada_ds.train.loop import Trainer  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
REPO = Path(__file__).resolve().parents[2]
STEPS = 3


def plain_figures(cfg) -> list[dict]:
    """The same steps in the plain single-process loop: each step's StepStats, on the host."""
    from llada_ds.data.loader import DistributedBatches, WindowDataset
    from llada_ds.data.shards import ShardSet
    from llada_ds.data.storage import LocalStorage
    from llada_ds.data.tokenizer import Tokenizer
    from llada_ds.diffusion import NoiseConfig, make_objective
    from llada_ds.model import LLaDAModel
    from llada_ds.train.optim import adamw
    from llada_ds.train.plain import train_plain
    from llada_ds.train.schedule import learning_rate

    torch.manual_seed(cfg.train.seed)
    model = LLaDAModel(cfg.model.build())
    batches = DistributedBatches(WindowDataset(ShardSet(LocalStorage(cfg.data.train)), cfg.data.seq_len,
                                               cfg.data.seed), cfg.train.global_batch, cfg.train.micro_batch)
    o = cfg.objective
    objective = make_objective(o.kind, Tokenizer.load(cfg.data.tokenizer).special.mask, cfg.model.build().vocab_size,
                               NoiseConfig(o.noise_seed, o.eps, o.random_length_prob))
    out = []

    def on_step(step, loss, stats):
        out.append({"loss": loss, **{k: v for k, v in stats.named(stats.flat().tolist()).items() if k != "loss"}})

    train_plain(model, objective, batches.step, STEPS, adamw(model, cfg.optim),
                lambda step: learning_rate(step, cfg.train.steps, cfg.optim.lr, cfg.schedule), cfg.optim.grad_clip,
                on_step=on_step)
    return out


def main():
    recipe, tmp = sys.argv[1], Path(sys.argv[2])
    overrides = ["--eval.every=0", "--objective.random_length_prob=0"] + [a for a in sys.argv[3:] if a != "--no-plain"]
    cfg = load_run_config(recipe, overrides)
    dist = init_distributed()
    trainer = Trainer(cfg, load_ds_config(str(REPO / "ds_configs" / "cpu.json")), tmp / "run", "never", dist)
    results = [trainer.train_step(0)]  # DeepSpeed sets itself up in its first step: not counted
    steps = []
    for step in range(1, STEPS):
        with HostSyncSpy() as spy:
            results.append(trainer.train_step(step))
        steps.append({o: spy.count(o) for o in ("llada_ds", "deepspeed", "torch", "other")}
                     | {"functions": sorted(spy.functions("llada_ds")), "where": spy.summary()})
    figures = [r if isinstance(r, dict) else {k: getattr(r, k) for k in (
        "loss", "masked", "correct", "tokens", "padding", "bucket_loss", "bucket_count")} for r in results]
    print(json.dumps({"steps": steps, "trainer": figures,
                      "plain": plain_figures(cfg) if "--no-plain" not in sys.argv else None},
                     default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))  # older checkouts: numpy


if __name__ == "__main__":
    main()
    shutdown_distributed()
