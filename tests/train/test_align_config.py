"""The alignment sections of the run config: kinds, keys, the reference's weights, Ray sizes."""

from __future__ import annotations

import pytest

from llada_ds.config import ConfigError, load_run_config
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.train.alignment import build_reference, reference_ds_config
from llada_ds.train.distributed import DistInfo
from llada_ds.train.preflight import check_run
from llada_ds.train.ray_job import allowed_world_sizes


def test_vrpo_and_grpo_sections_load_with_their_defaults_and_overrides(recipe):
    cfg = load_run_config(str(recipe), ["--objective.kind=grpo", "--grpo.generations=4", "--grpo.loss=wd1",
                                        "--vrpo.beta=0.2"])
    assert cfg.objective.kind == "grpo" and cfg.grpo.generations == 4 and cfg.grpo.loss == "wd1"
    assert cfg.vrpo.beta == 0.2 and cfg.vrpo.mc_samples == 8 and cfg.vrpo.antithetic
    assert cfg.grpo.updates == 12 and cfg.grpo.clip == 0.5  # d1's published settings
    with pytest.raises(ConfigError, match="objective.kind='dpo'"):
        load_run_config(str(recipe), ["--objective.kind=dpo"])
    with pytest.raises(ConfigError, match="unknown config key 'grpo.mu'"):
        load_run_config(str(recipe), ["--grpo.mu=2"])


def test_grpo_runs_only_at_sizes_that_split_the_prompts(recipe):
    # global batch 8 completions of G = 4: 2 prompts per step, so 1 or 2 workers (4 would split
    # the batch into micro-batches of 2, but not the prompts)
    cfg = load_run_config(str(recipe), ["--objective.kind=grpo", "--grpo.generations=4"])
    assert allowed_world_sizes(cfg, 1, 6) == [1, 2]


def test_a_reference_needs_weights_and_drops_the_optimizer(recipe):
    cfg = load_run_config(str(recipe), ["--objective.kind=vrpo"])
    tok = Tokenizer.load(cfg.data.tokenizer)
    with pytest.raises(ConfigError, match="set train.init_from"):
        build_reference(cfg, cfg.model.build(), {}, DistInfo(0, 1, 0, "cpu"), tok)
    ds = {"zero_optimization": {"stage": 3, "offload_optimizer": {"device": "cpu"}}, "optimizer": {"type": "AdamW"},
          "zero_allow_untested_optimizer": True, "bf16": {"enabled": True}}
    assert reference_ds_config(ds) == {"zero_optimization": {"stage": 3}, "bf16": {"enabled": True}}
    assert "optimizer" in ds  # the policy's own config is left alone


def test_preflight_names_the_cache_each_alignment_objective_needs(recipe, tmp_path):
    # the recipe's data is a shard set: neither a preference nor a prompt cache
    for kind, message in (("vrpo", "is not a preference cache (build one with llada-ds pref-data)"),
                          ("grpo", "is not a prompt cache (build one with llada-ds prompt-data)")):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
            check_run(load_run_config(str(recipe), [f"--objective.kind={kind}"]))
    with pytest.raises(ConfigError, match="objective.reference=.*nowhere: no such file or directory"):
        check_run(load_run_config(str(recipe), [f"--objective.reference={tmp_path / 'nowhere'}"]))
