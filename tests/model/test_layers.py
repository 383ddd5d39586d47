import math

import torch

from llada_ds.model.layers import RMSNorm
from llada_ds.model.rope import apply_rope, rope_angles


def plain_rope(x, theta):
    """Rotate each pair (i, i + d/2) of x (b, s, h, d) by position * theta^(-2i/d), in float64."""
    b, s, h, d = x.shape
    out = torch.empty(b, s, h, d, dtype=torch.float64)
    half = d // 2
    for pos in range(s):
        for i in range(half):
            angle = pos * theta ** (-2 * i / d)
            c, sn = math.cos(angle), math.sin(angle)
            a, bb = x[:, pos, :, i].double(), x[:, pos, :, i + half].double()
            out[:, pos, :, i] = a * c - bb * sn
            out[:, pos, :, i + half] = a * sn + bb * c
    return out


def test_rope_is_the_half_split_rotation():
    x = torch.randn(2, 9, 3, 16)
    cos, sin = rope_angles(torch.arange(9), 16, 500000.0)
    assert cos.dtype == torch.float32
    out = apply_rope(x, cos, sin)
    torch.testing.assert_close(out.double(), plain_rope(x, 500000.0), rtol=1e-5, atol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    q, k = torch.randn(1, 1, 1, 32), torch.randn(1, 1, 1, 32)

    def score(pq, pk):
        cq, sq = rope_angles(torch.tensor([pq]), 32, 500000.0)
        ck, sk = rope_angles(torch.tensor([pk]), 32, 500000.0)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()

    torch.testing.assert_close(score(3, 10), score(103, 110), rtol=1e-4, atol=1e-4)


def rope64(x, theta):
    """Vectorised float64 version of plain_rope, for long sequences."""
    s, d = x.shape[1], x.shape[-1]
    half = d // 2
    angle = torch.arange(s, dtype=torch.float64)[:, None] * theta ** (-2 * torch.arange(half, dtype=torch.float64) / d)
    c, sn = angle.cos()[None, :, None, :], angle.sin()[None, :, None, :]
    a, b = x[..., :half].double(), x[..., half:].double()
    return torch.cat((a * c - b * sn, a * sn + b * c), dim=-1)


def test_rope_computes_in_fp32_for_bf16_inputs_up_to_4096_positions():
    x = torch.randn(1, 4096, 2, 64).bfloat16()
    cos, sin = rope_angles(torch.arange(4096), 64, 500000.0)
    out = apply_rope(x, cos, sin)
    assert out.dtype == torch.bfloat16
    exact = rope64(x, 500000.0).to(torch.bfloat16)
    # fp32 arithmetic rounded once to bf16 is the correctly rounded result almost everywhere...
    assert (out == exact).float().mean() > 0.99
    # ...which rotating in bf16 is not (this is what the test guards against).
    cos_b, sin_b = cos.bfloat16()[None, :, None, :], sin.bfloat16()[None, :, None, :]
    from llada_ds.model.rope import rotate_half

    in_bf16 = x * cos_b + rotate_half(x) * sin_b
    assert (in_bf16 == exact).float().mean() < 0.9


def test_batched_positions_match_shared_positions():
    x = torch.randn(2, 5, 2, 8)
    cos, sin = rope_angles(torch.arange(5), 8, 10000.0)
    cos_b, sin_b = rope_angles(torch.arange(5).expand(2, 5), 8, 10000.0)
    torch.testing.assert_close(apply_rope(x, cos, sin), apply_rope(x, cos_b, sin_b))


def test_rmsnorm_matches_formula_in_fp32():
    norm = RMSNorm(64, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64))
    x = torch.randn(3, 5, 64) * 100
    ref = x.double() / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    torch.testing.assert_close(norm(x).double(), ref, rtol=1e-5, atol=1e-5)


def test_rmsnorm_in_bf16_follows_the_released_operation_order():
    # LLaDA's released RMSLayerNorm: normalise in fp32, cast back, then scale by the weight.
    norm = RMSNorm(256, 1e-5).bfloat16()
    with torch.no_grad():
        norm.weight.copy_(torch.randn(256) * 3)
    x = (torch.randn(8, 256) * 1e3).bfloat16()
    xf = x.float()
    released = norm.weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, released)
    # The other order (scale in fp32, cast once) gives different bf16 values: the test can tell.
    other = (norm.weight.float() * xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5)).to(torch.bfloat16)
    assert not torch.equal(out, other)
    # Normalising in bf16 instead loses precision against the float64 formula.
    ref = x.double() / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    assert ((out.double() - ref).abs().max() / ref.abs().max()) < 1e-2
