"""LoRA on the plain model (llada_ds/lora.py): targets, injection, the frozen reference, merging,
names, sizes; the lora config section; the base fingerprint."""

from __future__ import annotations

import re

import pytest
import torch

from helpers import SMALL

from llada_ds.config import load_run_config
from llada_ds.errors import ConfigError
from llada_ds.lora import (
    TARGETS, adapters_disabled, from_peft_name, has_adapters, inject_lora, lora_parameter_count, lora_spec,
    lora_train_flops_per_token, merge_adapters, module_pattern, released_module_pattern, resolve_targets, to_peft_name,
)
from llada_ds.model import LLaDAModel
from llada_ds.model.sizing import count, train_flops_per_token
from llada_ds.weights import weights_fingerprint


def test_targets_are_the_released_names_and_a_wrong_one_names_the_valid_ones():
    assert resolve_targets(["all-linear"]) == ("q_proj", "k_proj", "v_proj", "attn_out", "ff_proj", "up_proj",
                                               "ff_out")
    assert resolve_targets(["ff_out,q_proj", "q_proj"]) == ("q_proj", "ff_out")
    for wrong, hint in (("down_proj", "LLaDA calls Llama's down_proj ff_out"), ("head", "")):
        with pytest.raises(ConfigError) as err:
            resolve_targets(["q_proj", wrong])
        assert f"{wrong!r} matches no module" in str(err.value) and hint in str(err.value)
        assert ", ".join(TARGETS) in str(err.value)
    with pytest.raises(ConfigError, match="lora.targets is empty"):
        resolve_targets([])
    # The block's ff_out is a target; the output head, released as model.transformer.ff_out, never is.
    pattern = released_module_pattern(resolve_targets(["all-linear"]))
    assert re.fullmatch(pattern, "model.transformer.blocks.3.ff_out")
    assert not re.fullmatch(pattern, "model.transformer.ff_out")


def test_the_lora_config_section(recipe):
    cfg = load_run_config(str(recipe), ["--lora.rank=8", "--lora.targets=all-linear", "--train.init_from=x"])
    assert cfg.lora.spec().targets == TARGETS and cfg.lora.spec().scaling == 2.0
    cfg = load_run_config(str(recipe), ["--lora.rank=8", "--lora.targets=[q_proj, v_proj]", "--train.init_from=x"])
    assert cfg.lora.spec().targets == ("q_proj", "v_proj")
    assert load_run_config(str(recipe)).lora.spec() is None  # rank 0: off
    for args, message in ((["--lora.rank=8"], "set train.init_from to the base"),
                          (["--lora.rank=-1"], "lora.rank=-1 must be >= 0"),
                          (["--lora.rank=8", "--lora.dropout=1", "--train.init_from=x"], "lora.dropout=1.0"),
                          (["--lora.rank=8", "--lora.alpha=0", "--train.init_from=x"], "lora.alpha=0.0"),
                          (["--lora.rank=8", "--lora.targets=o_proj", "--train.init_from=x"], "'o_proj' matches no")):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_run_config(str(recipe), args)


def _adapted(targets=("all-linear",), rank=4):
    torch.manual_seed(0)
    base = LLaDAModel(SMALL).eval()
    model = LLaDAModel(SMALL).eval()
    model.load_state_dict(base.state_dict())
    return base, inject_lora(model, lora_spec(rank, 8.0, 0.0, list(targets)), seed=5)


def test_injection_adapts_exactly_the_targets_and_freezes_the_rest():
    base, model = _adapted(["q_proj", "ff_out"])
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(f"layers.{i}.{m}.lora_{ab}.default.weight" for i in range(SMALL.n_layers)
                               for m in ("attn.q_proj", "ffn.down_proj") for ab in "AB")
    n_trainable = sum(model.get_parameter(n).numel() for n in trainable)
    assert n_trainable == lora_parameter_count(SMALL, 4, ("q_proj", "ff_out"))
    assert type(model.head) is type(base.head)  # never the output head
    ids = torch.randint(0, SMALL.vocab_size, (2, 12))
    with torch.no_grad():
        assert torch.equal(model(ids), base(ids))  # B starts at zero: the adapted model starts at its base
    # The adapters' draws depend on the seed only, and leave the caller's generator alone.
    other = LLaDAModel(SMALL)
    state = torch.random.get_rng_state()
    inject_lora(other, lora_spec(4, 8.0, 0.0, ["q_proj", "ff_out"]), seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(p, other.get_parameter(n)) for n, p in model.named_parameters() if p.requires_grad)
    full = _adapted()[1]
    assert sum(p.numel() for p in full.parameters() if p.requires_grad) == lora_parameter_count(SMALL, 4, TARGETS)
    assert re.fullmatch(module_pattern(TARGETS), "layers.1.ffn.down_proj") and not re.fullmatch(
        module_pattern(TARGETS), "head")


def test_adapters_disabled_is_the_base_model_and_merging_keeps_the_logits():
    base, model = _adapted()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.05)
    ids = torch.randint(0, SMALL.vocab_size, (2, 12))
    with torch.no_grad():
        adapted = model(ids)
        assert not torch.allclose(adapted, base(ids), atol=1e-4)
        with adapters_disabled(model) as inner:
            assert inner is model
            assert torch.equal(model(ids), base(ids))
            assert not any(p.requires_grad for p in model.parameters())
        assert torch.equal(model(ids), adapted)
    assert sorted(n for n, p in model.named_parameters() if p.requires_grad) == sorted(
        n for n in dict(model.named_parameters()) if ".lora_" in n)
    with pytest.raises(ConfigError, match="has no LoRA adapters"):
        with adapters_disabled(base):
            pass
    assert has_adapters(model) and not has_adapters(base)
    merged = merge_adapters(model)
    assert sorted(dict(merged.named_parameters())) == sorted(dict(base.named_parameters()))
    with torch.no_grad():
        got = merged(ids)
    assert ((got - adapted).norm() / adapted.norm()).item() < 1e-6


def test_peft_names_in_the_released_layout():
    name = "layers.1.ffn.down_proj.lora_B.default.weight"
    assert to_peft_name(name) == "base_model.model.model.transformer.blocks.1.ff_out.lora_B.weight"
    assert from_peft_name(to_peft_name(name)) == name
    assert to_peft_name("layers.0.attn.o_proj.lora_A.default.weight").endswith("blocks.0.attn_out.lora_A.weight")


def test_lora_flops_drop_the_frozen_weight_gradients():
    params = count(SMALL)
    full = train_flops_per_token(SMALL, 64, params)
    n = lora_parameter_count(SMALL, 4, TARGETS)
    assert lora_train_flops_per_token(SMALL, 64, lora_spec(4, 8, 0, ["all-linear"])) == full - 2 * params.matmul + 6 * n


def test_weights_fingerprint_sees_every_bit_and_dtype():
    state = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(3, dtype=torch.bfloat16)}
    fp = weights_fingerprint(state)
    assert fp == weights_fingerprint({k: v.clone() for k, v in reversed(list(state.items()))})
    flipped = state["a"].clone()
    flipped.view(torch.int32)[0, 1] ^= 1
    assert weights_fingerprint({**state, "a": flipped}) != fp
    assert weights_fingerprint({**state, "a": state["a"].double()}) != fp


def test_info_lora_counts_the_adapters_and_says_8b_fits_one_80gb_gpu(capsys):
    from llada_ds.cli import main
    from llada_ds.model import get_preset
    from llada_ds.train.lora_memory import fits_one_80gb_gpu, lora_memory

    cfg = get_preset("llada-8b")
    spec = lora_spec(16, 32, 0.0, ["all-linear"])
    with torch.device("meta"):
        model = inject_lora(LLaDAModel(cfg), spec, seed=0)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == lora_parameter_count(cfg, 16, TARGETS) == 41_943_040  # 32 x 16 x (4 x 8192 + 3 x 16384)
    m = lora_memory(cfg, spec, n_gpus=4, seq_len=4096)
    assert m.base == 2 * 8_015_581_184 // 4 and m.adapters == 18 * trainable // 4
    assert m.per_gpu(2, True) == m.base + m.adapters + m.gather + 2 * m.activations_checkpointed
    ok, need = fits_one_80gb_gpu(cfg, spec, 4096)
    assert ok and 16e9 < need < 40e9
    assert main(["info", "--preset", "llada-8b", "--gpus", "1", "--seq-len", "4096", "--lora", "16"]) == 0
    out = capsys.readouterr().out
    assert "41,943,040 trainable parameters" in out
    assert "one 80 GB GPU, seq 4096, micro batch 1, with activation checkpointing: fits" in out
