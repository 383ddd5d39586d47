"""The exact LLaDA sampler against a plainly written step-by-step reference of the spec, and the
Monte Carlo likelihood against brute force."""

import itertools
import math

import pytest
import torch

from llada_ds.diffusion.likelihood import log_likelihood
from llada_ds.diffusion.sampler import SamplerConfig, SpecialTokens, generate, reveal_counts
from llada_ds.model import ModelConfig, build_model

V = 61
TOK = SpecialTokens(mask=60, pad=59, eos=58, eot=57)
CFG = ModelConfig(vocab_size=V, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=96, attention="eager")


@pytest.fixture(scope="module")
def model():
    """A tiny model trained briefly on structured sequences, so that its predictions depend on
    context (a random model predicts nearly the same token everywhere, which hides sampler bugs)."""
    from llada_ds.diffusion import NoiseConfig, diffusion_loss, pretrain_batch

    torch.manual_seed(3)
    m = build_model(CFG)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(60):
        start = torch.randint(0, 50, (16, 1), generator=g)
        x0 = (start + torch.arange(24) * torch.randint(1, 4, (16, 1), generator=g)) % 56  # arithmetic runs
        batch = pretrain_batch(x0, range(16 * step, 16 * step + 16), step, TOK.mask, NoiseConfig(random_length_prob=0))
        loss = diffusion_loss(m(batch.noisy, logits_mask=batch.masked), batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return m.eval()


def reference_generate(model, prompt, cfg: SamplerConfig, gen: torch.Generator):
    """The spec, one sample, written plainly (no padding: the prompt is exactly this sample's)."""
    block = cfg.block_length or cfg.gen_length
    n_blocks = cfg.gen_length // block
    per_block = cfg.steps // n_blocks
    x = list(prompt) + [TOK.mask] * cfg.gen_length
    p = len(prompt)

    def logits_of(seq):
        with torch.no_grad():
            return model(torch.tensor([seq]))[0]

    for k in range(n_blocks):
        lo, hi = p + k * block, p + (k + 1) * block
        m = sum(1 for t in x[lo:hi] if t == TOK.mask)
        plan = [m // per_block + (1 if i < m % per_block else 0) for i in range(per_block)]
        for i in range(per_block):
            logits = logits_of(x)
            if cfg.cfg_scale > 0:
                uncond = [TOK.mask] * p + x[p:]
                un = logits_of(uncond)
                logits = un + (cfg.cfg_scale + 1) * (logits - un)
            logits = logits.clone()
            if cfg.forbid_eos:
                logits[:, TOK.eos] = -math.inf
            if cfg.temperature > 0:
                u = torch.rand((1,) + tuple(logits.shape), dtype=torch.float64, generator=gen)[0]
                scores = logits.double().exp() / (-u.log()) ** cfg.temperature
            else:
                scores = logits
            cand = [int(scores[j].argmax()) for j in range(len(x))]
            if cfg.eot_zero_confidence:
                # The published sampler's effect: end-of-turn candidates get confidence 0, and at
                # temperature 0 EOS candidates too.
                logits[:, TOK.eot] = -math.inf
                if cfg.temperature == 0:
                    logits[:, TOK.eos] = -math.inf
            if cfg.remasking == "random":
                conf = torch.rand((1, len(x)), generator=gen)[0].tolist()
            else:
                probs = torch.softmax(logits, dim=-1)
                conf = [float(probs[j, cand[j]]) for j in range(len(x))]
            eligible = [j for j in range(len(x)) if x[j] == TOK.mask and j < hi]
            chosen = sorted(eligible, key=lambda j: -conf[j])[: plan[i]]
            for j in chosen:
                x[j] = cand[j]
    return x[p:]


PROMPTS = [[5, 9, 13, 2, 7], [11, 3], [20, 21, 22, 23, 24, 25, 26]]


@pytest.mark.parametrize("cfg", [
    SamplerConfig(gen_length=8, steps=8),
    SamplerConfig(gen_length=8, steps=4, block_length=4),
    SamplerConfig(gen_length=12, steps=6, block_length=4, remasking="random", seed=5),
    SamplerConfig(gen_length=8, steps=8, block_length=4, temperature=0.7, seed=11),
    SamplerConfig(gen_length=16, steps=16, temperature=20.0, seed=2),
    SamplerConfig(gen_length=8, steps=4, cfg_scale=1.5),
    SamplerConfig(gen_length=8, steps=8, forbid_eos=True, eot_zero_confidence=True),
], ids=["plain", "blocks", "random-remasking", "temperature", "hot", "cfg", "eos-controls"])
def test_exact_sampler_equals_the_reference_token_for_token(model, cfg):
    for prompt in PROMPTS:
        ours = generate(model, [prompt], cfg, TOK)[0].tolist()
        ref = reference_generate(model, prompt, cfg, torch.Generator().manual_seed(cfg.seed))
        assert ours == ref, (prompt, ours, ref)


def test_batch_with_left_padding_equals_each_prompt_alone(model):
    cfg = SamplerConfig(gen_length=8, steps=8, block_length=4)
    batch = generate(model, PROMPTS, cfg, TOK)
    for i, prompt in enumerate(PROMPTS):
        assert batch[i].tolist() == generate(model, [prompt], cfg, TOK)[0].tolist()


def test_hugging_face_style_models_work_through_logits():
    class HFStyle(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask=None):
            out = type("Out", (), {})()
            out.logits = self.inner(input_ids, doc_ids=attention_mask)
            return out

    torch.manual_seed(3)
    inner = build_model(CFG).eval()
    cfg = SamplerConfig(gen_length=8, steps=8)
    assert generate(HFStyle(inner), PROMPTS, cfg, TOK).tolist() == generate(inner, PROMPTS, cfg, TOK).tolist()


def test_reveal_counts_follow_the_spec():
    masked = torch.tensor([[True] * 10, [True] * 3 + [False] * 7])
    assert reveal_counts(masked, 4).tolist() == [[3, 3, 2, 2], [1, 1, 1, 0]]


def test_bad_sampler_settings_are_refused(model):
    with pytest.raises(ValueError, match="multiple of block_length"):
        generate(model, [[1]], SamplerConfig(gen_length=10, steps=10, block_length=4), TOK)
    with pytest.raises(ValueError, match="multiple of the number of blocks"):
        generate(model, [[1]], SamplerConfig(gen_length=8, steps=3, block_length=4), TOK)
    with pytest.raises(ValueError, match="padding id must differ"):
        generate(model, [[1]], SamplerConfig(gen_length=8, steps=8), SpecialTokens(mask=5, pad=5, eos=1, eot=2))


def brute_force_log_likelihood(model, prompt, answer):
    """E over l ~ U{1..L} and uniformly chosen l-subsets of -(L/l) sum CE, by enumeration."""
    L = len(answer)
    seq = list(prompt) + list(answer)
    total = 0.0
    for l in range(1, L + 1):
        subsets = list(itertools.combinations(range(L), l))
        acc = 0.0
        for subset in subsets:
            noisy = list(seq)
            for j in subset:
                noisy[len(prompt) + j] = TOK.mask
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([noisy]))[0].double(), -1)
            acc += -(L / l) * sum(-float(logp[len(prompt) + j, answer[j]]) for j in subset)
        total += acc / len(subsets)
    return total / L


def test_likelihood_estimate_converges_to_the_brute_force_expectation(model):
    prompt, answer = [4, 8, 15], [16, 23, 42]
    exact = brute_force_log_likelihood(model, prompt, answer)
    estimates = [log_likelihood(model, prompt, answer, TOK.mask, mc_num=64, batch_size=8, seed=s) for s in range(12)]
    mean = sum(estimates) / len(estimates)
    sd = (sum((e - mean) ** 2 for e in estimates) / (len(estimates) - 1)) ** 0.5
    assert abs(mean - exact) < 4 * sd / len(estimates) ** 0.5 + 1e-6, (mean, exact, sd)
    # Deterministic given the seed.
    assert log_likelihood(model, prompt, answer, TOK.mask, mc_num=16, batch_size=8, seed=1) == \
        log_likelihood(model, prompt, answer, TOK.mask, mc_num=16, batch_size=8, seed=1)


def test_likelihood_variance_shrinks_with_mc_num(model):
    prompt, answer = [4, 8, 15, 3], [16, 23, 42, 7, 9, 1]

    def spread(mc):
        xs = [log_likelihood(model, prompt, answer, TOK.mask, mc_num=mc, batch_size=8, seed=s) for s in range(10)]
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / (len(xs) - 1)

    assert spread(64) < 0.5 * spread(8)


# ---- fast sampler ---------------------------------------------------------------------------------

from llada_ds.diffusion.fast_sampler import FastConfig, generate_fast  # noqa: E402
from llada_ds.diffusion.sampler import left_pad  # noqa: E402
from llada_ds.model.kv_cache import KVCache, inference_context  # noqa: E402


@pytest.mark.parametrize("cfg", [
    SamplerConfig(gen_length=8, steps=8),
    SamplerConfig(gen_length=12, steps=6, block_length=4),
    SamplerConfig(gen_length=8, steps=4, cfg_scale=1.5),
    SamplerConfig(gen_length=8, steps=8, forbid_eos=True, eot_zero_confidence=True),
], ids=["plain", "blocks", "cfg", "eos-controls"])
def test_fast_sampler_without_cache_or_threshold_is_the_exact_sampler(model, cfg):
    exact = generate(model, PROMPTS, cfg, TOK)
    fast, forwards = generate_fast(model, PROMPTS, cfg, TOK, FastConfig(cache="none"))
    assert fast.tolist() == exact.tolist()
    assert forwards == cfg.steps * (2 if cfg.cfg_scale else 1)


def test_cached_keys_reproduce_the_full_forward_with_padding(model):
    x, valid = left_pad([[5, 9, 13, 2, 7, 1, 1], [11, 3, 4]], TOK.pad)
    x = torch.cat([x, torch.full((2, 6), TOK.mask)], dim=1)
    valid = torch.cat([valid, torch.ones(2, 6, dtype=torch.bool)], dim=1)
    collect = []
    full = model(x, cache=inference_context("eager", valid, collect=collect))
    assert len(collect) == CFG.n_layers
    cache = KVCache.from_collected(collect, valid)
    pos = torch.arange(x.shape[1])
    for keep, q in ((pos[:8], pos[8:]), (torch.cat([pos[:8], pos[11:]]), pos[8:11])):
        part = model(x[:, q], cache=inference_context("eager", valid[:, q], positions=q, past=cache.select(keep)))
        torch.testing.assert_close(part[valid[:, q]], full[:, q][valid[:, q]], rtol=1e-5, atol=1e-5)
    # Real tokens ignore padding: the unpadded second row gives the same logits.
    alone = model(torch.cat([torch.tensor([[11, 3, 4]]), torch.full((1, 6), TOK.mask)], dim=1))
    torch.testing.assert_close(full[1, 4:], alone[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fast", [FastConfig("prefix"), FastConfig("dual"), FastConfig("dual", threshold=0.5)],
                         ids=["prefix", "dual", "dual+threshold"])
def test_cached_sampling_of_a_padded_batch_equals_each_prompt_alone(model, fast):
    cfg = SamplerConfig(gen_length=12, steps=12, block_length=4)
    batch, _ = generate_fast(model, PROMPTS, cfg, TOK, fast)
    for i, prompt in enumerate(PROMPTS):
        alone, _ = generate_fast(model, [prompt], cfg, TOK, fast)
        assert batch[i].tolist() == alone[0].tolist()


def test_threshold_decoding_needs_fewer_forwards(model):
    cfg = SamplerConfig(gen_length=16, steps=16, block_length=8)
    _, exact_forwards = generate_fast(model, PROMPTS, cfg, TOK, FastConfig("none"))
    out, fewer = generate_fast(model, PROMPTS, cfg, TOK, FastConfig("dual", threshold=0.05))
    assert fewer < exact_forwards and out.shape == (3, 16)
    assert not (out == TOK.mask).all(dim=1).any()



@pytest.mark.parametrize("mode", ["prefix", "dual"])
def test_cached_steps_feed_the_right_positions_and_cached_keys(model, mode):
    calls = []
    original = model.forward

    def spy(input_ids, **kw):
        assert set(kw) == {"cache"}  # everything the cached sampler needs travels in one argument
        ctx = kw["cache"]
        calls.append((input_ids.shape[1], None if ctx.positions is None else ctx.positions.tolist(),
                      None if ctx.past is None else ctx.past.keys[0].shape[1]))
        return original(input_ids, **kw)

    model.forward = spy
    try:
        generate_fast(model, [[5, 9, 13, 2, 7]], SamplerConfig(gen_length=12, steps=12, block_length=4), TOK,
                      FastConfig(mode))
    finally:
        del model.forward
    total = 5 + 12
    expected = []
    for k in range(3):
        start, end = 5 + 4 * k, 5 + 4 * (k + 1)
        expected.append((total, None, None))  # the block's first step: the whole canvas, keys collected
        q0, q1 = (start, total) if mode == "prefix" else (start, end)
        expected += [(q1 - q0, list(range(q0, q1)), total - (q1 - q0))] * 3
    assert calls == expected


def test_fast_sampler_terminates_when_the_model_predicts_the_mask(model):
    with torch.no_grad():
        bias = torch.zeros(V)
        bias[TOK.mask] = 1e4
        saved = model.head.weight.clone()
        model.head.weight.add_(bias[:, None])  # every position now predicts the mask id
    try:
        for fast in (FastConfig("none"), FastConfig("dual", threshold=0.5)):
            out, _ = generate_fast(model, [[5, 9]], SamplerConfig(gen_length=8, steps=8), TOK, fast)
            assert out.shape == (1, 8)
    finally:
        with torch.no_grad():
            model.head.weight.copy_(saved)


# ---- the shared pieces: guidance, one step, settings ------------------------------------------------

from llada_ds.diffusion.sampler import denoise_step, guided_logits  # noqa: E402
from llada_ds.errors import ConfigError  # noqa: E402
from llada_ds.model import LLaDAModel  # noqa: E402


def test_guidance_combines_a_conditional_and_a_prompt_masked_pass(model):
    x = torch.tensor([[5, 9, 13, TOK.mask, TOK.mask], [11, 3, 4, 8, TOK.mask]])
    fn = lambda t, valid: model(t)  # noqa: E731
    with torch.no_grad():
        cond = model(x)
        uncond = model(torch.cat([torch.full((2, 3), TOK.mask), x[:, 3:]], dim=1))
        guided = guided_logits(fn, x, None, 3, TOK.mask, 1.5)
        assert torch.equal(guided_logits(fn, x, None, 3, TOK.mask, 0.0), cond)
    torch.testing.assert_close(guided, uncond + 2.5 * (cond - uncond), rtol=1e-5, atol=1e-5)
    assert x[0, 0] == 5  # the caller's canvas is not overwritten by the unconditional pass


def test_one_step_reveals_by_count_or_by_threshold():
    gen = torch.Generator().manual_seed(0)
    m = TOK.mask
    window = torch.tensor([[1, m, m, m, m], [m, 2, m, m, 3]])
    logits = torch.zeros(2, 5, V)
    # Candidate j + 10 at position j, with a confidence that grows with j (from 0.017 to 0.49).
    for j in range(5):
        logits[:, j, j + 10] = j + 0.5
    cfg = SamplerConfig(gen_length=4, steps=4)
    out = denoise_step(logits.clone(), window, cfg, TOK, gen, counts=torch.tensor([2, 1]))
    assert out.tolist() == [[1, m, m, 13, 14], [m, 2, m, 13, 3]]
    # Positions from block_end on never qualify, whatever their confidence.
    out = denoise_step(logits.clone(), window, cfg, TOK, gen, counts=torch.tensor([2, 1]), block_end=3)
    assert out.tolist() == [[1, 11, 12, m, m], [m, 2, 12, m, 3]]
    probs = torch.softmax(logits[0, 3], -1)[13].item()  # confidence of position 3, between 0 and 1
    out = denoise_step(logits.clone(), window, cfg, TOK, gen, threshold=probs - 1e-3)
    assert out.tolist() == [[1, m, m, 13, 14], [m, 2, m, 13, 3]]
    out = denoise_step(logits.clone(), window, cfg, TOK, gen, threshold=0.999)  # none above: the best one
    assert out.tolist() == [[1, m, m, m, 14], [m, 2, m, 13, 3]]
    with pytest.raises(ValueError, match="either counts or threshold"):
        denoise_step(logits.clone(), window, cfg, TOK, gen)


@pytest.mark.parametrize("attention", ["auto", "flash", "sdpa"])
def test_fast_sampler_leaves_the_model_config_alone(model, attention):
    # flash on CPU could not run at all: the sampler's own kernel choice (SDPA) must be what runs.
    other = LLaDAModel(CFG.replace(attention=attention)).eval()
    other.load_state_dict(model.state_dict())
    ref_model = LLaDAModel(CFG.replace(attention="sdpa")).eval()
    ref_model.load_state_dict(model.state_dict())
    config = other.config
    seen = []
    cfg = SamplerConfig(gen_length=8, steps=8, block_length=4)
    for fast in (FastConfig("none"), FastConfig("dual", threshold=0.5)):
        out, _ = generate_fast(other, PROMPTS, cfg, TOK, fast, on_step=lambda s, c: seen.append(other.config))
        assert out.tolist() == generate_fast(ref_model, PROMPTS, cfg, TOK, fast)[0].tolist()
    assert other.config is config and config == CFG.replace(attention=attention)
    assert all(c is config for c in seen)  # not even swapped during the run


def test_bad_settings_raise_config_errors_that_name_the_value(model):
    for cfg, text in ((SamplerConfig(gen_length=10, steps=10, block_length=4), "gen_length=10"),
                      (SamplerConfig(gen_length=8, steps=3, block_length=4), "steps=3"),
                      (SamplerConfig(gen_length=0, steps=8), "gen_length=0"),
                      (SamplerConfig(gen_length=8, steps=8, remasking="lowest"), "'lowest'"),
                      (SamplerConfig(gen_length=8, steps=8, temperature=-1.0), "temperature=-1.0"),
                      (SamplerConfig(gen_length=8, steps=8, cfg_scale=-0.5), "cfg_scale=-0.5")):
        for sample in (generate, generate_fast):
            with pytest.raises(ConfigError, match=text):
                sample(model, [[1]], cfg, TOK)
    with pytest.raises(ConfigError, match="both are 5"):
        generate(model, [[1]], SamplerConfig(gen_length=8, steps=8), SpecialTokens(mask=5, pad=5, eos=1, eot=2))
    with pytest.raises(ConfigError, match="'full'"):
        FastConfig("full")
    with pytest.raises(ConfigError, match="threshold=1.5"):
        FastConfig("dual", threshold=1.5)
    with pytest.raises(ConfigError, match="cfg_scale=1.5.*'prefix'"):
        generate_fast(model, [[1]], SamplerConfig(gen_length=8, steps=8, cfg_scale=1.5), TOK, FastConfig("prefix"))
    with pytest.raises(ConfigError, match="answer is empty"):
        log_likelihood(model, [1, 2], [], TOK.mask)
    with pytest.raises(ConfigError, match="mc_num=12 must be a multiple of batch_size=8"):
        log_likelihood(model, [1, 2], [3], TOK.mask, mc_num=12, batch_size=8)
    with pytest.raises(ConfigError, match="batch_size=0"):
        log_likelihood(model, [1, 2], [3], TOK.mask, mc_num=8, batch_size=0)
    with pytest.raises(ConfigError, match="cfg_scale=-1"):
        log_likelihood(model, [1, 2], [3], TOK.mask, mc_num=8, batch_size=8, cfg_scale=-1)
