"""The released LLaDA Hugging Face layout: names, config keys, reading a folder into our model."""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import SMALL

from llada_ds.inference import load_for_inference
from llada_ds.model import ConfigError, build_model, get_preset
from llada_ds.model.hf_layout import from_llada_name, llada_config, model_config_from_llada, to_llada_state_dict
from llada_ds.weights import load_hf_folder

SPEC_NAMES_PER_BLOCK = ["attn_norm.weight", "q_proj.weight", "k_proj.weight", "v_proj.weight", "attn_out.weight",
                        "ff_norm.weight", "ff_proj.weight", "up_proj.weight", "ff_out.weight"]


def spec_names(n_layers):
    names = {"model.transformer.wte.weight", "model.transformer.ln_f.weight", "model.transformer.ff_out.weight"}
    for i in range(n_layers):
        names |= {f"model.transformer.blocks.{i}.{n}" for n in SPEC_NAMES_PER_BLOCK}
    return names


def test_names_are_exactly_the_released_ones_and_map_back():
    model = build_model(get_preset("llada-8b"), device="meta")
    theirs = to_llada_state_dict(dict(model.named_parameters()))
    assert set(theirs) == spec_names(32)
    assert tuple(theirs["model.transformer.blocks.0.ff_proj.weight"].shape) == (12288, 4096)  # gate
    assert tuple(theirs["model.transformer.blocks.0.ff_out.weight"].shape) == (4096, 12288)  # down
    assert tuple(theirs["model.transformer.ff_out.weight"].shape) == (126464, 4096)  # head
    assert all(from_llada_name(n) in dict(model.named_parameters()) for n in theirs)


def test_config_keys_round_trip_for_the_8b_shape():
    conf = llada_config(get_preset("llada-8b"), mask_id=126336, eos_id=126081, pad_id=126081)
    for key, value in {"d_model": 4096, "n_heads": 32, "n_kv_heads": 32, "n_layers": 32, "mlp_hidden_size": 12288,
                       "vocab_size": 126464, "embedding_size": 126464, "max_sequence_length": 4096,
                       "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "mask_token_id": 126336,
                       "model_type": "llada", "block_type": "llama", "weight_tying": False}.items():
        assert conf[key] == value, key
    assert model_config_from_llada(conf) == get_preset("llada-8b").replace(attention="auto")
    with pytest.raises(ConfigError, match="weight_tying=True"):
        model_config_from_llada({**conf, "weight_tying": True})
    with pytest.raises(ConfigError, match="missing the LLaDA config key 'd_model'"):
        model_config_from_llada({k: v for k, v in conf.items() if k != "d_model"})




@pytest.fixture()
def folder(tmp_path, sp_tokenizer):
    """A released-format folder of a small random model: sharded safetensors, config, tokenizer."""
    from huggingface_hub import save_torch_state_dict

    from llada_ds.data.tokenizer import Tokenizer, transformers_tokenizer

    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    save_torch_state_dict(to_llada_state_dict(model.state_dict()), str(tmp_path), max_shard_size="400KB")
    tok = Tokenizer.load(sp_tokenizer)
    s = tok.special
    (tmp_path / "config.json").write_text(json.dumps(llada_config(SMALL, s.mask, s.eos, s.pad)))
    transformers_tokenizer(sp_tokenizer).save_pretrained(str(tmp_path))
    return tmp_path, model


def test_a_released_format_folder_loads_into_our_model(folder):
    path, original = folder
    assert (path / "model.safetensors.index.json").is_file()  # really sharded
    loaded = load_for_inference(path)
    assert loaded.source == "huggingface" and loaded.tokenizer.special.mask == 3
    ids = torch.randint(0, 4000, (2, 12))
    with torch.no_grad():
        assert torch.equal(loaded.model(ids), original(ids))


def test_missing_or_misshaped_tensors_are_named(folder):
    path, _ = folder
    conf = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**conf, "n_layers": 3}))
    with pytest.raises(ConfigError, match=r"missing \['model.transformer.blocks.2.attn_norm.weight'"):
        load_hf_folder(path)
    (path / "config.json").write_text(json.dumps({**conf, "mlp_hidden_size": 128}))
    with pytest.raises(ConfigError, match=r"wrong shape \[.*'model.transformer.blocks.0.ff_proj.weight \(96, 64\) "
                                          r"\(expected \(128, 64\)\)'"):
        load_hf_folder(path)


@pytest.mark.timeout(200)
def test_generate_and_fast_generate_from_a_hugging_face_folder(folder):
    path, _ = folder
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for extra in ([], ["--fast", "--threshold", "0.5"]):
        res = subprocess.run([sys.executable, "-m", "llada_ds.cli", "generate", "--model", str(path), "--prompt",
                              "ROMEO.", "--gen-length", "8", "--block-length", "4", *extra],
                             capture_output=True, text=True, env=env, timeout=150)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.startswith("ROMEO.")
