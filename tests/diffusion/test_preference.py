"""VRPO (diffusion/preference.py): the ELBO estimates, the DPO loss, and the variance reduction."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from llada_ds.data.batch import MicroBatch
from llada_ds.diffusion.masking import NoiseConfig
from llada_ds.diffusion.noise import STREAM_PREFERENCE, draw_answer_masks
from llada_ds.diffusion.preference import VRPOObjective, dpo_loss, elbo_estimates, elbo_samples
from llada_ds.diffusion.reference import FrozenReference
from llada_ds.errors import ConfigError
from llada_ds.model import LLaDAModel, ModelConfig

CFG = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=64,
                  max_seq_len=64, attention="eager")
MASK = 3


def models(perturb: float = 0.0):
    torch.manual_seed(0)
    policy = LLaDAModel(CFG)
    reference = copy.deepcopy(policy)
    if perturb:
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in policy.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=g))
    return policy, reference


def pref_batch(pairs=((0, 4, [9, 10, 11], [12, 13]), (5, 3, [20, 21], [22, 23, 24, 25]))) -> MicroBatch:
    """Pairs (global index, prompt length, chosen, rejected) -> the micro-batch layout of
    data/preference.py: chosen rows, then rejected rows, EOS(2)-padded, padding segment 0."""
    seqs, prompts, answers = [], [], []
    for side in (0, 1):
        for g, p, chosen, rejected in pairs:
            prompt = (torch.randint(5, 60, (p,), generator=torch.Generator().manual_seed(g))).tolist()
            seqs.append(prompt + (chosen if side == 0 else rejected))
            prompts.append(p)
            answers.append(2 * g + side)
    longest = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), longest), 2)
    valid = torch.zeros((len(seqs), longest), dtype=torch.long)
    for i, s in enumerate(seqs):
        tokens[i, : len(s)] = torch.tensor(s)
        valid[i, : len(s)] = 1
    return MicroBatch(tokens, answers, doc_ids=valid, prompt_lengths=torch.tensor(prompts),
                      padding=int((valid == 0).sum()))


def plain_elbo(model, seq: list[int], prompt_len: int, key: int, n: int, step: int, seed: int = 0) -> float:
    """The ELBO estimate written out: each of the n masked copies alone (no padding, no batch), the
    masked log-probabilities summed and weighted by L / l, averaged."""
    answer_len = len(seq) - prompt_len
    total = 0.0
    for j in range(n):
        (mask,) = draw_answer_masks(seed, STREAM_PREFERENCE, step, [key * n + j], [answer_len])[0]
        masked = [False] * prompt_len + mask.tolist()
        noisy = torch.tensor([[MASK if m else t for t, m in zip(seq, masked)]])
        with torch.no_grad():
            logp = torch.log_softmax(model(noisy)[0].double(), -1)
        l = sum(masked)
        total += answer_len / l * sum(float(logp[i, seq[i]]) for i in range(len(seq)) if masked[i])
    return total / n


def test_the_masks_follow_the_spec_and_the_key():
    draws = draw_answer_masks(0, STREAM_PREFERENCE, 5, [1, 2, 3, 1], [7, 7, 1, 7], masks_per_key=3)
    for d, length in zip(draws, [7, 7, 1, 7]):
        assert d.shape == (3, length)
        assert len(set(d.sum(1).tolist())) == 1 and 1 <= d.sum(1)[0] <= length  # one l per key, l in 1..L
    assert (draws[0] == draws[3]).all() and not (draws[0] == draws[1]).all()


def test_elbo_estimates_equal_a_plainly_written_loop_despite_padding():
    policy, _ = models()
    batch = pref_batch()
    s = elbo_samples(batch.tokens, batch.prompt_lengths, batch.doc_ids, batch.sample_indices, 4, MASK, 0, 9)
    got, _ = elbo_estimates(policy, s)
    for r in range(batch.tokens.shape[0]):
        seq = batch.tokens[r, : int(batch.doc_ids[r].sum())].tolist()
        want = plain_elbo(policy, seq, int(batch.prompt_lengths[r]), batch.sample_indices[r], 4, 9)
        assert float(got[r].detach()) == pytest.approx(want, rel=1e-5, abs=1e-5), r
    assert not s.masked[batch.doc_ids.repeat_interleave(4, 0) == 0].any()  # padding never masked
    prompt = torch.arange(s.masked.shape[1])[None, :] < batch.prompt_lengths.repeat_interleave(4)[:, None]
    assert not s.masked[prompt].any()  # nor the prompt


def test_the_vrpo_loss_equals_a_plain_dpo_on_the_same_estimates():
    policy, reference = models(perturb=0.02)
    batch, beta, n = pref_batch(), 0.3, 4
    objective = VRPOObjective(MASK, 64, NoiseConfig(), FrozenReference(reference), beta, n)
    loss, stats = objective.loss(policy, batch, step=3)
    m = batch.tokens.shape[0] // 2
    plain = []
    for i in range(m):
        est = {}
        for name, model in (("pi", policy), ("ref", reference)):
            for side, r in (("w", i), ("l", m + i)):
                seq = batch.tokens[r, : int(batch.doc_ids[r].sum())].tolist()
                est[name + side] = plain_elbo(model, seq, int(batch.prompt_lengths[r]), batch.sample_indices[r], n, 3)
        score = (est["piw"] - est["refw"]) - (est["pil"] - est["refl"])
        plain.append(-math.log(1 / (1 + math.exp(-beta * score))))
    assert float(loss.detach()) == pytest.approx(sum(plain) / m, rel=1e-5)
    assert stats.extra["pref_accuracy"][1] == m
    # dpo_loss itself, on given estimates
    losses, scores = dpo_loss(torch.tensor([1.0]), torch.tensor([-2.0]), torch.tensor([0.5]), torch.tensor([0.0]), 0.5)
    assert float(scores) == pytest.approx(2.5) and float(losses) == pytest.approx(math.log(1 + math.exp(-1.25)))


def grad_norm(objective, policy, batch) -> float:
    policy.zero_grad(set_to_none=True)
    objective.loss(policy, batch, 0)[0].backward()
    return math.sqrt(sum(float(p.grad.double().pow(2).sum()) for p in policy.parameters()))


def test_the_gradient_vanishes_as_beta_goes_to_zero():
    policy, reference = models(perturb=0.02)
    batch = pref_batch()
    norms = {beta: grad_norm(VRPOObjective(MASK, 64, NoiseConfig(), FrozenReference(reference), beta, 2), policy, batch)
             for beta in (1.0, 1e-3, 1e-6)}
    assert norms[1.0] > 0
    assert norms[1e-3] < 2e-3 * norms[1.0]  # d/dtheta = -beta sigmoid(-beta s) d s/dtheta: linear in beta
    assert norms[1e-6] < 2e-6 * norms[1.0]
    with pytest.raises(ConfigError):
        VRPOObjective(MASK, 64, NoiseConfig(), FrozenReference(reference), 0.0, 2)


def swapped(batch: MicroBatch) -> MicroBatch:
    """The same pairs with chosen and rejected exchanged (each answer keeps its sample index)."""
    m = batch.tokens.shape[0] // 2
    order = list(range(m, 2 * m)) + list(range(m))
    return MicroBatch(batch.tokens[order], [batch.sample_indices[i] for i in order], batch.doc_ids[order],
                      batch.prompt_lengths[order], batch.padding)


def test_swapping_chosen_and_rejected_flips_the_score():
    policy, reference = models(perturb=0.02)
    batch = pref_batch()
    objective = VRPOObjective(MASK, 64, NoiseConfig(), FrozenReference(reference), 0.5, 4)
    e, f = objective.scores(policy, batch, 2), objective.scores(policy, swapped(batch), 2)
    m = e["m"]
    score = (e["policy"][:m] - e["ref"][:m]) - (e["policy"][m:] - e["ref"][m:])
    flipped = (f["policy"][:m] - f["ref"][:m]) - (f["policy"][m:] - f["ref"][m:])
    assert torch.allclose(flipped, -score, atol=1e-5) and bool((score.abs() > 1e-3).all())
    # and at policy == reference the two losses' gradients are opposite
    policy, reference = models()
    objective = VRPOObjective(MASK, 64, NoiseConfig(), FrozenReference(reference), 0.5, 4)
    grads = []
    for b in (batch, swapped(batch)):
        policy.zero_grad(set_to_none=True)
        objective.loss(policy, b, 2)[0].backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in policy.parameters()]))
    assert torch.allclose(grads[0], -grads[1], atol=1e-6) and float(grads[0].abs().max()) > 1e-4


def test_antithetic_sampling_lowers_the_variance_of_the_score():
    """The paper's estimator (shared timesteps and masks for policy and reference) against the
    naive one (independent draws), same budget: the score's variance over noise draws per pair."""
    policy, reference = models(perturb=0.01)
    batch, n, draws = pref_batch(), 2, 24
    variances = {}
    for antithetic in (True, False):
        objective = VRPOObjective(MASK, 64, NoiseConfig(), FrozenReference(reference), 0.1, n, antithetic)
        scores = []
        with torch.no_grad():
            for step in range(draws):
                e = objective.scores(policy, batch, step)
                m = e["m"]
                scores.append((e["policy"][:m] - e["ref"][:m]) - (e["policy"][m:] - e["ref"][m:]))
        variances[antithetic] = torch.stack(scores).var(0)
    print("score variance per pair: antithetic", variances[True].tolist(), "naive", variances[False].tolist())
    assert bool((variances[True] < 0.1 * variances[False]).all())
