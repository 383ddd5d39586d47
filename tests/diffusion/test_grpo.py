"""diffu-GRPO (diffusion/grpo.py): advantages, the clipped objective, KL, wd1, the log-probability
estimator and the rollouts, against plainly written references."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from llada_ds.data.chat import encode_chat
from llada_ds.data.prompts import PromptBatch
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.diffusion.grpo import (
    GRPOObjective, GRPOSettings, clipped_objective, group_advantages, wd1_weights,
)
from llada_ds.diffusion.masking import NoiseConfig
from llada_ds.diffusion.reference import FrozenReference
from llada_ds.diffusion.sampler import SamplerConfig
from llada_ds.errors import ConfigError
from llada_ds.model import LLaDAModel, ModelConfig
from llada_ds.rewards import exact_match, load_reward

CFG = ModelConfig(vocab_size=4096, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=64,
                  max_seq_len=64, attention="eager")
SAMPLER = SamplerConfig(gen_length=6, steps=6, block_length=6, temperature=1.0)


def test_group_advantages_equal_a_plain_reference():
    rewards = [1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5, 0.0, 0.0, 0.0, 2.0]
    for scale in (False, True):
        got = group_advantages(torch.tensor(rewards, dtype=torch.float64), 4, scale).tolist()
        want = []
        for g in range(3):
            group = rewards[4 * g : 4 * g + 4]
            mean = sum(group) / 4
            std = math.sqrt(sum((r - mean) ** 2 for r in group) / 3)
            want += [(r - mean) / (std + 1e-4 if scale else 1.0) for r in group]
        assert got == pytest.approx(want, abs=1e-12)


def test_clipped_objective_kl_and_clipping_equal_a_plain_per_token_reference():
    g = torch.Generator().manual_seed(0)
    m, n, eps, beta = 3, 5, 0.2, 0.04
    logp = -torch.rand(m, n, generator=g, dtype=torch.float64) * 3
    old = logp + 0.3 * torch.randn(m, n, generator=g, dtype=torch.float64)
    ref = logp + 0.2 * torch.randn(m, n, generator=g, dtype=torch.float64)
    adv = torch.tensor([1.0, -0.5, 0.0], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.float64)
    out = clipped_objective(logp, old, ref, adv, mask, eps, beta)
    for i in range(m):
        terms, length = [], 0
        for k in range(n):
            if not mask[i, k]:
                continue
            ratio = math.exp(float(logp[i, k] - old[i, k]))
            a = float(adv[i])
            surrogate = min(ratio * a, min(max(ratio, 1 - eps), 1 + eps) * a)
            r = float(ref[i, k] - logp[i, k])
            kl = math.exp(r) - r - 1
            assert float(out["kl"][i, k]) == pytest.approx(kl, abs=1e-12)
            clipped = (ratio < 1 - eps and a < 0) or (ratio > 1 + eps and a > 0)
            assert bool(out["clipped"][i, k]) == clipped
            terms.append(-surrogate + beta * kl)
            length += 1
        assert float(out["loss"][i]) == pytest.approx(sum(terms) / length, abs=1e-12)
    assert bool(out["clipped"].any()) and not bool(out["clipped"].all())
    # without KL (beta 0) no reference is needed
    assert clipped_objective(logp, old, None, adv, mask, eps, 0.0)["kl"] is None


def test_wd1_weights_are_the_two_softmaxes_of_the_advantages():
    adv = torch.tensor([1.0, -1.0, 0.0, 0.0, 0.5, -0.5], dtype=torch.float64)
    got = wd1_weights(adv, 3).tolist()
    want = []
    for g in range(2):
        a = adv[3 * g : 3 * g + 3].tolist()
        pos = [math.exp(x) / sum(math.exp(y) for y in a) for x in a]
        neg = [math.exp(-x) / sum(math.exp(-y) for y in a) for x in a]
        want += [n - p for n, p in zip(neg, pos)]
    assert got == pytest.approx(want, abs=1e-12)


@pytest.fixture(scope="module")
def tokenizer(sp_tokenizer):
    return Tokenizer.load(sp_tokenizer)


def prompts(tok, texts, start=0) -> PromptBatch:
    ids = [encode_chat(tok, [{"role": "user", "content": t}], add_generation_prompt=True) for t in texts]
    return PromptBatch(ids, list(range(start, start + len(texts))), list(texts),
                       [{"prompt": t, "answer": t.split(": ")[1]} for t in texts])


def objective(tok, settings: GRPOSettings, reference=None, micro_batch=4) -> GRPOObjective:
    return GRPOObjective(tok.special.mask, CFG.vocab_size, NoiseConfig(seed=5), tok, exact_match, settings, SAMPLER,
                         micro_batch, reference)


def model():
    torch.manual_seed(0)
    return LLaDAModel(CFG)


def test_rollouts_of_a_prompt_do_not_depend_on_the_other_prompts(tokenizer):
    policy = model()
    obj = objective(tokenizer, GRPOSettings(generations=4, beta=0.0, log_samples=100))
    both = obj.prepare(policy, [prompts(tokenizer, ["Copy: 1 2 3", "Copy: 4 5 6 7"], start=10)], step=3)
    alone = obj.prepare(policy, [prompts(tokenizer, ["Copy: 4 5 6 7"], start=11)], step=3)
    assert [s["completion"] for s in both.samples[4:]] == [s["completion"] for s in alone.samples]
    assert len({s["completion"] for s in alone.samples}) > 1  # temperature 1: the G samples differ
    again = obj.prepare(policy, [prompts(tokenizer, ["Copy: 4 5 6 7"], start=11)], step=4)  # another step
    assert [s["completion"] for s in again.samples] != [s["completion"] for s in alone.samples]


def test_update_inputs_mask_every_completion_token_and_prompt_tokens_at_the_rate(tokenizer):
    policy = model()
    texts = ["Copy: 1 2 3", "Copy: 4 5 6 7", "Keys: a=1 b=2. What is a?", "Copy: 0"]
    obj = objective(tokenizer, GRPOSettings(generations=2, updates=3, beta=0.0, prompt_mask_prob=0.3), micro_batch=8)
    prepared = obj.prepare(policy, [prompts(tokenizer, texts)], step=0)
    assert len(prepared.updates) == 3 and all(len(u) == 1 for u in prepared.updates)
    masked_share, previous = [], None
    for (b,) in prepared.updates:
        masked = b.noisy == tokenizer.special.mask
        assert bool(masked[b.scored].all())  # the completion fully masked
        padding = b.doc_ids == 0
        assert bool(padding.any()) and not bool(masked[padding].any())  # padding left alone
        prompt = ~b.scored & ~padding
        masked_share.append(float(masked[prompt].float().mean()))
        assert previous is None or not torch.equal(masked, previous)  # a fresh mask per update
        previous = masked
    assert 0.15 < sum(masked_share) / 3 < 0.45


def plain_token_logps(model, tokens: list[int], masked: list[bool], n: int, mask_id: int) -> list[float]:
    """d1's estimate for one row alone: the masked input, one forward, log p of the last n tokens."""
    x = torch.tensor([[tok if not m else mask_id for tok, m in zip(tokens, masked)]])
    return [float(v) for v in torch.log_softmax(model(x)[0].double(), -1)[-n:].gather(
        1, torch.tensor(tokens[-n:])[:, None]).squeeze(1)]


def test_the_loss_equals_a_plain_reference_on_prepared_rollouts(tokenizer):
    policy = model()
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    s = GRPOSettings(generations=4, updates=2, clip=0.2, beta=0.1)
    obj = objective(tokenizer, s, FrozenReference(reference), micro_batch=8)
    texts = ["Copy: 1 2 3", "Copy: 4 5 6 7"]
    prepared = obj.prepare(policy, [prompts(tokenizer, texts)], step=1)
    b = prepared.updates[1][0]
    with torch.no_grad():
        for p in policy.parameters():  # the policy moved since the rollouts: ratios differ from 1
            p.add_(0.02 * torch.randn_like(p))
    loss, stats = obj.loss(policy, b, step=1)
    n = SAMPLER.gen_length
    mask_id = tokenizer.special.mask
    rows = []
    for i in range(b.tokens.shape[0]):
        valid = b.doc_ids[i] > 0 if b.doc_ids is not None else torch.ones_like(b.tokens[i], dtype=torch.bool)
        tokens, noisy = b.tokens[i][valid].tolist(), b.noisy[i][valid].tolist()
        masked = [t == mask_id for t in noisy]
        with torch.no_grad():
            logp = plain_token_logps(policy, tokens, masked, n, mask_id)
            ref = plain_token_logps(reference, tokens, masked, n, mask_id)
        old = b.old[i].tolist()
        a = float(b.advantages[i])
        length = int(b.completion_mask[i].sum())
        terms = []
        for k in range(length):
            ratio = math.exp(logp[k] - old[k])
            r = ref[k] - logp[k]
            terms.append(-min(ratio * a, min(max(ratio, 0.8), 1.2) * a) + 0.1 * (math.exp(r) - r - 1))
        rows.append(sum(terms) / length)
    assert float(loss.detach()) == pytest.approx(sum(rows) / len(rows), rel=1e-4, abs=1e-6)
    assert set(stats.extra) == {"kl", "clip_fraction"}
    # the first update sees the rollout weights: its ratios are exactly 1
    fresh = obj.prepare(policy, [prompts(tokenizer, texts)], step=2)
    loss0, stats0 = obj.loss(policy, fresh.updates[0][0], step=2)
    assert float(stats0.extra["clip_fraction"][0]) == 0.0


def test_a_failing_reward_function_is_reported_after_the_forwards(tokenizer):
    def broken(prompt, completion, example):
        return example["score"]

    obj = GRPOObjective(tokenizer.special.mask, CFG.vocab_size, NoiseConfig(), tokenizer, broken,
                        GRPOSettings(generations=2, beta=0.0), SAMPLER, 4)
    prepared = obj.prepare(model(), [prompts(tokenizer, ["Copy: 1 2"], start=3)], step=0)
    assert "reward function failed on global prompt 3, sample 0: KeyError('score')" in prepared.error
    assert len(prepared.updates) == 1  # every forward ran: ranks stop together in the loop's check


def test_settings_and_rewards_are_checked():
    with pytest.raises(ConfigError, match="grpo.generations"):
        GRPOSettings(generations=1)
    with pytest.raises(ConfigError, match="grpo.loss"):
        GRPOSettings(loss="ppo")
    assert load_reward("llada_ds.rewards:exact_match") is exact_match
    with pytest.raises(ConfigError, match="no function"):
        load_reward("llada_ds.rewards:nothing")
    with pytest.raises(ConfigError, match="module:function"):
        load_reward("exact_match")
    assert exact_match("Copy: 1", " 1 ", {"answer": "1"}) == 1.0 and exact_match("Copy: 1", "2", {"answer": "1"}) == 0.0
