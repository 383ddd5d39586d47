"""The reference model of VRPO and GRPO: a frozen copy, or (LoRA) the policy with adapters disabled."""

from __future__ import annotations

import copy

import pytest
import torch

from llada_ds.diffusion.reference import AdaptersDisabled, FrozenReference
from llada_ds.diffusion.sampler import SamplerConfig, SpecialTokens, generate
from llada_ds.lora import adapters_disabled, inject_lora, lora_spec
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
    pytest.importorskip("peft")
    torch.manual_seed(0)
    base = LLaDAModel(CFG)
    x = torch.randint(5, 60, (2, 12))
    doc_ids = torch.ones_like(x)
    doc_ids[1, :3] = 0
    want = base(x, doc_ids=doc_ids).detach()
    policy = inject_lora(copy.deepcopy(base), lora_spec(4, 8.0, 0.0, ["q_proj", "v_proj"]), seed=0)
    with torch.no_grad():  # adapters that change the output (peft starts B at zero)
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    assert (policy(x, doc_ids=doc_ids) - want).abs().max() > 1e-3
    trainable = [n for n, p in policy.named_parameters() if p.requires_grad]
    reference = AdaptersDisabled(policy, adapters_disabled)
    out = reference(x, doc_ids=doc_ids)
    assert not out.requires_grad and torch.equal(out, want)
    assert (policy(x, doc_ids=doc_ids) - want).abs().max() > 1e-3  # the adapters are back after the call
    assert [n for n, p in policy.named_parameters() if p.requires_grad] == trainable
    # the samplers run the adapted model like ours
    tokens = SpecialTokens(mask=3, pad=2, eos=2, eot=4)
    cfg = SamplerConfig(gen_length=4, steps=4)
    with torch.no_grad(), adapters_disabled(policy):
        assert torch.equal(generate(policy, [[7, 8, 9]], cfg, tokens), generate(base, [[7, 8, 9]], cfg, tokens))


def test_adapters_disabled_takes_a_peft_model_too():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    base = LLaDAModel(CFG)
    x = torch.randint(5, 60, (2, 12))
    want = base(x).detach()
    policy = peft.get_peft_model(base, peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                       init_lora_weights=False))  # adapters that change the output
    assert (policy(x) - want).abs().max() > 1e-3
    assert torch.equal(AdaptersDisabled(policy, lambda p: p.disable_adapter())(x), want)
    assert (policy(x) - want).abs().max() > 1e-3
