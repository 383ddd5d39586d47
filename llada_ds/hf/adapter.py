"""`llada-ds export RUN OUT --adapter`: a LoRA run as a PEFT adapter folder for the released model.

    OUT/adapter_config.json          peft's LoraConfig: rank, alpha, dropout, and target_modules as a
                                     regex over the released module names of the blocks only
                                     (model.transformer.blocks.N.{q_proj,...,ff_out}); the top-level
                                     ff_out, the output head, never matches
    OUT/adapter_model.safetensors    base_model.model.model.transformer.blocks.N.q_proj.lora_A.weight, ...
    OUT/llada_ds_base.json           the base: the Hugging Face folder the adapter applies to, and the
                                     path and fingerprint of the base the run trained on
    OUT/README.md                    a model card saying the same

It loads on top of the base with transformers and peft, offline:

    base = AutoModelForCausalLM.from_pretrained(BASE, trust_remote_code=True)
    model = PeftModel.from_pretrained(base, OUT)

The export verifies exactly that: the logits of the base folder with the adapter, through
transformers and peft, must match llada-ds' adapted model (fp32, relative error < 1e-5).

The base must be a Hugging Face folder in LLaDA's layout: the run's own base when it was one
(train.init_from=FOLDER, the usual path), or, for a run whose base was a llada-ds checkpoint, an
export of that checkpoint passed as `base` (checked to hold the same tensors).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import torch

from ..data.tokenizer import Tokenizer
from ..errors import CheckpointError, ExportError
from ..lora import LoraSpec, from_peft_state_dict, inject_lora, load_adapters, peft_config, peft_state_dict
from ..weights import (
    DTYPES, WeightsSource, find_weights, is_hf_folder, load_hf_folder, lora_base, read_checkpoint_weights, read_weights,
)
from .export import check_batch, checkpoint_source, relative_error, run_tokenizer, trained_note, transformers_model

ADAPTER_WEIGHTS = "adapter_model.safetensors"
BASE_FILE = "llada_ds_base.json"


def _base_folder(source: WeightsSource, base: Optional[str | Path]) -> Path:
    """The Hugging Face folder the adapter applies to, checked against the run's recorded base."""
    recorded = source.lora["base"]
    if base is None:
        if recorded["kind"] != "huggingface":
            raise ExportError(f"{source.path}: the base of this LoRA run is a llada-ds checkpoint "
                              f"({recorded['path']}); "
                              "a PEFT adapter needs a Hugging Face base: export the base first (llada-ds export "
                              f"{recorded['path']} BASE_DIR) and pass --base BASE_DIR")
        return Path(recorded["path"])
    folder = Path(base)
    if not is_hf_folder(folder):
        raise ExportError(f"--base {folder}: not a Hugging Face folder in LLaDA's layout (no config.json)")
    try:
        trained_on = read_weights(lora_base(source))
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    given = read_weights(find_weights(folder))
    differ = sorted(n for n in trained_on if n not in given or not torch.equal(
        given[n], trained_on[n].to(given[n].dtype)))
    if differ or set(given) != set(trained_on):
        raise ExportError(f"--base {folder} does not hold the weights the adapters were trained on "
                          f"({recorded['path']}): {', '.join(differ[:4]) or 'other tensor names'} differ")
    return folder


def _model_card(spec: LoraSpec, info: dict) -> str:
    return f"""---
library_name: peft
tags: [llada, masked-diffusion, llada-ds, lora]
---
# LoRA adapter for a LLaDA-style masked diffusion language model

Trained with [llada-ds](https://pypi.org/project/llada-ds/).

| | |
|---|---|
| base | {info['base']} |
| base of the training run | {info['trained_on']} ({info['fingerprint']}) |
| rank / alpha / dropout | {spec.rank} / {spec.alpha:g} / {spec.dropout:g} |
| adapted matrices (released names) | {', '.join(spec.targets)} of every block (`ff_out`: the block's down \
projection, not the output head) |
| training | {info['trained']} |
| weights | {info['dtype']}, safetensors |

```python
from peft import PeftModel
from transformers import AutoModelForCausalLM

base = AutoModelForCausalLM.from_pretrained("BASE", trust_remote_code=True)
model = PeftModel.from_pretrained(base, "THIS_FOLDER")   # or model.merge_and_unload()
```
"""


def export_adapter(ckpt: str | Path, out_dir: str | Path, step: Optional[int] = None, dtype: str = "bf16",
                   base: Optional[str | Path] = None, verify: bool = True) -> Path:
    """Write a LoRA run's adapters as a PEFT adapter folder for the released model (see above)."""
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise ExportError(f"--dtype {dtype!r} is not one of {', '.join(DTYPES)}")
    source = checkpoint_source(ckpt, step)
    if source.lora is None:
        raise ExportError(f"{source.path} is not a LoRA run (lora.rank was 0): export the whole model, without "
                          "--adapter")
    spec = LoraSpec.from_dict(source.lora)
    folder = _base_folder(source, base)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    adapters = read_checkpoint_weights(source.path)
    save_file({k: v.detach().to(DTYPES[dtype]).contiguous() for k, v in peft_state_dict(adapters).items()},
              str(out / ADAPTER_WEIGHTS))
    peft_config(spec, str(folder)).save_pretrained(str(out))
    recorded = source.lora["base"]
    (out / BASE_FILE).write_text(json.dumps({"base": str(folder), "trained_on": recorded["path"],
                                             "fingerprint": recorded["fingerprint"], "kind": recorded["kind"]},
                                            indent=1) + "\n")
    info = {"base": str(folder), "trained_on": recorded["path"], "fingerprint": recorded["fingerprint"],
            "trained": trained_note(source.run_state), "dtype": dtype}
    (out / "README.md").write_text(_model_card(spec, info))
    if verify:
        verify_adapter(out, folder, run_tokenizer(source), spec)
    return out


def read_adapter_folder(folder: Path) -> dict:
    """Our-named adapter tensors of a PEFT adapter folder written for a LLaDA model."""
    from safetensors.torch import load_file

    return from_peft_state_dict(load_file(str(Path(folder) / ADAPTER_WEIGHTS)), str(folder))


@torch.no_grad()
def verify_adapter(folder: Path, base: Path, tokenizer: Tokenizer, spec: LoraSpec, tolerance: float = 1e-5) -> float:
    """transformers + peft (offline) on the base folder with the adapter vs llada-ds' adapted model."""
    from peft import PeftModel

    theirs = PeftModel.from_pretrained(transformers_model(base), str(folder), is_trainable=False).eval()
    ours = load_hf_folder(base, torch.float32)[0]
    inject_lora(ours, spec, seed=0)
    load_adapters(ours, read_adapter_folder(folder), str(folder))
    ids, mask = check_batch(tokenizer)
    err = relative_error(theirs(ids, attention_mask=mask).logits, ours.eval()(ids, doc_ids=mask), mask)
    if not err < tolerance:
        raise ExportError(f"{folder}: peft's logits with this adapter on {base} differ from llada-ds' by {err:.2e} "
                          f"(relative), more than {tolerance:g}: the adapter export is wrong")
    return err
