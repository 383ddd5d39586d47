import math

import pytest
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


def test_rope_computes_in_fp32_for_bf16_inputs():
    x = torch.randn(1, 64, 2, 16)
    cos, sin = rope_angles(torch.arange(64), 16, 500000.0)
    out = apply_rope(x.bfloat16(), cos, sin)
    assert out.dtype == torch.bfloat16
    # Rotating in fp32 then rounding once: within one bf16 rounding of the exact result.
    exact = plain_rope(x.bfloat16().float(), 500000.0)
    assert (out.double() - exact).abs().max() <= exact.abs().max() * 2**-7


def test_batched_positions_match_shared_positions():
    x = torch.randn(2, 5, 2, 8)
    cos, sin = rope_angles(torch.arange(5), 8, 10000.0)
    cos_b, sin_b = rope_angles(torch.arange(5).expand(2, 5), 8, 10000.0)
    torch.testing.assert_close(apply_rope(x, cos, sin), apply_rope(x, cos_b, sin_b))


def test_rmsnorm_matches_formula_and_normalises_in_fp32():
    norm = RMSNorm(64, 1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(64))
    x = torch.randn(3, 5, 64) * 100
    ref = x.double() / torch.sqrt(x.double().pow(2).mean(-1, keepdim=True) + 1e-5) * norm.weight.double()
    torch.testing.assert_close(norm(x).double(), ref, rtol=1e-5, atol=1e-5)
    # bf16 input with values whose squares overflow bf16's precision: fp32 normalisation keeps it sane.
    xb = (torch.randn(4, 64) * 1e3).bfloat16()
    normb = RMSNorm(64, 1e-5).bfloat16()
    out = normb(xb)
    assert out.dtype == torch.bfloat16
    ref_b = xb.double() / torch.sqrt(xb.double().pow(2).mean(-1, keepdim=True) + 1e-5)
    assert (out.double() - ref_b).abs().max() < 2e-2 * ref_b.abs().max()
