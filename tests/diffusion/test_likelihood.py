"""Batched likelihood (many requests, their Monte Carlo samples sorted by length and packed into
forwards) against the one-request-at-a-time estimator, for the same seed."""

import pytest
import torch
import torch.nn.functional as F

from llada_ds.diffusion.likelihood import _stratified_masks, greedy_matches, log_likelihood, log_likelihoods
from llada_ds.diffusion.sampler import guided_logits, logits_fn
from llada_ds.model import ModelConfig, build_model

V, MASK = 61, 60
CFG = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=48, attention="sdpa")


@torch.no_grad()
def one_request(model_or_fn, prompt, answer, mask_id, mc_num=128, batch_size=16, cfg_scale=0.0, seed=0):
    """The estimator as it was written before batching (one request, batch_size samples per forward,
    full logits for every position): the reference the batched one must reproduce."""
    fn = model_or_fn if not isinstance(model_or_fn, torch.nn.Module) else logits_fn(model_or_fn)
    seq = torch.tensor(list(prompt) + list(answer), dtype=torch.long)[None].repeat(batch_size, 1)
    p_len, a_len = len(prompt), len(answer)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(mc_num // batch_size):
        masks, l = _stratified_masks(batch_size, a_len, gen)
        is_mask = torch.cat([torch.zeros(batch_size, p_len, dtype=torch.bool), masks], dim=1)
        noisy = torch.where(is_mask, torch.full_like(seq, mask_id), seq)
        logits = guided_logits(fn, noisy, None, p_len, mask_id, cfg_scale)
        ce = F.cross_entropy(logits[is_mask].float(), seq[is_mask], reduction="none")
        weight = (a_len / l.float())[:, None].expand(batch_size, seq.shape[1])[is_mask]
        total += (ce * weight).sum().item() / batch_size
    return -total / (mc_num // batch_size)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(CFG).eval()


def requests(n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        p, a = int(torch.randint(0, 12, (), generator=g)), int(torch.randint(1, 9, (), generator=g))
        out.append((torch.randint(0, 58, (p,), generator=g).tolist(), torch.randint(0, 58, (a,), generator=g).tolist()))
    return out


@pytest.mark.parametrize("budget", [100, 10**6])  # a few rows per forward (padded), everything at once
def test_batched_estimates_equal_one_request_at_a_time_for_the_same_seed(model, budget):
    reqs = requests()
    got = log_likelihoods(model, reqs, MASK, mc_num=32, batch_size=8, seed=3, token_budget=budget)
    for (p, a), value in zip(reqs, got):
        assert value == pytest.approx(one_request(model, p, a, MASK, 32, 8, seed=3), rel=1e-5, abs=1e-5)


def test_guidance_and_other_models_batch_the_same_way(model):
    reqs = requests(4, seed=1)
    got = log_likelihoods(model, reqs, MASK, mc_num=16, batch_size=8, cfg_scale=1.5, seed=0, token_budget=150)
    for (p, a), value in zip(reqs, got):
        assert value == pytest.approx(one_request(model, p, a, MASK, 16, 8, 1.5, 0), rel=1e-5, abs=1e-5)
    # A plain function (tokens, valid mask) -> logits, as for a Hugging Face model.
    fn = logits_fn(model)
    got = log_likelihoods(fn, reqs, MASK, mc_num=16, batch_size=8, seed=0, token_budget=150)
    for (p, a), value in zip(reqs, got):
        assert value == pytest.approx(one_request(fn, p, a, MASK, 16, 8, seed=0), rel=1e-5, abs=1e-5)


def test_a_request_does_not_depend_on_its_batch(model):
    reqs = requests(5, seed=2)
    alone = log_likelihood(model, *reqs[2], MASK, mc_num=16, batch_size=8, seed=5)
    together = log_likelihoods(model, reqs, MASK, mc_num=16, batch_size=8, seed=5, token_budget=10**6)[2]
    assert together == pytest.approx(alone, rel=1e-5, abs=1e-5)


def test_greedy_matches_are_the_argmax_of_one_fully_masked_forward(model):
    reqs = requests(6, seed=4)
    with torch.no_grad():
        expected = []
        for p, a in reqs:
            logits = model(torch.tensor([p + [MASK] * len(a)]))[0, len(p):]
            expected.append(logits.argmax(-1).tolist() == a)
        # Make some answers the model's own prediction, so both outcomes occur.
        for i in (0, 3):
            p, a = reqs[i]
            reqs[i] = (p, model(torch.tensor([p + [MASK] * len(a)]))[0, len(p):].argmax(-1).tolist())
            expected[i] = True
    assert greedy_matches(model, reqs, MASK, token_budget=40) == expected
    assert greedy_matches(logits_fn(model), reqs, MASK, token_budget=40) == expected


def test_progress_is_reported_after_each_forward_up_to_the_total(model):
    reqs = requests(6, seed=4)
    seen, greedy_seen = [], []
    got = log_likelihoods(model, reqs, MASK, mc_num=16, batch_size=8, seed=1, token_budget=100,
                          progress=lambda done, total: seen.append((done, total)))
    assert got == log_likelihoods(model, reqs, MASK, mc_num=16, batch_size=8, seed=1, token_budget=100)
    total = seen[0][1]
    assert len(seen) > 1 and all(t == total for _, t in seen) and seen[-1][0] == total
    assert [d for d, _ in seen] == sorted(set(d for d, _ in seen))  # strictly increasing
    greedy_matches(model, reqs, MASK, token_budget=40, progress=lambda d, t: greedy_seen.append((d, t)))
    assert greedy_seen[-1] == (len(reqs), len(reqs)) and len(greedy_seen) > 1
