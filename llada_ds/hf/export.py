"""Export a trained model as a Hugging Face folder in the released LLaDA layout, and push it.

The folder loads with transformers' AutoModel / AutoModelForCausalLM (trust_remote_code=True,
offline): config.json with LLaDA's keys and an explicit auto_map, our own configuration_llada.py
and modeling_llada.py (self-contained), sharded safetensors with an index, the tokenizer
(AutoTokenizer, ids identical to ours), generation_config.json with the mask id, and a model card.
After writing, the export verifies itself: transformers loads the folder offline and its logits on
a fixed batch must match our model's (fp32, relative error < 1e-5), or the export fails.

A LoRA run exports two ways (hf/adapter.py writes the second):
- merged (`--merge`, also what a plain export of a LoRA run does): the adapters folded into the
  base weights, checked against the unmerged model's logits before the folder is written, then
  written and verified as any export;
- as a PEFT adapter folder (`--adapter`): adapter_config.json and adapter_model.safetensors in the
  released module names, loadable with peft.PeftModel.from_pretrained on the base.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

import torch

from ..data.tokenizer import Tokenizer
from ..errors import ExportError
from ..lora import merge_adapters
from ..model import LLaDAModel
from ..model.hf_layout import llada_config, to_llada_state_dict
from ..data.object_store import ObjectStorage
from ..data.storage import is_uri, join
from ..weights import CHECKPOINTS, DTYPES, LATEST, WeightsSource, find_weights, load_hf_folder, load_model, tag_for
REMOTE_DIR = Path(__file__).parent / "remote"
AUTO_MAP = {
    "AutoConfig": "configuration_llada.LLaDAConfig",
    "AutoModel": "modeling_llada.LLaDAModelLM",
    "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
}




def _portable_tokenizer_config(path: Path) -> None:
    """Keep only what both transformers 4.4x and 5.x read the same way.

    5.x writes extra_special_tokens as a list (4.x expects a mapping and fails) and bookkeeping
    keys; the added tokens themselves live in tokenizer.json for both.
    """
    conf = json.loads(path.read_text())
    for key in ("extra_special_tokens", "backend", "is_local", "local_files_only"):
        conf.pop(key, None)
    conf.update(legacy=False, add_bos_token=False, add_eos_token=False, add_prefix_space=False)
    path.write_text(json.dumps(conf, indent=2) + "\n")


def _model_card(model: LLaDAModel, info: dict, dtype: str) -> str:
    cfg = model.config
    params = sum(p.numel() for p in model.parameters())
    trained = info.get("trained", "unknown")
    return f"""---
library_name: transformers
tags: [llada, masked-diffusion, llada-ds]
---
# LLaDA-style masked diffusion language model

Trained with llada-ds: a bidirectional LLaMA-style mask predictor trained with the LLaDA objective
(each sequence's tokens masked with probability p = (1 - 1e-3) t + 1e-3 for a random t, cross-entropy
on the masked tokens weighted by 1/p).

| | |
|---|---|
| parameters | {params:,} |
| layers / d_model / heads (kv) / FFN | {cfg.n_layers} / {cfg.d_model} / {cfg.n_heads} ({cfg.kv_heads}) / {cfg.ffn_hidden_size} |
| vocabulary / max length | {cfg.vocab_size} / {cfg.max_seq_len} |
| training | {trained} |
| weights | {dtype}, safetensors |
| mask token id | {info.get("mask_id")} |

## Sampling

With llada-ds installed from its source repository (`pip install -e .` in a clone):

```bash
llada-ds generate --model THIS_FOLDER --prompt "Once upon a time" --gen-length 128 --block-length 32
```

or with transformers: `AutoModelForCausalLM.from_pretrained(THIS_FOLDER, trust_remote_code=True)` and
`AutoTokenizer.from_pretrained(THIS_FOLDER, trust_remote_code=True)` (config.json maps the LLaDA
classes to the code shipped in this folder, as LLaDA's own checkpoints do, so transformers asks
before running it unless told). The model's forward returns `.logits` for every position (no
shift); LLaDA's own sampler and evaluation code run on it unchanged.
"""


def export_model(model: LLaDAModel, tokenizer: Tokenizer, out_dir: str | Path, dtype: str = "bf16",
                 max_shard_size: str = "5GB", info: Optional[dict] = None, verify: bool = True) -> Path:
    from huggingface_hub import save_torch_state_dict

    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = dict(info or {})
    sp = tokenizer.special
    info.setdefault("mask_id", sp.mask)
    state = {k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in to_llada_state_dict(model.state_dict()).items()}
    for old in list(out.glob("model*.safetensors")) + list(out.glob("model.safetensors.index.json")):
        old.unlink()  # a previous export's shards must not mix with this one's
    save_torch_state_dict(state, str(out), max_shard_size=max_shard_size)
    umask = os.umask(0)
    os.umask(umask)
    for f in out.glob("model*.safetensors*"):  # written private; every other file of the export is not
        f.chmod(0o666 & ~umask)
    config = llada_config(model.config, sp.mask, sp.eos, sp.pad)
    config.update(auto_map=AUTO_MAP, bos_token_id=sp.bos, torch_dtype=str(DTYPES[dtype]).removeprefix("torch."))
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("configuration_llada.py", "modeling_llada.py"):
        shutil.copyfile(REMOTE_DIR / name, out / name)
    tokenizer.save_pretrained(out)
    if tokenizer.kind == "sentencepiece":
        _portable_tokenizer_config(out / "tokenizer_config.json")
    generation = {"mask_token_id": sp.mask, "eos_token_id": sp.eos, "pad_token_id": sp.pad, "bos_token_id": sp.bos,
                  "eot_token_id": sp.eot, "steps": 128, "gen_length": 128, "block_length": 32, "temperature": 0.0,
                  "remasking": "low_confidence"}
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")
    (out / "README.md").write_text(_model_card(model, info, dtype))
    if verify:
        verify_export(out, tokenizer)
    return out


def transformers_model(folder: Path):
    """The exported folder loaded by transformers (offline, its own remote code, fp32)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True,
                                                    dtype=torch.float32).eval()
    except TypeError:  # transformers 4.x names it torch_dtype
        return AutoModelForCausalLM.from_pretrained(str(folder), trust_remote_code=True, local_files_only=True,
                                                    torch_dtype=torch.float32).eval()


def check_batch(tokenizer: Tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed batch exports are verified on: (ids with a run of mask tokens, attention mask with
    left padding on the second row)."""
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, tokenizer.vocab_size, (2, 24), generator=gen)
    ids[:, 5:9] = tokenizer.special.mask
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    return ids, mask


def relative_error(got: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| over the positions the attention mask keeps."""
    real = mask.bool()
    return ((got[real] - ref[real]).norm() / ref[real].norm()).item()


@torch.no_grad()
def verify_export(folder: Path, tokenizer: Tokenizer, tolerance: float = 1e-5) -> float:
    """Load the folder with transformers (offline) and compare logits and token ids with ours."""
    from transformers import AutoTokenizer

    ours, _ = load_hf_folder(folder, torch.float32)
    theirs = transformers_model(folder)
    ids, mask = check_batch(tokenizer)
    err = relative_error(theirs(ids, attention_mask=mask).logits, ours(ids, doc_ids=mask), mask)
    if not err < tolerance:
        raise ExportError(f"{folder}: transformers' logits differ from llada-ds' by {err:.2e} (relative), "
                          f"more than {tolerance:g}: the export is wrong")
    sample = "ROMEO.\nBut soft, what light through yonder window breaks?\n\t  It is the east."
    hf_tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, trust_remote_code=True)
    if hf_tok.encode(sample, add_special_tokens=False) != tokenizer.encode(sample):
        raise ExportError(f"{folder}: the exported tokenizer's ids differ from llada-ds' tokenizer")
    return err


def run_tokenizer(source: WeightsSource, tokenizer: Optional[str] = None) -> Tokenizer:
    """The tokenizer a checkpoint was trained with: `tokenizer` if given, else the run directory's copy
    (or the path in the run's config); refused if it is not the one trained with."""
    tok = Tokenizer.load(tokenizer or source.tokenizer_path)
    state = source.run_state
    if tok.fingerprint != state["tokenizer"]:
        raise ExportError(f"tokenizer {tok.path} ({tok.fingerprint}) is not the one {source.path} was trained with "
                          f"({state['tokenizer']}); pass the right one with --tokenizer")
    return tok


def checkpoint_source(ckpt: str | Path, step: Optional[int] = None) -> WeightsSource:
    """A llada-ds run or checkpoint to export (a run directory means its latest checkpoint)."""
    path = ckpt if is_uri(ckpt) else Path(ckpt)
    if step is not None and is_uri(ckpt):  # a run directory or its checkpoints/ folder in object storage
        run = ObjectStorage(str(ckpt))
        path = join(ckpt, CHECKPOINTS, tag_for(step)) if run.exists(f"{CHECKPOINTS}/{LATEST}") else join(ckpt, tag_for(step))
    elif step is not None:
        root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        path = root / tag_for(step)
    source = find_weights(path)  # resolves a run directory to its latest checkpoint
    if source.kind != "checkpoint":
        raise ExportError(f"{path} is a Hugging Face folder already; export takes a llada-ds run or checkpoint")
    return source


def trained_note(state: dict) -> str:
    """What the model card says about the training of a checkpoint."""
    if "imported_from" in state:
        return f"imported from {state['imported_from']}"
    note = (f"{state['step']:,} steps, {state['tokens_seen']:,} tokens (data fingerprint "
            f"{state['data']['data_fingerprint']}, tokenizer {state['tokenizer']})")
    lora = state.get("lora")
    if lora:
        note += (f"; LoRA rank {lora['rank']} (alpha {lora['alpha']:g}) on {', '.join(lora['targets'])} of the base "
                 f"{lora['base']['path']} ({lora['base']['fingerprint']})")
    return note


@torch.no_grad()
def merged_lora_model(source: WeightsSource, tokenizer: Tokenizer, tolerance: float = 1e-5) -> LLaDAModel:
    """A LoRA run's model with its adapters merged (fp32), checked against the unmerged model: the
    logits on the verification batch must agree within `tolerance` (relative)."""
    model, _ = load_model(source, torch.float32, merge=False)
    ids, mask = check_batch(tokenizer)
    unmerged = model(ids, doc_ids=mask)
    model = merge_adapters(model)
    err = relative_error(model(ids, doc_ids=mask), unmerged, mask)
    if not err < tolerance:
        raise ExportError(f"{source.path}: the merged model's logits differ from the adapted model's by {err:.2e} "
                          f"(relative), more than {tolerance:g}")
    return model


def export_checkpoint(ckpt: str | Path, out_dir: str | Path, step: Optional[int] = None, dtype: str = "bf16",
                      max_shard_size: str = "5GB", verify: bool = True, tokenizer: Optional[str] = None) -> Path:
    """Export a llada-ds checkpoint (run directory or step directory; any world size). A LoRA run
    is exported merged (its adapters folded into the base weights)."""
    source = checkpoint_source(ckpt, step)
    state = source.run_state
    tok = run_tokenizer(source, tokenizer)
    model = merged_lora_model(source, tok) if source.lora else load_model(source)[0]
    info = {"trained": trained_note(state)}  # export_model adds the mask id
    return export_model(model, tok, out_dir, dtype, max_shard_size, info, verify)


def push_to_hub(folder: str | Path, repo_id: str, private: bool = False, revision: Optional[str] = None,
                token: Optional[str] = None) -> str:
    """Create the repository if needed and upload every file of the folder; returns the commit URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, revision=revision,
                                 commit_message="Upload LLaDA model exported by llada-ds")
    except Exception as exc:
        endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
        raise ExportError(f"push of {folder} to {repo_id} at {endpoint} failed ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else exc!r}); the local folder is unchanged") from None
    return str(info)
