"""Infilling (sampler.infill): masks anywhere in a given canvas, against a plainly written reference
of the step and against generate where the two must agree."""

import math

import pytest
import torch

from llada_ds.diffusion import NoiseConfig, diffusion_loss, pretrain_batch
from llada_ds.diffusion.sampler import SamplerConfig, SpecialTokens, generate, infill
from llada_ds.errors import ConfigError
from llada_ds.model import ModelConfig, build_model

V = 61
TOK = SpecialTokens(mask=60, pad=59, eos=58, eot=57)
CFG = ModelConfig(vocab_size=V, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=96, attention="eager")


@pytest.fixture(scope="module")
def model():
    """Briefly trained on arithmetic runs, so that its predictions depend on the context on both
    sides of a mask (an untrained model predicts nearly the same token everywhere)."""
    torch.manual_seed(3)
    m = build_model(CFG)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(60):
        start = torch.randint(0, 50, (16, 1), generator=g)
        x0 = (start + torch.arange(24) * torch.randint(1, 4, (16, 1), generator=g)) % 56
        batch = pretrain_batch(x0, range(16 * step, 16 * step + 16), step, TOK.mask, NoiseConfig(random_length_prob=0))
        loss = diffusion_loss(m(batch.noisy, logits_mask=batch.masked), batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def reference_infill(model, canvas, cfg: SamplerConfig, gen: torch.Generator):
    """One canvas, written plainly: every masked position is eligible at every step, and the plan
    of reveals is made once from all of the canvas's masks."""
    x = list(canvas)
    m = sum(t == TOK.mask for t in x)
    plan = [m // cfg.steps + (1 if i < m % cfg.steps else 0) for i in range(cfg.steps)]
    for i in range(cfg.steps):
        with torch.no_grad():
            logits = model(torch.tensor([x]))[0].clone()
        if cfg.forbid_eos:
            logits[:, TOK.eos] = -math.inf
        if cfg.temperature > 0:
            u = torch.rand((1,) + tuple(logits.shape), dtype=torch.float64, generator=gen)[0]
            scores = logits.double().exp() / (-u.log()) ** cfg.temperature
        else:
            scores = logits
        cand = [int(scores[j].argmax()) for j in range(len(x))]
        if cfg.remasking == "random":
            conf = torch.rand((1, len(x)), generator=gen)[0].tolist()
        else:
            probs = torch.softmax(logits, dim=-1)
            conf = [float(probs[j, cand[j]]) for j in range(len(x))]
        eligible = [j for j in range(len(x)) if x[j] == TOK.mask]
        for j in sorted(eligible, key=lambda j: -conf[j])[: plan[i]]:
            x[j] = cand[j]
    return x


M = TOK.mask
# Masks at the start, in the middle and at the end, with known tokens (and EOS filling) around them.
CANVASES = [[M, M, M, 13, 16, 19, 22, 25, TOK.eos, TOK.eos],
            [4, 7, M, M, 16, M, 22, 25, 28, 31],
            [30, 31, 32, 33, 34, M, M, M, M, M]]


@pytest.mark.parametrize("cfg", [
    SamplerConfig(steps=5),
    SamplerConfig(steps=2),
    SamplerConfig(steps=5, remasking="random", seed=5),
    SamplerConfig(steps=3, temperature=0.8, seed=11),
    SamplerConfig(steps=5, forbid_eos=True),
], ids=["one-per-step", "several-per-step", "random-remasking", "temperature", "forbid-eos"])
def test_infill_equals_the_reference_and_keeps_the_known_tokens(model, cfg):
    for canvas in CANVASES:
        ours = infill(model, torch.tensor([canvas]), cfg, TOK)[0].tolist()
        assert ours == reference_infill(model, canvas, cfg, torch.Generator().manual_seed(cfg.seed)), canvas
        assert M not in ours
        assert all(o == c for o, c in zip(ours, canvas) if c != M)


def test_rows_of_a_batch_are_filled_as_alone(model):
    cfg = SamplerConfig(steps=5)
    batch = infill(model, torch.tensor(CANVASES), cfg, TOK)
    for row, canvas in zip(batch.tolist(), CANVASES):
        assert row == infill(model, torch.tensor([canvas]), cfg, TOK)[0].tolist()


@pytest.mark.parametrize("cfg", [SamplerConfig(gen_length=6, steps=6), SamplerConfig(gen_length=6, steps=3),
                                 SamplerConfig(gen_length=6, steps=6, temperature=0.5, seed=2)])
def test_masks_after_a_prompt_are_filled_as_generate_fills_them(model, cfg):
    prompt = [5, 8, 11, 14]
    generated = generate(model, [prompt], cfg, TOK)[0].tolist()
    filled = infill(model, torch.tensor([prompt + [M] * cfg.gen_length]), cfg, TOK)[0].tolist()
    assert filled == prompt + generated


def test_infill_refuses_settings_that_do_not_apply(model):
    with pytest.raises(ConfigError, match="no prompt to hide"):
        infill(model, torch.tensor([CANVASES[0]]), SamplerConfig(steps=3, cfg_scale=1.0), TOK)
    with pytest.raises(ConfigError, match="steps"):
        infill(model, torch.tensor([CANVASES[0]]), SamplerConfig(steps=0), TOK)
    with pytest.raises(ConfigError, match="remasking"):
        infill(model, torch.tensor([CANVASES[0]]), SamplerConfig(steps=3, remasking="top"), TOK)
    with pytest.raises(ConfigError, match="shape"):
        infill(model, torch.tensor(CANVASES[0]), SamplerConfig(steps=3), TOK)
