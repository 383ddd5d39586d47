import pytest
import torch

from llada_ds.diffusion import NoiseConfig, diffusion_loss, pretrain_batch, sft_batch

V, MASK = 50, 49


def ref_pretrain_loss(logits, x0, masked, p_mask):
    """The pre-training loss of docs/llada.md, written out: sum_masked CE / p, divided by b * l."""
    b, l = x0.shape
    total = 0.0
    for i in range(b):
        for j in range(l):
            if masked[i, j]:
                total += -torch.log_softmax(logits[i, j].double(), 0)[x0[i, j]] / p_mask[i].double()
    return total / (b * l)


def ref_sft_loss(logits, x0, masked, p_mask, prompt_len):
    """The SFT loss of docs/llada.md: per sample sum_masked CE / p / answer length, then the batch mean."""
    b, l = x0.shape
    per_sample = []
    for i in range(b):
        answer_len = l - int(prompt_len[i])
        s = 0.0
        for j in range(l):
            if masked[i, j]:
                s += -torch.log_softmax(logits[i, j].double(), 0)[x0[i, j]] / p_mask[i].double()
        per_sample.append(s / answer_len)
    return sum(per_sample) / b


def tokens(b, l):
    return torch.randint(0, V - 1, (b, l))


def test_pretrain_loss_equals_the_spec_reference():
    x0 = tokens(4, 32)
    batch = pretrain_batch(x0, [10, 11, 12, 13], step=3, mask_id=MASK, noise=NoiseConfig(random_length_prob=0))
    logits = torch.randn(4, 32, V, requires_grad=True)
    out = diffusion_loss(logits, batch)
    ref = ref_pretrain_loss(logits.detach(), x0, batch.masked, batch.p_mask)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)
    # Normalised by all b * l positions, not by the number of masked tokens.
    n = int(batch.masked.sum())
    assert 0 < n < 4 * 32
    masked_mean = ref * (4 * 32) / n
    assert out.loss.item() != pytest.approx(masked_mean.item(), rel=1e-3)
    out.loss.backward()
    assert logits.grad[~batch.masked].abs().max() == 0  # unmasked positions never scored


def test_masked_only_logits_give_the_same_loss():
    x0 = tokens(3, 16)
    batch = pretrain_batch(x0, [0, 1, 2], 0, MASK, NoiseConfig(random_length_prob=0))
    logits = torch.randn(3, 16, V)
    full = diffusion_loss(logits, batch)
    part = diffusion_loss(logits[batch.masked], batch)
    assert full.loss.item() == pytest.approx(part.loss.item(), rel=1e-6)


def test_forward_process_masks_with_p_and_replaces_by_the_mask_id():
    eps = 1e-3
    x0 = tokens(256, 512)
    batch = pretrain_batch(x0, range(256), 0, MASK, NoiseConfig(eps=eps, random_length_prob=0))
    torch.testing.assert_close(batch.p_mask, (1 - eps) * batch.t + eps)
    assert torch.equal(batch.noisy == MASK, batch.masked)
    assert torch.equal(batch.noisy[~batch.masked], x0[~batch.masked])
    assert torch.equal(batch.target, x0)
    # One t per sequence: each row's mask rate is its p (binomial, 512 draws: sd <= 0.023).
    rate = batch.masked.float().mean(1)
    assert (rate - batch.p_mask).abs().max() < 0.1
    # t ~ U(0, 1): mean 1/2, sd of the mean of 256 draws ~0.018.
    assert abs(batch.t.mean().item() - 0.5) < 0.08
    assert batch.t.min() >= 0 and batch.t.max() < 1


def test_random_length_cut_happens_in_about_one_percent_of_steps():
    noise = NoiseConfig(seed=7)
    x0 = tokens(2, 64)
    lengths = [pretrain_batch(x0, [0, 1], step, MASK, noise).target.shape[1] for step in range(3000)]
    cut = [n for n in lengths if n != 64]
    assert 10 <= len(cut) <= 55  # 1% of 3000 = 30, Poisson sd ~5.5
    assert all(1 <= n <= 64 for n in cut)
    # The loss of a cut batch normalises by its own length.
    step = lengths.index(cut[0])
    batch = pretrain_batch(x0, [0, 1], step, MASK, noise)
    torch.testing.assert_close(batch.sample_weight, 1 / (batch.p_mask * 2 * cut[0]))


def test_doc_ids_are_cut_with_the_batch():
    noise = NoiseConfig(seed=7, random_length_prob=1.0)
    x0 = tokens(2, 64)
    batch = pretrain_batch(x0, [0, 1], 0, MASK, noise, doc_ids=torch.zeros(2, 64, dtype=torch.long))
    assert batch.doc_ids.shape == batch.target.shape


def test_sft_loss_equals_the_spec_reference_and_never_masks_the_prompt():
    b, l = 4, 24
    x0 = tokens(b, l)
    eos = 7
    prompt_len = torch.tensor([3, 10, 1, 20])
    x0[0, 15:] = eos  # answer right-padded with EOS: part of the answer
    batch = sft_batch(x0, prompt_len, [5, 6, 7, 8], step=2, mask_id=MASK, noise=NoiseConfig())
    is_prompt = torch.arange(l)[None] < prompt_len[:, None]
    assert not batch.masked[is_prompt].any()
    assert torch.equal(batch.noisy[is_prompt], x0[is_prompt])
    logits = torch.randn(b, l, V)
    out = diffusion_loss(logits, batch)
    ref = ref_sft_loss(logits, x0, batch.masked, batch.p_mask, prompt_len)
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-6)


def test_sft_trains_on_eos_padding():
    x0 = tokens(64, 32)
    x0[:, 20:] = 7
    batch = sft_batch(x0, torch.full((64,), 4), range(64), 0, MASK, NoiseConfig())
    assert batch.masked[:, 20:].any()


def test_sft_mask_matches_pretrain_mask_outside_the_prompt():
    # Same (seed, step, sample) -> same noise; SFT only restores the prompt.
    x0 = tokens(3, 40)
    noise = NoiseConfig(random_length_prob=0)
    pre = pretrain_batch(x0, [1, 2, 3], 9, MASK, noise)
    sft = sft_batch(x0, [5, 5, 5], [1, 2, 3], 9, MASK, noise)
    assert torch.equal(sft.masked[:, 5:], pre.masked[:, 5:])


def test_accuracy_and_t_bucket_statistics():
    x0 = tokens(8, 32)
    batch = pretrain_batch(x0, range(8), 0, MASK, NoiseConfig(random_length_prob=0))
    logits = torch.randn(8, 32, V)
    logits[batch.masked.nonzero(as_tuple=True) + (x0[batch.masked],)] += 100.0  # perfect predictions
    out = diffusion_loss(logits, batch, n_buckets=4)
    assert out.n_correct == out.n_masked == batch.masked.sum()
    assert out.accuracy == 1.0
    assert out.bucket_count.sum() == 8
    expected = torch.bincount((batch.t * 4).long(), minlength=4)
    assert torch.equal(out.bucket_count, expected)
    # Bucket sums of per-sample normalised losses average back to the loss.
    logits2 = torch.randn(8, 32, V)
    out2 = diffusion_loss(logits2, batch)
    assert (out2.bucket_loss.sum() / 8).item() == pytest.approx(out2.loss.item(), rel=1e-5)


@pytest.mark.parametrize(
    "bad, match",
    [
        (lambda x: x.__setitem__((1, 5), MASK), "mask id 49 at sample index 21, position 5"),
        (lambda x: x.__setitem__((0, 2), V + 3), "outside the vocabulary .* sample index 20, position 2"),
        (lambda x: x.__setitem__((0, 0), -1), "outside the vocabulary"),
    ],
)
def test_bad_tokens_are_refused_with_their_place(bad, match):
    x0 = tokens(2, 8)
    bad(x0)
    with pytest.raises(ValueError, match=match):
        pretrain_batch(x0, [20, 21], 0, MASK, NoiseConfig(), vocab_size=V)


def test_sft_refuses_prompts_that_leave_no_answer():
    with pytest.raises(ValueError, match="sample index 4: prompt length 8"):
        sft_batch(tokens(2, 8), [3, 8], [3, 4], 0, MASK, NoiseConfig())


@pytest.mark.parametrize("kwargs", [{"eps": 0.0}, {"eps": 1.5}, {"random_length_prob": 2.0}, {"seed": -1}])
def test_noise_config_validation(kwargs):
    with pytest.raises(ValueError, match="noise."):
        NoiseConfig(**kwargs)


def test_autoregressive_loss_is_plain_next_token_cross_entropy_with_a_causal_mask():
    from llada_ds.diffusion import autoregressive_loss
    from llada_ds.model import ModelConfig, build_model

    # One layer: then position i of a bidirectional run on tokens 0..i is exactly causal position i
    # (with more layers, earlier positions would have seen later tokens in the layer below).
    cfg = ModelConfig(vocab_size=V, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, ffn_hidden_size=64,
                      attention="sdpa")
    model = build_model(cfg).eval()
    tokens = tokens_ = torch.randint(0, V, (2, 10))
    with torch.no_grad():
        out = autoregressive_loss(model(tokens, causal=True), tokens)
        # Reference: position i sees only tokens 0..i, so run the bidirectional model on each
        # prefix and read its last position (no causal mask involved at all).
        total = 0.0
        for i in range(tokens_.shape[1] - 1):
            logits = model(tokens_[:, : i + 1])[:, -1]
            total += torch.nn.functional.cross_entropy(logits.double(), tokens_[:, i + 1], reduction="sum").item()
    assert out.loss.item() == pytest.approx(total / (2 * 9), rel=1e-5)
    assert int(out.n_masked) == 18
    # Deeper: SDPA's is_causal and the eager backend's explicit triangular mask agree, and the
    # first position never depends on later tokens.
    deep = cfg.replace(n_layers=3)
    sdpa, eager = build_model(deep).eval(), build_model(deep.replace(attention="eager")).eval()
    eager.load_state_dict(sdpa.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(eager(tokens, causal=True), sdpa(tokens, causal=True), rtol=1e-5, atol=1e-5)
        changed = tokens.clone()
        changed[:, 5:] = (changed[:, 5:] + 1) % V
        torch.testing.assert_close(sdpa(changed, causal=True)[:, :5], sdpa(tokens, causal=True)[:, :5])
