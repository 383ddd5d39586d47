import json

import pytest

from llada_ds.config import ConfigError, ScheduleSection, load_run_config
from llada_ds.train.engine import fill_ds_config, load_ds_config
from llada_ds.train.schedule import learning_rate

from conftest import REPO


def test_recipe_plus_overrides_are_typed_and_merged():
    cfg = load_run_config("tiny", ["--train.steps=1e3", "--optim.lr", "5e-4", "--model.n_layers=2",
                                   "--model.overrides.n_heads=4", "--schedule.milestones={10: 1.0e-4}"])
    assert cfg.train.steps == 1000 and cfg.optim.lr == 5e-4
    assert cfg.model.overrides == {"n_layers": 2, "n_heads": 4}
    assert cfg.model.build().n_layers == 2
    assert cfg.schedule.milestones == {10: 1e-4}


@pytest.mark.parametrize("args, match", [
    (["--train.stepz=3"], "unknown config key 'train.stepz'"),
    (["--train.steps=3.5"], r"train.steps=3.5 is not a valid int"),
    (["--train.steps=inf"], "not a valid int"),
    (["--model.n_layerz=2"], "unknown model config key 'model.n_layerz'"),
    (["--model.d_model=100"], "not divisible by model.n_heads"),
    (["--train.precision=fp16"], "train.precision='fp16' must be bf16 or fp32"),
    (["--eval.every=-1"], "eval.every=-1 must be >= 0"),
    (["--a.b=1", "--a.b.c=2"], "conflicts"),
    (["train.steps=3"], "must look like --section.key=value"),
    (["--faults.nonfinite_steps=[1.5]"], "must be step numbers"),
])
def test_bad_values_are_refused_by_name(args, match):
    with pytest.raises(ConfigError, match=match):
        load_run_config("tiny", args)


def test_unknown_recipe_lists_the_packaged_ones():
    with pytest.raises(ConfigError, match="packaged recipes: .*llada-8b.*tiny"):
        load_run_config("llada-70b")


def test_ds_config_auto_values_are_filled_from_the_run_config():
    cfg = load_run_config("tiny", ["--train.global_batch=16", "--train.micro_batch=2"])
    ds = fill_ds_config(load_ds_config(str(REPO / "ds_configs" / "cpu.json")), cfg, world=2)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (16, 2, 4)
    assert ds["gradient_clipping"] == cfg.optim.grad_clip and ds["bf16"]["enabled"] is False
    assert ds["optimizer"]["params"]["lr"] == cfg.optim.lr and ds["optimizer"]["params"]["torch_adam"] is True
    with pytest.raises(ConfigError, match="multiple of world size x micro batch = 6"):
        fill_ds_config(load_ds_config(str(REPO / "ds_configs" / "cpu.json")), cfg, world=3)
    offload = fill_ds_config(load_ds_config(str(REPO / "ds_configs" / "zero3_offload.json")), cfg, world=2)
    assert "torch_adam" not in offload["optimizer"]["params"]  # offloaded optimizer: DeepSpeed's CPU Adam


@pytest.mark.parametrize("key, value", [("train_batch_size", 64), ("gradient_clipping", 1.0)])
def test_ds_config_values_owned_by_the_run_config_are_refused(tmp_path, key, value):
    body = json.loads((REPO / "ds_configs" / "cpu.json").read_text())
    body[key] = value
    with pytest.raises(ConfigError, match=f"{key}=.*the run config owns it"):
        fill_ds_config(body, load_run_config("tiny"), world=1)
    with pytest.raises(ConfigError, match="remove the 'optimizer' section"):
        fill_ds_config({"optimizer": {"type": "Adam"}}, load_run_config("tiny"), world=1)


def test_schedules():
    wsd = ScheduleSection(kind="wsd", warmup_steps=10, decay_steps=20, final_lr=1e-5, milestones={50: 1e-4})
    lr = [learning_rate(s, 100, 4e-4, wsd) for s in range(100)]
    assert lr[0] == pytest.approx(4e-5) and lr[9] == pytest.approx(4e-4)  # warmup never starts at 0
    assert lr[10] == lr[49] == pytest.approx(4e-4) and lr[50] == lr[79] == pytest.approx(1e-4)
    assert lr[99] == pytest.approx(1e-5) and all(a >= b for a, b in zip(lr[80:], lr[81:]))
    cos = ScheduleSection(kind="cosine", warmup_steps=0, final_lr=1e-5)
    assert learning_rate(0, 100, 1e-3, cos) == pytest.approx(1e-3)
    assert learning_rate(99, 100, 1e-3, cos) == pytest.approx(1e-5)
    assert learning_rate(5, 100, 1e-3, ScheduleSection(kind="constant", warmup_steps=0)) == 1e-3
