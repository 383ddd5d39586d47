"""The reference model of preference optimisation and RL: the policy's starting point, frozen.

VRPO's DPO loss and diffu-GRPO's KL penalty compare the policy with a fixed reference. Objectives
see it through one small interface: a callable with the model's forward signature that returns
logits without tracking gradients. Two implementations:
- `FrozenReference`: a second copy of the starting weights (full fine-tuning). The trainer builds
  it like the policy (under ZeRO-3 sharded by `zero.Init`, wrapped by DeepSpeed without an
  optimizer: llada_ds/train/alignment.py), so an 8B reference never exists whole on a rank.
- `AdaptersDisabled`: with LoRA, the policy itself with its adapters switched off for the
  forward (the trainer passes llada_ds/lora.py's `adapters_disabled`), which costs no memory.
"""

from __future__ import annotations

from typing import Callable, ContextManager, Protocol

import torch


class Reference(Protocol):
    def __call__(self, input_ids: torch.Tensor, doc_ids=None, logits_mask=None, targets=None):
        """The reference's logits, or given targets its per-row loss from the chunked head (no
        gradient), with the model's forward arguments."""


class FrozenReference:
    """A frozen model (a plain module or a DeepSpeed engine without an optimizer)."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model = model
        self.model.eval()  # no dropout anywhere in the model; eval only says it is not trained
        for p in model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def __call__(self, input_ids, doc_ids=None, logits_mask=None, targets=None):
        return self.model(input_ids, doc_ids=doc_ids, logits_mask=logits_mask, targets=targets)


class AdaptersDisabled:
    """The policy with its LoRA adapters switched off: `switch_off(policy)` is a context manager
    that disables them for its duration and restores them (and their requires_grad flags) after,
    e.g. llada_ds.lora.adapters_disabled, or a peft model's own `disable_adapter()`. The policy may
    be a DeepSpeed engine: under ZeRO-3 its forward gathers the shards as for the policy's own."""

    def __init__(self, policy: torch.nn.Module, switch_off: Callable[[torch.nn.Module], ContextManager]) -> None:
        self.policy = policy
        self.switch_off = switch_off

    @torch.no_grad()
    def __call__(self, input_ids, doc_ids=None, logits_mask=None, targets=None):
        with self.switch_off(self.policy):
            return self.policy(input_ids, doc_ids=doc_ids, logits_mask=logits_mask, targets=targets)
