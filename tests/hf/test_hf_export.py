"""Export to the released LLaDA layout: transformers loads it with equal logits; round trips."""

import json

import pytest
import torch
from helpers import SMALL

from llada_ds.data.tokenizer import Tokenizer
from llada_ds.weights import load_hf_folder, read_hf_tensors
from llada_ds.hf.export import AUTO_MAP, ExportError, export_model, verify_export
from llada_ds.model import build_model


@pytest.mark.timeout(200)
@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_export_loads_in_transformers_with_equal_logits_and_round_trips(sp_tokenizer, tmp_path, dtype):
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    tok = Tokenizer.load(sp_tokenizer)
    out = export_model(model, tok, tmp_path / "a", dtype=dtype, max_shard_size="300KB")  # verifies itself
    conf = json.loads((out / "config.json").read_text())
    assert conf["auto_map"] == AUTO_MAP and conf["model_type"] == "llada" and conf["mask_token_id"] == 3
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    for name in ("modeling_llada.py", "configuration_llada.py", "generation_config.json", "README.md",
                 "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).is_file(), name
    assert json.loads((out / "generation_config.json").read_text())["mask_token_id"] == 3
    # Our logits against transformers' on the folder, directly (the export ran the same check).
    assert verify_export(out, tok) < 1e-5
    # Export -> read back -> export: the tensors are byte-identical.
    again, _ = load_hf_folder(out, torch.float32 if dtype == "fp32" else torch.bfloat16)
    export_model(again, tok, tmp_path / "b", dtype=dtype, max_shard_size="300KB", verify=False)
    first, second = read_hf_tensors(out), read_hf_tensors(tmp_path / "b")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) and first[k].dtype == second[k].dtype for k in first)


@pytest.mark.timeout(200)
def test_a_broken_modeling_file_fails_the_export_loudly(sp_tokenizer, tmp_path):
    torch.manual_seed(0)
    model = build_model(SMALL).eval()
    tok = Tokenizer.load(sp_tokenizer)
    out = export_model(model, tok, tmp_path, dtype="fp32", verify=False)
    modeling = out / "modeling_llada.py"
    modeling.write_text(modeling.read_text().replace("is_causal=False", "is_causal=True"))
    with pytest.raises(ExportError, match="logits differ"):
        verify_export(out, tok)


@pytest.mark.timeout(200)
def test_import_then_export_round_trips_byte_identical_tensors(sp_tokenizer, tmp_path):
    import subprocess
    import sys

    from llada_ds.hf.importer import import_llada_folder
    from llada_ds.inference import load_for_inference

    torch.manual_seed(1)
    model = build_model(SMALL).eval()
    tok = Tokenizer.load(sp_tokenizer)
    first = export_model(model, tok, tmp_path / "first", dtype="bf16", verify=False)
    ckpt = import_llada_folder(first, tmp_path / "imported")
    loaded = load_for_inference(ckpt)  # the imported checkpoint serves every llada-ds command
    assert loaded.tokenizer.special.mask == 3 and loaded.model.config == SMALL.replace(attention="auto")
    res = subprocess.run([sys.executable, "-m", "llada_ds.cli", "export", str(ckpt), str(tmp_path / "second"),
                          "--dtype", "bf16"], capture_output=True, text=True, timeout=150)
    assert res.returncode == 0, res.stderr[-2000:]
    a, b = read_hf_tensors(first), read_hf_tensors(tmp_path / "second")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_pickled_weights_are_refused(tmp_path):
    from llada_ds.model import ConfigError

    torch.save({"x": torch.zeros(1)}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="never unpickles"):
        read_hf_tensors(tmp_path)
