"""The memory planner (llada_ds/train/planner.py): its activation and head terms against the
measured peak memory of real forward + backward steps on CPU, and its recommendations."""

import pytest
import torch

from llada_ds.data.batch import MicroBatch
from llada_ds.diffusion import NoiseConfig, PretrainObjective, SFTObjective
from llada_ds.model import ModelConfig, build_model, get_preset
from llada_ds.model.sizing import activation_bytes, count
from llada_ds.train.engine import apply_activation_checkpointing
from llada_ds.train.memory import measure_cpu_memory
from llada_ds.train.planner import GIB, RESERVE, describe_plans, lora_parameters, plans


@pytest.mark.parametrize("shape, micro, seq, checkpointing, objective", [
    (dict(d_model=128, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=344), 2, 256, False, "pretrain"),
    (dict(d_model=256, n_layers=2, n_heads=8, n_kv_heads=4, ffn_hidden_size=688), 2, 512, False, "sft"),
    (dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden_size=344), 4, 256, True, "pretrain"),
    (dict(d_model=64, n_layers=6, n_heads=4, n_kv_heads=4, ffn_hidden_size=1024), 1, 1024, True, "pretrain"),
])
def test_activation_and_head_terms_match_measured_peaks_within_20_percent(shape, micro, seq, checkpointing, objective):
    cfg = ModelConfig(vocab_size=2048, max_seq_len=seq, attention="sdpa", **shape)
    torch.manual_seed(0)
    model = build_model(cfg)
    if checkpointing:
        apply_activation_checkpointing(model)
    for p in model.parameters():  # gradients are model states, not activations: allocated beforehand
        p.grad = torch.zeros_like(p)
    noise = NoiseConfig(random_length_prob=0)
    tokens = torch.randint(0, 2047, (micro, seq), generator=torch.Generator().manual_seed(1))
    if objective == "sft":
        batch = MicroBatch(tokens, list(range(micro)), prompt_lengths=torch.tensor([seq // 4, seq // 2][:micro]))
        obj = SFTObjective(2047, noise=noise)
    else:
        batch = MicroBatch(tokens, list(range(micro)))
        obj = PretrainObjective(2047, noise=noise)
    rows = []

    def step():
        loss, stats = obj.loss(model, batch, 0)
        rows.append(int(stats.masked))
        loss.backward()

    measured = measure_cpu_memory(step).peak
    # On CPU: fp32, SDPA with the key/value heads repeated; the plain model also allocates the
    # head's weight gradient (under ZeRO-3 part of DeepSpeed's largest-layer allowance).
    predicted = activation_bytes(cfg, seq, micro, checkpointing, bytes_per_value=4, expand_kv=True,
                                 masked_share=rows[0] / (micro * seq), weight_grad=True)
    assert 0.8 * measured <= predicted <= 1.2 * measured, (predicted, measured)


def test_lora_parameters_are_rank_times_in_plus_out_of_the_seven_block_matrices():
    cfg = get_preset("llada-1b")  # grouped key/value heads: k and v are narrower
    model = build_model(cfg, device="meta")
    r = 8
    expected = 0
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"):
            expected += r * (module.in_features + module.out_features)
    assert lora_parameters(cfg, r) == expected
    assert lora_parameters(get_preset("llada-8b"), 16) == 32 * 16 * (4 * 2 * 4096 + 3 * (4096 + 12288))


def test_the_recommendation_is_the_largest_micro_batch_that_fits_in_the_order_of_preference():
    cfg = get_preset("llada-8b")
    full, lora = plans(cfg, 8, 80, lora_rank=16)
    usable = 80e9 * (1 - RESERVE)
    for p in (full, lora):
        r = p.recommended
        assert r is not None and r.total_bytes <= usable
        # One more sequence would not fit.
        more = r.states.gpu_bytes + activation_bytes(cfg, 4096, r.micro_batch + 1, r.checkpointing)
        assert more > usable
        # Nothing earlier in the order of preference qualifies: no offload before offload, and
        # without checkpointing only from micro batch 2.
        earlier = p.options[: p.options.index(r)]
        for o in earlier:
            assert o.micro_batch < (1 if o.checkpointing else 2)
    # LoRA's model states are a fraction of full training's; the activations are not.
    assert lora.options[0].states.gpu_bytes < full.options[0].states.gpu_bytes / 3
    assert lora.options[0].states.source == "our formula" and full.options[0].states.source == "DeepSpeed estimator"
    # On one 80 GB GPU full training needs offload; LoRA does not.
    one_full, one_lora = plans(cfg, 1, 80, lora_rank=16)
    assert one_full.recommended.states.placement != "none" and one_lora.recommended.states.placement == "none"


def test_a_gpu_too_small_for_anything_says_so():
    text = describe_plans(get_preset("llada-8b"), 8, 2, seq_len=4096)
    assert "nothing fits" in text
    assert count(get_preset("tiny")).total * 18 / GIB < 1  # and a tiny model fits anywhere:
    assert "recommended: micro batch" in describe_plans(get_preset("tiny"), 1, 2)
