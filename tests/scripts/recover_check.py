"""Run by tests/test_train.py in its own process (one rank): do recoveries compound and stop?

Two recoveries in a row with no save in between go back to the same checkpoint; its saved
counters (0 recoveries, scale 1) must not undo the first recovery.
"""

import json
import sys
import warnings
from pathlib import Path

from llada_ds.config import load_run_config
from llada_ds.train.distributed import exit_process, init_distributed, shutdown_distributed
from llada_ds.train.engine import load_ds_config
from llada_ds.errors import TrainingError
from llada_ds.train.loop import Trainer

warnings.filterwarnings("ignore", category=FutureWarning)
REPO = Path(__file__).resolve().parents[2]


def main():
    recipe, tmp = sys.argv[1], Path(sys.argv[2])
    cfg = load_run_config(recipe, ["--eval.every=0", "--recovery.max_recoveries=2", "--recovery.lr_factor=0.5"])
    dist = init_distributed()
    trainer = Trainer(cfg, load_ds_config(str(REPO / "ds_configs" / "cpu.json")), tmp / "run", "never", dist)
    for step in range(2):
        trainer.train_step(step)
        trainer.state.step = step + 1
    trainer.save()
    seen = []
    for _ in range(2):
        trainer.train_step(trainer.state.step)  # the run moves on, then goes bad again
        trainer.state.step += 1
        trainer.recover()
        seen.append({"recoveries": trainer.state.recoveries, "lr_scale": trainer.state.lr_scale,
                     "step": trainer.state.step})
    try:
        trainer.recover()
        gave_up = None
    except TrainingError as exc:
        gave_up = str(exc)
    trainer.monitor.close()
    print(json.dumps({"seen": seen, "gave_up": gave_up}))


if __name__ == "__main__":
    main()
    shutdown_distributed()
    exit_process(0)
