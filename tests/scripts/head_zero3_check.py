"""Run by tests/model/test_head.py in its own process (one rank): the chunked head under ZeRO-3.

Under ZeRO-3 the head's weight is a partitioned parameter that DeepSpeed gathers around the head
module's forward (and again for its backward). The weighted loss (model_diffusion_loss) and the
per-row one (sample_cross_entropy of two batches, differentiated with arbitrary per-sample weights
in one backward) must give the plain model's losses and gradients.
"""

import json
import sys
import warnings

import deepspeed
import torch
from deepspeed.utils import safe_get_full_grad

from llada_ds.diffusion import NoiseConfig, model_diffusion_loss, pretrain_batch, sample_cross_entropy
from llada_ds.model import LLaDAModel, ModelConfig
from llada_ds.train.distributed import exit_process, init_distributed, shutdown_distributed

warnings.filterwarnings("ignore", category=FutureWarning)

CFG = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=64,
                  max_seq_len=32)
DS = {"train_batch_size": 2, "train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 2,
      "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0,
                            "stage3_model_persistence_threshold": 0},
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}},
      "zero_allow_untested_optimizer": True, "bf16": {"enabled": False}}


def preference_like(model, batch, other, sample_weights):
    """Two forwards, one backward: a weighted difference of per-sample CE sums (as a DPO-style
    loss on ELBO estimates of a chosen and a rejected answer would)."""
    per_sample = sample_cross_entropy(model, batch)
    return per_sample, ((per_sample - sample_cross_entropy(model, other)) * sample_weights).sum()


def main():
    init_distributed()
    torch.manual_seed(0)
    with deepspeed.zero.Init(config_dict_or_path=DS):
        zmodel = LLaDAModel(CFG)
    engine, _, _, _ = deepspeed.initialize(model=zmodel, model_parameters=zmodel.parameters(), config=DS)
    plain = LLaDAModel(CFG)
    with deepspeed.zero.GatheredParameters(list(zmodel.parameters())):
        plain.load_state_dict({k: v.detach().clone() for k, v in zmodel.state_dict().items()})
    x0 = torch.randint(0, CFG.vocab_size - 1, (3, 24), generator=torch.Generator().manual_seed(1))
    batch = pretrain_batch(x0, [5, 6, 7], 0, CFG.vocab_size - 1, NoiseConfig(random_length_prob=0))
    other = pretrain_batch(x0.flip(1), [5, 6, 7], 1, CFG.vocab_size - 1, NoiseConfig(random_length_prob=0))
    sample_weights = torch.tensor([0.3, -1.2, 2.0])  # any incoming gradient, as a preference loss gives

    # Two micro-batches of one step: the pre-training loss, then the preference-like loss
    # (DeepSpeed divides each micro-batch's loss by the 2 accumulation steps).
    ref = [model_diffusion_loss(plain, batch).loss]
    (ref[0] / 2).backward()
    ref += preference_like(plain, batch, other, sample_weights)
    (ref[2] / 2).backward()
    got = [model_diffusion_loss(engine, batch).loss]
    engine.backward(got[0])
    engine.step()  # not an accumulation boundary: only counts the micro-batch
    got += preference_like(engine, batch, other, sample_weights)
    engine.backward(got[2])
    grad_diff = max((safe_get_full_grad(zp) - p.grad).abs().max().item()
                    for zp, p in zip(zmodel.parameters(), plain.parameters()))
    grad_scale = max(p.grad.abs().max().item() for p in plain.parameters())
    if "-v" in sys.argv:
        for (n, zp), p in zip(zmodel.named_parameters(), plain.parameters()):
            print(n, (safe_get_full_grad(zp) - p.grad).abs().max().item(), p.grad.abs().max().item(), file=sys.stderr)
    print(json.dumps({
        "loss_diff": abs(got[0].item() - ref[0].item()), "loss": ref[0].item(),
        "per_sample_diff": (got[1] - ref[1]).abs().max().item(),
        "grad_diff": grad_diff, "grad_scale": grad_scale,
        "head_grad_nonzero": bool(safe_get_full_grad(zmodel.head.weight).abs().sum() > 0),
    }))


if __name__ == "__main__":
    main()
    shutdown_distributed()
    exit_process(0)
