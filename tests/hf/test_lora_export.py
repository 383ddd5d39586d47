"""Exports of a LoRA run the real trainer wrote: merged (released layout) and as a PEFT adapter
folder, both checked through transformers (and peft) offline against llada-ds' adapted model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import ENV, torchrun

from llada_ds.config import load_run_config
from llada_ds.data.tokenizer import Tokenizer
from llada_ds.hf.export import check_batch, export_model, relative_error, transformers_model
from llada_ds.model import LLaDAModel
from llada_ds.weights import load_model


@pytest.fixture(scope="module")
def lora_run(recipe, sp_tokenizer, tmp_path_factory):
    """Two steps of LoRA pre-training (rank 4 on q_proj, v_proj and ff_out) on a seeded base folder."""
    root = tmp_path_factory.mktemp("lora_export")
    torch.manual_seed(11)
    export_model(LLaDAModel(load_run_config(str(recipe)).model.build()), Tokenizer.load(str(sp_tokenizer)),
                 root / "base", dtype="fp32", verify=False)
    run = root / "run"
    torchrun(recipe, run, f"--train.init_from={root / 'base'}", "--lora.rank=4", "--lora.alpha=16",
             "--lora.targets=q_proj,v_proj,ff_out", "--optim.lr=3e-2", "--train.steps=2", "--eval.every=0", nproc=1)
    return root, run


def _cli(*args: str) -> subprocess.CompletedProcess:
    res = subprocess.run([sys.executable, "-m", "llada_ds.cli", *args], capture_output=True, text=True,
                         env={**ENV, "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    return res


@torch.no_grad()
def _adapted_logits(run, tokenizer):
    """llada-ds' own model of the run: base + adapters as peft layers (not merged)."""
    model = load_model(run, torch.float32, merge=False)[0]
    ids, mask = check_batch(tokenizer)
    base = load_model(run.parent / "base")[0]
    assert not torch.allclose(model(ids, doc_ids=mask), base(ids, doc_ids=mask), atol=1e-4)  # the adapters trained
    return ids, mask, model(ids, doc_ids=mask)


@pytest.mark.timeout(500)
def test_merged_export_of_a_lora_run_gives_the_adapted_logits_through_transformers(lora_run, sp_tokenizer):
    root, run = lora_run
    tok = Tokenizer.load(str(sp_tokenizer))
    res = _cli("export", str(run), str(root / "merged"), "--merge", "--dtype", "fp32")
    assert "verified" in res.stdout
    ids, mask, want = _adapted_logits(run, tok)
    with torch.no_grad():
        got = transformers_model(root / "merged")(ids, attention_mask=mask).logits
    assert relative_error(got, want, mask) < 1e-5
    names = json.loads((root / "merged" / "model.safetensors.index.json").read_text())["weight_map"] \
        if (root / "merged" / "model.safetensors.index.json").is_file() else None
    assert names is None or all("lora" not in n for n in names)  # the released names only
    assert "LoRA rank 4" in (root / "merged" / "README.md").read_text()
    # generate and eval take the run itself: the adapters are applied while loading.
    out = _cli("generate", "--model", str(run), "--prompt", "ROMEO.", "--gen-length", "8", "--dtype", "fp32")
    assert out.stdout.startswith("ROMEO.")


@pytest.mark.timeout(500)
def test_adapter_folder_loads_with_peft_on_the_base_and_pushes(lora_run, sp_tokenizer, tmp_path):
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    root, run = lora_run
    tok = Tokenizer.load(str(sp_tokenizer))
    out = root / "adapter"
    res = _cli("export", str(run), str(out), "--adapter", "--dtype", "fp32")
    assert "peft loads it on the base" in res.stdout
    assert {p.name for p in out.iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                               "llada_ds_base.json", "README.md"}
    conf = json.loads((out / "adapter_config.json").read_text())
    assert conf["r"] == 4 and conf["lora_alpha"] == 16 and conf["peft_type"] == "LORA"
    assert conf["target_modules"] == r"model\.transformer\.blocks\.\d+\.(q_proj|v_proj|ff_out)"
    assert json.loads((out / "llada_ds_base.json").read_text())["fingerprint"].startswith("sha256:")

    ids, mask, want = _adapted_logits(run, tok)
    model = PeftModel.from_pretrained(transformers_model(root / "base"), str(out)).eval()
    adapted = sorted(n for n, m in model.named_modules() if isinstance(m, LoraLayer))
    assert len(adapted) == 2 * 3 and all(".blocks." in n for n in adapted)  # never the output head
    with torch.no_grad():
        got = model(ids, attention_mask=mask).logits
    assert relative_error(got, want, mask) < 1e-5

    # A base other than the one trained on is refused, naming it.
    other = tmp_path / "other"
    torch.manual_seed(12)
    export_model(LLaDAModel(load_model(root / "base")[0].config), tok, other, dtype="fp32", verify=False)
    bad = subprocess.run([sys.executable, "-m", "llada_ds.cli", "export", str(run), str(tmp_path / "x"), "--adapter",
                          "--base", str(other)], capture_output=True, text=True, env=ENV, timeout=300)
    assert bad.returncode == 2 and "does not hold the weights the adapters were trained on" in bad.stderr

    from hub_stub import GOOD_TOKEN, HubStub

    with HubStub() as hub:  # pushed as exports are (the hub's address is read when huggingface_hub loads)
        env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_TOKEN": GOOD_TOKEN, "HF_HUB_OFFLINE": "0",
               "HF_HUB_DISABLE_TELEMETRY": "1", "HF_HOME": str(tmp_path / "hf")}
        res = subprocess.run([sys.executable, "-c", "from llada_ds.hf.export import push_to_hub; "
                              f"push_to_hub({str(out)!r}, 'someone/tiny-llada-lora')"], capture_output=True, text=True,
                             env=env, timeout=120)
        assert res.returncode == 0, res.stderr[-2000:]
        pushed = hub.repos["someone/tiny-llada-lora"]["branches"]["main"]
    assert pushed == {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
