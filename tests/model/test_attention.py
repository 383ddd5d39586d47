import math

import pytest
import torch

from llada_ds.errors import ConfigError
from llada_ds.model.attention import (
    EagerAttention, FlashAttention, SdpaAttention, block_diagonal_mask, cu_seqlens_from_doc_ids,
    resolve_backend, segment_ids,
)


def plain_attention(q, k, v, doc_ids=None):
    """softmax(q k^T / sqrt(d)) v, one (batch, head, query) at a time, in float64."""
    b, s, h, d = q.shape
    groups = h // k.shape[2]
    out = torch.zeros(b, s, h, d, dtype=torch.float64)
    for bi in range(b):
        seg = None if doc_ids is None else segment_ids(doc_ids)[bi]
        for hi in range(h):
            kh, vh = k[bi, :, hi // groups].double(), v[bi, :, hi // groups].double()
            for i in range(s):
                keep = torch.ones(s, dtype=torch.bool) if seg is None else seg == seg[i]
                scores = kh[keep] @ q[bi, i, hi].double() / math.sqrt(d)
                out[bi, i, hi] = torch.softmax(scores, 0) @ vh[keep]
    return out


def qkv(b=2, s=12, h=4, kv=2, d=8, dtype=torch.float32):
    return (torch.randn(b, s, h, d, dtype=dtype), torch.randn(b, s, kv, d, dtype=dtype),
            torch.randn(b, s, kv, d, dtype=dtype))


DOCS = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2], [5, 5, 5, 5, 5, 5, 5, 5, 5, 9, 9, 9]])


def rel_err(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("kv", [4, 2, 1])
@pytest.mark.parametrize("docs", [None, DOCS])
def test_eager_matches_a_plain_float64_reference(kv, docs):
    q, k, v = qkv(kv=kv)
    backend = EagerAttention()
    out = backend(q, k, v, backend.prepare(docs))
    assert rel_err(out, plain_attention(q, k, v, docs)) < 1e-6


@pytest.mark.parametrize("kv", [4, 2, 1])
@pytest.mark.parametrize("docs", [None, DOCS])
def test_sdpa_matches_eager_fp32(kv, docs):
    q, k, v = qkv(s=64 if docs is None else 12, kv=kv, d=32)
    eager, sdpa = EagerAttention(), SdpaAttention()
    ref = eager(q, k, v, eager.prepare(docs))
    out = sdpa(q, k, v, sdpa.prepare(docs))
    assert rel_err(out, ref) < 1e-5


def test_sdpa_grouped_heads_with_a_mask_in_bf16_match_eager():
    # The path that repeats KV heads itself (mask given) and the native GQA path (no mask, bf16).
    q, k, v = (t.bfloat16() for t in qkv(s=32, kv=2, d=32))
    docs = torch.tensor([[0] * 20 + [1] * 12] * 2)
    eager, sdpa = EagerAttention(), SdpaAttention()
    for d in (None, docs):
        ref = eager(q.float(), k.float(), v.float(), eager.prepare(d))
        assert rel_err(sdpa(q, k, v, sdpa.prepare(d)).float(), ref) < 2e-2


def test_flash_refuses_head_dims_it_cannot_run():
    q, k, v = qkv(d=12)
    with pytest.raises(ValueError, match="multiple of 8"):
        FlashAttention(reference_flash_func, reference_varlen_func)(q, k, v, None)


def test_attention_is_not_causal():
    q, k, v = qkv(b=1)
    backend = SdpaAttention()
    base = backend(q, k, v, None)
    v2 = v.clone()
    v2[0, -1] += 1.0
    assert not torch.allclose(backend(q, k, v2, None)[0, 0], base[0, 0])


def test_segments_are_runs_of_equal_ids():
    ids = torch.tensor([[7, 7, 3, 7, 7]])
    assert segment_ids(ids).tolist() == [[0, 0, 1, 2, 2]]
    mask = block_diagonal_mask(ids)[0, 0]
    assert mask[0, 1] and not mask[0, 3] and mask[3, 4]


def test_cu_seqlens_over_the_flattened_batch():
    cu, longest = cu_seqlens_from_doc_ids(DOCS)
    # Row 0: docs of 4, 3, 5; row 1 starts a new document at its first token: 9, 3.
    assert cu.tolist() == [0, 4, 7, 12, 21, 24]
    assert cu.dtype == torch.int32 and longest == 9


def reference_flash_func(q, k, v, causal):
    assert causal is False
    return plain_attention(q, k, v).to(q.dtype)


def reference_varlen_func(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, causal):
    """flash_attn_varlen_func's contract, written plainly: attention within each [cu[i], cu[i+1])."""
    assert causal is False and torch.equal(cu_seqlens_q, cu_seqlens_k)
    out = torch.empty_like(q)
    bounds = cu_seqlens_q.tolist()
    assert max_seqlen_q == max(e - s for s, e in zip(bounds, bounds[1:]))
    for start, end in zip(bounds, bounds[1:]):
        out[start:end] = plain_attention(q[None, start:end], k[None, start:end], v[None, start:end])[0].to(q.dtype)
    return out


@pytest.mark.parametrize("docs", [None, DOCS])
def test_flash_backend_packing_against_reference_kernels(docs):
    # flash-attn needs CUDA; its contract is reproduced by plain kernels to check our packing.
    q, k, v = qkv()
    flash = FlashAttention(reference_flash_func, reference_varlen_func)
    eager = EagerAttention()
    out = flash(q, k, v, flash.prepare(docs))
    assert rel_err(out, eager(q, k, v, eager.prepare(docs))) < 1e-6


def test_auto_falls_back_to_sdpa_without_cuda_and_flash_refuses_cpu():
    assert resolve_backend("auto", torch.device("cpu"), torch.float32).name == "sdpa"
    assert resolve_backend("auto", torch.device("cpu"), torch.bfloat16).name == "sdpa"
    assert resolve_backend("eager", torch.device("cpu"), torch.float32).name == "eager"
    with pytest.raises(ConfigError, match="CUDA"):  # a setting the user can fix: one line, no traceback
        resolve_backend("flash", torch.device("cpu"), torch.bfloat16)


def test_resolve_backend_checks_the_head_dim_once(monkeypatch):
    from llada_ds.model import attention

    cuda = torch.device("cuda")  # only its type is read: no GPU needed
    monkeypatch.setattr(attention, "flash_attn_available", lambda: True)
    for bad in (12, 264):  # auto falls back to sdpa for a head size flash-attn cannot run
        assert resolve_backend("auto", cuda, torch.bfloat16, head_dim=bad).name == "sdpa"
        with pytest.raises(ValueError, match="multiple of 8 and at most 256"):  # explicit flash: before any kernel
            resolve_backend("flash", cuda, torch.bfloat16, head_dim=bad)


def test_causal_masks_are_built_on_the_requested_device():
    docs = torch.tensor([[0, 0, 0, 1, 1, 2]])
    eager, sdpa = EagerAttention(causal=True), SdpaAttention(causal=True)
    tril = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
    assert torch.equal(eager.prepare(None, 6, torch.device("cpu")), tril)
    assert torch.equal(eager.prepare(docs, 6), sdpa.prepare(docs))
    assert torch.equal(sdpa.prepare(docs), block_diagonal_mask(docs) & tril)
    assert eager.prepare(None, 6, torch.device("meta")).device.type == "meta"


def test_bf16_sdpa_stays_close_to_the_fp32_reference():
    q, k, v = qkv(s=64, d=32)
    ref = EagerAttention()(q, k, v, None)
    out = SdpaAttention()(q.bfloat16(), k.bfloat16(), v.bfloat16(), None)
    assert out.dtype == torch.bfloat16
    assert rel_err(out.float(), ref) < 2e-2


@pytest.mark.parametrize("backend", [EagerAttention(), SdpaAttention()], ids=["eager", "sdpa"])
def test_a_key_padding_mask_over_more_keys_than_queries(backend):
    # The cached sampler's calls: 4 new queries attend to 10 keys (6 cached, then their own 4),
    # some of them padding; the mask (batch, 1, 1, keys) is the same for every query.
    torch.manual_seed(0)
    q = torch.randn(2, 4, 4, 8)
    k, v = torch.randn(2, 10, 2, 8), torch.randn(2, 10, 2, 8)
    valid = torch.ones(2, 10, dtype=torch.bool)
    valid[0, :3] = False
    valid[1, 6] = False
    out = backend(q, k, v, valid[:, None, None, :])
    for bi in range(2):
        keep = valid[bi]
        for hi in range(4):
            kh, vh = k[bi, keep, hi // 2].double(), v[bi, keep, hi // 2].double()
            for i in range(4):
                scores = kh @ q[bi, i, hi].double() / math.sqrt(8)
                ref = torch.softmax(scores, 0) @ vh
                assert rel_err(out[bi, i, hi], ref) < 1e-5
