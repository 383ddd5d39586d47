"""The reference model of VRPO and GRPO: a frozen copy, or (LoRA) the policy with adapters disabled."""

from __future__ import annotations

import copy

import pytest
import torch

from llada_ds.diffusion.reference import AdaptersDisabled, FrozenReference
from llada_ds.diffusion.sampler import SamplerConfig, SpecialTokens, generate
from llada_ds.model import LLaDAModel, ModelConfig

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=64, max_seq_len=64,
                  attention="eager")


def test_a_frozen_reference_gives_the_model_logits_without_gradients():
    torch.manual_seed(0)
    model = LLaDAModel(CFG)
    x = torch.randint(5, 60, (2, 12))
    reference = FrozenReference(copy.deepcopy(model))
    out = reference(x, logits_mask=x > 30)
    assert not out.requires_grad and torch.equal(out, model(x, logits_mask=x > 30).detach())
    assert not any(p.requires_grad for p in reference.model.parameters())


def test_adapters_disabled_is_the_base_model_of_a_lora_policy():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = LLaDAModel(CFG)
    x = torch.randint(5, 60, (2, 12))
    doc_ids = torch.ones_like(x)
    doc_ids[1, :3] = 0
    want = base(x, doc_ids=doc_ids).detach()
    policy = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))  # adapters that change the output
    assert (policy(x, doc_ids=doc_ids) - want).abs().max() > 1e-3
    reference = AdaptersDisabled(policy)
    assert torch.equal(reference(x, doc_ids=doc_ids), want)
    assert (policy(x, doc_ids=doc_ids) - want).abs().max() > 1e-3  # the adapters are back after the call
    # the samplers run the wrapped model like ours
    tokens = SpecialTokens(mask=3, pad=2, eos=2, eot=4)
    cfg = SamplerConfig(gen_length=4, steps=4)
    with policy.disable_adapter():
        assert torch.equal(generate(policy, [[7, 8, 9]], cfg, tokens), generate(base, [[7, 8, 9]], cfg, tokens))
    with pytest.raises(TypeError, match="peft model"):
        AdaptersDisabled(base)
