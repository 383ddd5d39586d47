import inspect
import math
import time

import pytest
import torch

from llada_ds.model import ConfigError, ModelConfig, build_model, count_parameters, get_preset
from llada_ds.model.sizing import analytic_parameter_count, count, train_flops_per_token
from llada_ds.model.kv_cache import InferenceContext, KVCache, cache_backend, inference_context
from llada_ds.model.transformer import LLaDAModel, init_stds

SMALL = ModelConfig(vocab_size=97, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=96,
                    max_seq_len=32, attention="eager")


def test_llada_8b_has_the_released_parameter_count_on_meta():
    start = time.perf_counter()
    model = build_model(get_preset("llada-8b"), device="meta")
    assert all(p.is_meta for p in model.parameters())
    assert count_parameters(model) == 8_015_581_184
    # The spec's closed form, written out independently.
    assert 2 * 126464 * 4096 + 32 * (4 * 4096**2 + 3 * 4096 * 12288 + 2 * 4096) + 4096 == 8_015_581_184
    assert time.perf_counter() - start < 30  # meta: no memory, no init cost


@pytest.mark.parametrize("name", ["tiny", "llada-1b", "llada-8b"])
def test_presets_match_the_closed_form(name):
    cfg = get_preset(name)
    assert count(cfg).total == analytic_parameter_count(cfg)


def test_llada_1b_is_about_1_49b_and_tiny_a_few_million():
    assert abs(count(get_preset("llada-1b")).total - 1.49e9) < 0.01e9
    assert 2e6 < count(get_preset("tiny")).total < 10e6


def test_no_biases_and_untied_head():
    model = build_model(SMALL)
    assert not any("bias" in name for name, _ in model.named_parameters())
    assert model.head.weight.data_ptr() != model.embed.weight.data_ptr()


def test_flops_count_attention_fully():
    cfg = get_preset("llada-8b")
    params = count(cfg)
    expected = 6 * (8_015_581_184 - 126464 * 4096) + 12 * 32 * 4096 * 4096
    assert train_flops_per_token(cfg, 4096, params) == expected


def test_init_follows_the_documented_scales():
    cfg = ModelConfig(vocab_size=1000, d_model=512, n_layers=8, n_heads=8, ffn_hidden_size=1536)
    model = build_model(cfg)
    std = math.sqrt(2 / (5 * 512))
    out_std = std / math.sqrt(2 * 8)
    assert init_stds(cfg) == pytest.approx((std, out_std))
    # Truncation at 3 sigma shrinks the std by a factor ~0.986.
    trunc = 0.9866
    for name, p in model.named_parameters():
        if name.endswith("norm.weight"):
            assert torch.all(p == 1)
            continue
        if name == "embed.weight":
            expected = 1.0
        elif name.endswith(("o_proj.weight", "down_proj.weight")):
            expected = out_std
        else:
            expected = std
        assert p.std().item() == pytest.approx(expected * trunc, rel=0.05), name
        assert p.abs().max().item() <= 3 * expected + 1e-6, name


def _residual_update_rms(n_layers):
    from llada_ds.model.attention import SdpaAttention
    from llada_ds.model.rope import rope_angles
    from llada_ds.model.transformer import AttentionInputs

    cfg = ModelConfig(vocab_size=100, d_model=256, n_layers=n_layers, n_heads=4, ffn_hidden_size=512)
    model = build_model(cfg)
    ids = torch.randint(0, 100, (2, 64))
    cos, sin = rope_angles(torch.arange(64), cfg.head_dim, cfg.rope_theta)
    attn = AttentionInputs(cos, sin, SdpaAttention(), None)
    with torch.no_grad():
        h0 = h = model.embed(ids)
        for layer in model.layers:
            h = layer(h, attn)
    return h0.pow(2).mean().sqrt().item(), (h - h0).pow(2).mean().sqrt().item()


def test_residual_stream_stays_at_unit_scale_whatever_the_depth():
    emb4, upd4 = _residual_update_rms(4)
    emb32, upd32 = _residual_update_rms(32)
    assert emb4 == pytest.approx(0.986, rel=0.05)  # std-1 embedding, truncated at 3 sigma
    # Scaled output projections: 8x the layers, about the same total update (unscaled: sqrt(8)x).
    assert upd32 / upd4 < 1.5
    assert upd32 < 0.5 * emb32


def test_bf16_weights_are_drawn_in_fp32_then_rounded():
    from llada_ds.model.layers import Linear

    torch.manual_seed(0)
    ref = Linear(256, 512, 0.02).weight.detach()
    torch.manual_seed(0)
    with torch.device("cpu"):
        torch.set_default_dtype(torch.bfloat16)
        try:
            low = Linear(256, 512, 0.02).weight.detach()
        finally:
            torch.set_default_dtype(torch.float32)
    assert low.dtype == torch.bfloat16
    assert torch.equal(low, ref.to(torch.bfloat16))


def test_init_weights_after_meta_materialisation():
    model = build_model(SMALL, device="meta")
    model.to_empty(device="cpu")
    model.init_weights()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert model.layers[0].attn_norm.weight.eq(1).all()
    assert model.embed.weight.std().item() > 0


def test_bidirectional_last_token_changes_first_logits():
    model = build_model(SMALL.replace(attention="sdpa")).eval()
    ids = torch.randint(0, SMALL.vocab_size, (1, 16))
    other = ids.clone()
    other[0, -1] = (ids[0, -1] + 1) % SMALL.vocab_size
    with torch.no_grad():
        a, b = model(ids), model(other)
    assert not torch.allclose(a[0, 0], b[0, 0])


def test_logits_are_not_shifted_and_mask_selects_positions():
    model = build_model(SMALL).eval()
    ids = torch.randint(0, SMALL.vocab_size, (2, 10))
    sel = torch.rand(2, 10) < 0.5
    with torch.no_grad():
        full = model(ids)
        part = model(ids, logits_mask=sel)
    assert full.shape == (2, 10, SMALL.vocab_size)
    torch.testing.assert_close(part, full[sel], rtol=1e-6, atol=1e-6)


def test_document_mask_isolates_documents():
    model = build_model(SMALL).eval()
    ids = torch.randint(0, SMALL.vocab_size, (1, 12))
    docs = torch.tensor([[0] * 5 + [1] * 7])
    with torch.no_grad():
        packed = model(ids, doc_ids=docs)
        # The second document alone, at the same positions (RoPE is relative, so any offset works).
        alone = model(ids[:, 5:], cache=inference_context("eager", positions=torch.arange(5, 12)))
    torch.testing.assert_close(packed[:, 5:], alone, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"d_model": 65}, "n_heads"),
        ({"n_kv_heads": 3}, "n_kv_heads"),
        ({"attention": "fast"}, "model.attention"),
        ({"n_layers": 0}, "model.n_layers"),
        ({"rope_theta": -1.0}, "model.rope_theta"),
        ({"n_kv_heads": True}, "model.n_kv_heads"),
    ],
)
def test_bad_config_names_the_key(changes, key):
    with pytest.raises(ConfigError, match=key):
        SMALL.replace(**changes)


def test_from_dict_rejects_unknown_keys_and_unknown_presets():
    with pytest.raises(ConfigError, match="d_modle"):
        ModelConfig.from_dict({**SMALL.to_dict(), "d_modle": 3})
    with pytest.raises(ConfigError, match="known presets"):
        get_preset("llada-70b")
    assert ModelConfig.from_dict(SMALL.to_dict()) == SMALL


@pytest.mark.parametrize("with_docs", [False, True])
def test_whole_model_sdpa_and_eager_agree_fp32(with_docs):
    model = build_model(SMALL.replace(attention="eager")).eval()
    sdpa = build_model(SMALL.replace(attention="sdpa")).eval()
    sdpa.load_state_dict(model.state_dict())
    ids = torch.randint(0, SMALL.vocab_size, (2, 24))
    docs = torch.tensor([[0] * 10 + [1] * 14, [0] * 3 + [1] * 21]) if with_docs else None
    with torch.no_grad():
        ref = model(ids, doc_ids=docs)
        out = sdpa(ids, doc_ids=docs)
    assert ((out - ref).norm() / ref.norm()).item() < 1e-5


def test_forward_keeps_the_training_keywords_and_takes_one_inference_argument():
    params = inspect.signature(LLaDAModel.forward).parameters
    assert list(params) == ["self", "input_ids", "doc_ids", "logits_mask", "causal", "cache", "targets",
                            "row_weights"]
    assert all(params[k].kind is inspect.Parameter.KEYWORD_ONLY for k in ("causal", "cache", "targets", "row_weights"))
    model = build_model(SMALL).eval()
    ids = torch.randint(0, SMALL.vocab_size, (2, 10))
    docs = torch.tensor([[0] * 4 + [1] * 6, [0] * 10])
    sel = torch.rand(2, 10) < 0.5
    with torch.no_grad():
        full = model(ids, doc_ids=docs)
        torch.testing.assert_close(model(ids, doc_ids=docs, logits_mask=sel), full[sel], rtol=1e-6, atol=1e-6)
        # The same positions as flat indices (what the objectives pass: computed on the host).
        index = sel.reshape(-1).nonzero().squeeze(1)
        torch.testing.assert_close(model(ids, doc_ids=docs, logits_mask=index), full[sel], rtol=1e-6, atol=1e-6)
        causal = model(ids, doc_ids=docs, causal=True)
        assert not torch.allclose(causal, full)
        # A context with nothing in it (same kernel, no past, no padding) is the plain forward.
        assert torch.equal(model(ids, cache=inference_context("eager")), model(ids))


def test_inference_context_is_checked():
    model = build_model(SMALL).eval()
    ids = torch.randint(0, SMALL.vocab_size, (1, 6))
    with pytest.raises(ValueError, match="sdpa or eager"):
        InferenceContext("flash")
    with pytest.raises(ValueError, match="doc_ids or causal"):
        model(ids, doc_ids=torch.zeros(1, 6, dtype=torch.long), cache=inference_context("eager"))
    with pytest.raises(ValueError, match="doc_ids or causal"):
        model(ids, causal=True, cache=inference_context("eager"))
    collect = []
    with torch.no_grad():
        model(ids, cache=inference_context("eager", collect=collect))
    past = KVCache.from_collected(collect)
    with pytest.raises(ValueError, match="positions"):
        inference_context("eager", past=past)
    # The key mask covers the cached keys first, then the new tokens; none when nothing is padding.
    assert inference_context("eager", past=past, positions=torch.arange(6, 8)).key_mask is None
    valid = torch.tensor([[False, True]])
    mask = inference_context("sdpa", valid, past=past, positions=torch.arange(6, 8)).key_mask
    assert mask.shape == (1, 1, 1, 8) and mask.flatten().tolist() == [True] * 6 + [False, True]


def test_cached_calls_take_their_kernel_from_the_context_not_the_config():
    model = build_model(SMALL.replace(attention="flash")).eval()  # flash cannot run on CPU
    eager = build_model(SMALL).eval()
    eager.load_state_dict(model.state_dict())
    ids = torch.randint(0, SMALL.vocab_size, (2, 8))
    with torch.no_grad():
        out = model(ids, cache=inference_context(cache_backend(model.config.attention)))
        torch.testing.assert_close(out, eager(ids), rtol=1e-5, atol=1e-5)
    assert cache_backend("eager") == "eager" and {cache_backend(a) for a in ("auto", "flash", "sdpa")} == {"sdpa"}
