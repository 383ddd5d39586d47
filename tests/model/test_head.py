"""The chunked head + cross-entropy (llada_ds/model/head.py) against the plain computation."""

import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from helpers import ENV, REPO

from llada_ds.diffusion import (
    NoiseConfig, autoregressive_loss, diffusion_loss, model_autoregressive_loss, model_diffusion_loss,
    pretrain_batch, sample_cross_entropy, sft_batch,
)
from llada_ds.model import ModelConfig, build_model
from llada_ds.model.head import linear_cross_entropy, reference_cross_entropy
from llada_ds.train.memory import measure_cpu_memory


def inputs(n=37, d=16, v=101, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g).to(dtype).requires_grad_()
    w = (0.3 * torch.randn(v, d, generator=g)).to(dtype).requires_grad_()
    return h, w, torch.randint(0, v, (n,), generator=g), torch.rand(n, generator=g)


def plain(h, w, targets, weights=None):
    """Written out independently of head.py: full fp32 logits and F.cross_entropy."""
    logits = h @ w.t()
    ce = F.cross_entropy(logits.float(), targets, reduction="none")
    return ce, logits.argmax(-1) == targets


def close(a, b, tol=1e-6):
    """Equal within tol relative to the larger magnitude of b (what "within 1e-6" means here)."""
    scale = max(b.double().abs().max().item(), 1e-30)
    assert (a.double() - b.double()).abs().max().item() <= tol * scale


@pytest.mark.parametrize("chunk", [1, 5, 37, 1000])
def test_weighted_loss_and_gradients_equal_the_plain_ones(chunk):
    h, w, t, weights = inputs()
    ce, correct = plain(h, w, t)
    ref = (ce * weights).sum()
    gh, gw = torch.autograd.grad(ref * 0.37, (h, w))
    out = linear_cross_entropy(h, w, t, weights, chunk_rows=chunk)
    close(out.loss.detach(), ref.detach())
    close(out.ce, ce.detach())
    assert torch.equal(out.correct, correct)
    assert not out.ce.requires_grad
    got = torch.autograd.grad(out.loss * 0.37, (h, w))  # an incoming gradient other than 1
    close(got[0], gh)
    close(got[1], gw)


@pytest.mark.parametrize("chunk", [1, 6, 1000])
def test_per_row_loss_is_differentiable_for_any_incoming_gradient(chunk):
    h, w, t, _ = inputs(seed=1)
    upstream = torch.randn(h.shape[0])  # e.g. +-beta of a preference loss, per sample
    ce, _ = plain(h, w, t)
    gh, gw = torch.autograd.grad((ce * upstream).sum(), (h, w))
    out = linear_cross_entropy(h, w, t, chunk_rows=chunk)
    close(out.ce.detach(), ce.detach())
    got = torch.autograd.grad((out.ce * upstream).sum(), (h, w))
    close(got[0], gh)
    close(got[1], gw)


def test_only_the_gradients_asked_for_are_computed():
    h, w, t, weights = inputs()
    frozen = w.detach()  # a frozen head (e.g. LoRA on the blocks only)
    g = torch.autograd.grad(linear_cross_entropy(h, frozen, t, weights, 4).loss, h)[0]
    close(g, torch.autograd.grad((plain(h, frozen, t)[0] * weights).sum(), h)[0])
    with torch.no_grad():
        out = linear_cross_entropy(h, w, t, weights, 4)
    assert not out.loss.requires_grad


def test_bf16_matches_the_plain_bf16_computation():
    h, w, t, weights = inputs(n=64, d=32, v=300, dtype=torch.bfloat16)
    ref = reference_cross_entropy(h, w, t, weights)
    gh, gw = torch.autograd.grad(ref.loss, (h, w))
    out = linear_cross_entropy(h, w, t, weights, chunk_rows=16)
    got = torch.autograd.grad(out.loss, (h, w))
    assert out.loss.dtype == torch.float32 and got[1].dtype == torch.bfloat16
    close(out.loss.detach(), ref.loss.detach(), 1e-5)
    close(got[0].float(), gh.float(), 2e-2)  # bf16 rounding of the logits' gradient
    close(got[1].float(), gw.float(), 2e-2)


def test_a_second_backward_of_the_weighted_loss_is_refused():
    h, w, t, weights = inputs()
    out = linear_cross_entropy(h, w, t, weights, 8)
    out.loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="one backward"):
        out.loss.backward()


def test_memory_holds_one_chunk_of_logits_not_all_of_them():
    n, d, v, chunk = 512, 32, 4096, 32
    h, w, t, weights = inputs(n, d, v)
    chunk_bytes, all_bytes = chunk * v * 4, n * v * 4
    grads = (n + v) * d * 4  # h.grad and w.grad: produced by every version

    def run(fn):
        h.grad = w.grad = None
        return measure_cpu_memory(lambda: fn().loss.backward()).peak - grads

    plain_peak = run(lambda: reference_cross_entropy(h, w, t, weights))
    chunked_peak = run(lambda: linear_cross_entropy(h, w, t, weights, chunk))
    per_row_peak = run(lambda: linear_cross_entropy(h, w, t, None, chunk))
    assert plain_peak >= 2 * all_bytes  # logits and their log-softmax / gradient
    assert chunked_peak <= 1.1 * chunk_bytes
    assert per_row_peak <= 1.1 * chunk_bytes + n * 16  # plus per-row log-sum-exp and CE


MODEL = ModelConfig(vocab_size=97, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=48,
                    max_seq_len=64)


def grads_of(model, loss):
    model.zero_grad(set_to_none=True)
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("objective", ["pretrain", "sft"])
def test_model_loss_equals_the_loss_of_full_logits(objective):
    torch.manual_seed(0)
    model = build_model(MODEL)
    model.head.chunk_rows = 7  # several chunks
    x0 = torch.randint(0, 96, (3, 40))
    noise = NoiseConfig(random_length_prob=0)
    if objective == "pretrain":
        batch = pretrain_batch(x0, [3, 4, 5], 2, 96, noise)
    else:
        batch = sft_batch(x0, [5, 9, 12], [3, 4, 5], 2, 96, noise)
    ref = diffusion_loss(model(batch.noisy, logits_mask=batch.masked), batch)
    ref_grads = grads_of(model, ref.loss)
    out = model_diffusion_loss(model, batch)
    close(out.loss.detach(), ref.loss.detach())
    assert int(out.n_correct) == int(ref.n_correct) and int(out.n_masked) == int(ref.n_masked)
    close(out.bucket_loss, ref.bucket_loss)
    assert torch.equal(out.bucket_count, ref.bucket_count)
    for a, b in zip(grads_of(model, out.loss), ref_grads):
        close(a, b)


def test_sample_cross_entropy_is_each_samples_sum_over_its_masked_positions():
    torch.manual_seed(0)
    model = build_model(MODEL)
    x0 = torch.randint(0, 96, (4, 24))
    batch = pretrain_batch(x0, [0, 1, 2, 3], 0, 96, NoiseConfig(random_length_prob=0))
    logits = model(batch.noisy)
    ref = torch.stack([F.cross_entropy(logits[i][batch.masked[i]], x0[i][batch.masked[i]], reduction="sum")
                       for i in range(4)])
    upstream = torch.tensor([1.0, -2.0, 0.5, 3.0])
    ref_grads = grads_of(model, (ref * upstream).sum())
    out = sample_cross_entropy(model, batch)
    close(out.detach(), ref.detach())
    for a, b in zip(grads_of(model, (out * upstream).sum()), ref_grads):
        close(a, b)
    # Times the sample weights, it is the pre-training loss.
    close((sample_cross_entropy(model, batch) * batch.sample_weight).sum().detach(),
          model_diffusion_loss(model, batch).loss.detach())


def test_autoregressive_model_loss_equals_the_loss_of_full_logits():
    torch.manual_seed(0)
    model = build_model(MODEL)
    tokens = torch.randint(0, 96, (3, 20))
    ref = autoregressive_loss(model(tokens, causal=True), tokens)
    ref_grads = grads_of(model, ref.loss)
    out = model_autoregressive_loss(model, tokens)
    close(out.loss.detach(), ref.loss.detach())
    assert int(out.n_masked) == 3 * 19 and int(out.n_correct) == int(ref.n_correct)
    for a, b in zip(grads_of(model, out.loss), ref_grads):
        close(a, b)


@pytest.mark.timeout(200)
def test_under_zero3_the_head_gives_the_plain_models_losses_and_gradients(tmp_path):
    res = subprocess.run([sys.executable, str(REPO / "tests" / "scripts" / "head_zero3_check.py")],
                         capture_output=True, text=True, env=ENV, timeout=180)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    assert out["loss_diff"] <= 1e-6 * out["loss"]
    assert out["per_sample_diff"] <= 1e-5
    assert out["grad_diff"] <= 1e-6 * out["grad_scale"]
    assert out["head_grad_nonzero"]
