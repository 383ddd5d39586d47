"""`llada-ds import`: a Hugging Face folder in LLaDA's released layout -> a llada-ds checkpoint.

The folder's config and safetensors are read into our model (llada_ds/weights.py, which checks
names and shapes and never unpickles) and written as a weights-only checkpoint that every command
taking a checkpoint accepts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from safetensors.torch import save_file

from ..data.storage import LocalStorage, is_uri, join, staged_output
from ..data.tokenizer import Tokenizer
from ..errors import ConfigError
from ..weights import IMPORTED_WEIGHTS, RUN_STATE, RUN_TOKENIZER, load_hf_folder, localize


def import_llada_folder(folder: str | Path, out_dir: str | Path) -> str | Path:
    """`llada-ds import`: a released-format folder -> a llada-ds weights checkpoint.

    The checkpoint holds weights.safetensors (our names, the folder's dtype), the folder's
    tokenizer (kept as is, with its own mask id) under tokenizer/, and run_state.json (step 0, the
    model shape, the tokenizer fingerprint), so every llada-ds command that takes a checkpoint
    (generate, eval, export, --train.init_from) takes it. Only safetensors are read. Either side
    may be an object-store URI (the input is downloaded; the output is written locally, then
    uploaded with run_state.json last).
    """
    folder = localize(folder)
    with staged_output(out_dir, last=(RUN_STATE,)) as out:
        return _import(folder, out, join(out_dir, "tokenizer") if is_uri(out_dir) else None) or out_dir


def _import(folder: Path, out: Path, tokenizer_location: Optional[str]) -> None:
    model, conf = load_hf_folder(folder, None)  # checks config, names and shapes, naming what is wrong
    cfg = model.config
    tok_dir = out / RUN_TOKENIZER
    Tokenizer.load(folder).copy_files(tok_dir)
    tokenizer = Tokenizer.load(tok_dir)
    if "mask_token_id" in conf and conf["mask_token_id"] != tokenizer.special.mask:
        raise ConfigError(f"{folder}: config mask_token_id {conf['mask_token_id']} but the tokenizer's "
                          f"<|mdm_mask|> is {tokenizer.special.mask}")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out / IMPORTED_WEIGHTS))
    state = {"step": 0, "model": cfg.to_dict(), "tokenizer": tokenizer.fingerprint, "imported_from": str(folder),
             "tokens_seen": 0, "data": {"data_fingerprint": "imported"},
             "config": {"data": {"tokenizer": tokenizer_location or str(tok_dir.resolve())}}}
    LocalStorage(out).write_atomic(RUN_STATE, (json.dumps(state, indent=1) + "\n").encode())
