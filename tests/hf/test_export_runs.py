"""Export and import of models the real trainer wrote: released layout, hub push, universal checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import ENV, REPO, torchrun

from llada_ds.weights import RUN_STATE


def _hand_built_llada_folder(folder: Path, tokenizer_dir) -> None:
    """A folder in the released layout with names and config keys written from docs/llada.md."""
    from safetensors.torch import save_file

    from llada_ds.data.tokenizer import transformers_tokenizer

    d, ffn, vocab, kv = 64, 128, 4096, 2 * 16
    g = torch.Generator().manual_seed(7)
    t = {"model.transformer.wte.weight": (vocab, d), "model.transformer.ln_f.weight": (d,),
         "model.transformer.ff_out.weight": (vocab, d)}
    for i in range(2):
        p = f"model.transformer.blocks.{i}."
        t.update({p + "attn_norm.weight": (d,), p + "q_proj.weight": (d, d), p + "k_proj.weight": (kv, d),
                  p + "v_proj.weight": (kv, d), p + "attn_out.weight": (d, d), p + "ff_norm.weight": (d,),
                  p + "ff_proj.weight": (ffn, d), p + "up_proj.weight": (ffn, d), p + "ff_out.weight": (d, ffn)})
    folder.mkdir(parents=True)
    save_file({k: (torch.randn(s, generator=g) * 0.05 + (1.0 if len(s) == 1 else 0.0)) for k, s in t.items()},
              str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "model_type": "llada", "architectures": ["LLaDAModelLM"], "d_model": d, "n_heads": 4, "n_kv_heads": 2,
        "n_layers": 2, "mlp_hidden_size": ffn, "mlp_ratio": 2, "vocab_size": vocab, "embedding_size": vocab,
        "max_sequence_length": 64, "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "mask_token_id": 3,
        "eos_token_id": 2, "pad_token_id": 2, "block_type": "llama", "activation_type": "silu",
        "layer_norm_type": "rms", "include_bias": False, "weight_tying": False}))
    transformers_tokenizer(tokenizer_dir).save_pretrained(str(folder))


@pytest.mark.timeout(500)
def test_released_layout_folder_trains_a_step_and_exports_back(recipe, sp_tokenizer, tmp_path):
    folder = tmp_path / "released"
    _hand_built_llada_folder(folder, sp_tokenizer)
    script = REPO / "tests" / "scripts" / "init_from_check.py"
    env = {**ENV, "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
           str(recipe), str(folder), str(tmp_path / "check")]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert json.loads([x for x in res.stdout.splitlines() if x.startswith("{")][-1]) == \
        {"matches_requested": True, "step": 0}
    run = tmp_path / "run"
    torchrun(recipe, run, f"--train.init_from={folder}", "--stop-after", "1", "--eval.every=0")
    assert "weights initialised from" in (run / "train.log").read_text()
    out = tmp_path / "exported"
    res = subprocess.run([sys.executable, "-m", "llada_ds.cli", "export", str(run), str(out), "--dtype", "fp32"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "verified" in res.stdout
    from safetensors.torch import load_file

    before = load_file(str(folder / "model.safetensors"))
    after = {}
    for f in out.glob("model*.safetensors"):
        after.update(load_file(str(f)))
    assert after.keys() == before.keys()  # the released names, back again
    assert any(not torch.equal(after[k], before[k]) for k in before)  # one training step changed them


@pytest.mark.timeout(400)
def test_export_pushes_every_file_to_a_stub_hub_and_fails_clearly(recipe, tmp_path):
    from hub_stub import GOOD_TOKEN, HubStub

    run = tmp_path / "run"
    torchrun(recipe, run, "--stop-after", "1", "--eval.every=0")
    out = tmp_path / "export"
    base = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HOME": str(tmp_path / "hf")}
    with HubStub() as hub:
        cmd = [sys.executable, "-m", "llada_ds.cli", "export", str(run), str(out), "--dtype", "fp32",
               "--max-shard-size", "1MB", "--push-to-hub", "someone/tiny-llada", "--revision", "v1"]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                             env={**base, "HF_ENDPOINT": hub.url, "HF_TOKEN": GOOD_TOKEN})
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:] + str(hub.requests)
        local = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
        pushed = hub.repos["someone/tiny-llada"]["branches"]["v1"]
        assert pushed == local and len(local) >= 9  # every file, byte for byte
        # A bad token: a clear error, nothing changed locally.
        bad = subprocess.run([sys.executable, "-m", "llada_ds.cli", "export", str(run), str(out), "--dtype",
                              "fp32", "--max-shard-size", "1MB", "--no-verify", "--push-to-hub", "someone/other"],
                             capture_output=True, text=True, timeout=300,
                             env={**base, "HF_ENDPOINT": hub.url, "HF_TOKEN": "bad-token"})
        assert bad.returncode != 0 and "push of" in bad.stderr and "failed" in bad.stderr, bad.stderr[-2000:]
        assert "someone/other" not in hub.repos
    # An endpoint that is not there.
    dead = subprocess.run([sys.executable, "-c", "from llada_ds.hf.export import push_to_hub; "
                           f"push_to_hub({str(out)!r}, 'someone/x')"], capture_output=True, text=True, timeout=120,
                          env={**base, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_TOKEN": GOOD_TOKEN})
    assert dead.returncode != 0 and "failed" in dead.stderr and "127.0.0.1:9" in dead.stderr
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == local


@pytest.mark.timeout(400)
def test_export_from_a_universal_checkpoint_equals_export_from_zero_shards(recipe, tmp_path):
    import shutil

    from safetensors.torch import load_file

    run = tmp_path / "run"
    torchrun(recipe, run, "--stop-after", "2", "--eval.every=0")
    ckpt = run / "checkpoints" / "step-00000002"
    universal = tmp_path / "universal"
    env = {**ENV, "HF_HUB_OFFLINE": "1"}
    res = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(ckpt),
                          "--output_folder", str(universal)], capture_output=True, text=True, env=env, timeout=200)
    assert res.returncode == 0, res.stderr[-2000:]
    shutil.copyfile(ckpt / RUN_STATE, universal / RUN_STATE)
    outs = {}
    for name, src in (("zero", run), ("universal", universal)):
        res = subprocess.run([sys.executable, "-m", "llada_ds.cli", "export", str(src), str(tmp_path / name),
                              "--dtype", "fp32"], capture_output=True, text=True, env=env, timeout=200)
        assert res.returncode == 0, res.stderr[-2000:]
        outs[name] = {}
        for f in (tmp_path / name).glob("model*.safetensors"):
            outs[name].update(load_file(str(f)))
    assert outs["zero"].keys() == outs["universal"].keys()
    assert all(torch.equal(outs["zero"][k], outs["universal"][k]) for k in outs["zero"])
