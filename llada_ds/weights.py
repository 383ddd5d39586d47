"""Weights from wherever they live, read into the plain model: the layer every consumer builds on.

Two kinds of source:
- a llada-ds checkpoint (docs/design.md, "Checkpoints"): a run directory, its checkpoints/ folder
  or one step-* directory. Its weights are DeepSpeed's ZeRO shards of any world size
  (consolidated in fp32 by DeepSpeed's own zero_to_fp32), a DeepSpeed universal checkpoint (one
  fp32 file per parameter), or an imported one (`llada-ds import`: weights.safetensors). Its
  run_state.json says what model, tokenizer and data it belongs to.
- a Hugging Face folder in LLaDA's released layout (config.json + safetensors; ours after export,
  or LLaDA's own), read through the name mapping of llada_ds/model/hf_layout.py. No remote code
  runs and nothing is unpickled.

A LoRA run's checkpoint holds only its adapters; its run_state.json names the base (a path of
either kind above, and the fingerprint of the base's tensors). Reading it reads the base, checks
the fingerprint, and applies the adapters (llada_ds/lora.py): by default folded into the weights,
so every consumer gets the plain model with the fine-tuned weights.

Either kind may also sit in object storage (an s3:// or gs:// URI): it is downloaded to local
disk first (a checkpoint: the one `latest` names, kept under $LLADA_DS_CACHE by its save id).

Training (init_from), inference, evaluation, export and import all read weights through here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .data.object_store import ObjectStorage
from .data.storage import download_cache, is_uri, local_copy
from .errors import CheckpointError, ConfigError, StorageError
from .lora import LoraSpec, inject_lora, load_adapters, merge_adapters
from .model import LLaDAModel, ModelConfig
from .model.hf_layout import from_llada_state_dict, model_config_from_llada, to_llada_name

# The dtype names the command line takes (--dtype), for loading, casting and export.
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}

# The checkpoint layout: RUN_DIR/checkpoints/step-00000100/{DeepSpeed's files, run_state.json}
# and RUN_DIR/checkpoints/latest naming the newest complete one (train/checkpoint.py writes them).
CHECKPOINTS = "checkpoints"
LATEST = "latest"
RUN_STATE = "run_state.json"
IMPORTED_WEIGHTS = "weights.safetensors"  # written by `llada-ds import`
RUN_TOKENIZER = "tokenizer"  # the copy of the tokenizer in a run directory (and in an imported checkpoint)


def dtype_of(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ConfigError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return DTYPES[name]


def tag_for(step: int) -> str:
    return f"step-{step:08d}"


def latest_checkpoint(ckpt_root: Path) -> Optional[Path]:
    """The checkpoint `latest` names in a checkpoints/ folder, None if there is none yet."""
    pointer = Path(ckpt_root) / LATEST
    if not pointer.is_file():
        return None
    tag = pointer.read_text().strip()
    path = Path(ckpt_root) / tag
    if not (path / RUN_STATE).is_file():
        raise CheckpointError(f"{pointer} points to {tag}, which has no {RUN_STATE}: the checkpoint is incomplete")
    return path


def read_run_state(ckpt_dir: Path) -> dict:
    path = Path(ckpt_dir) / RUN_STATE
    if not path.is_file():
        if not Path(ckpt_dir).exists():
            raise CheckpointError(f"{ckpt_dir} does not exist")
        raise CheckpointError(f"{ckpt_dir}: not a complete llada-ds checkpoint (no {RUN_STATE})")
    return json.loads(path.read_text())


def resolve_checkpoint(path: Path) -> Path:
    """A run directory, its checkpoints/ folder, or one checkpoint -> that checkpoint."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    for candidate in (path / CHECKPOINTS, path):
        found = latest_checkpoint(candidate) if (candidate / LATEST).is_file() else None
        if found is not None:
            return found
    if (path / RUN_STATE).is_file():
        return path
    raise CheckpointError(f"{path}: no llada-ds checkpoint (expected a run directory or a step-* checkpoint)")


def is_hf_folder(path: Path) -> bool:
    """A Hugging Face folder in LLaDA's layout (it has a config.json; checkpoints never do)."""
    return (Path(path) / "config.json").is_file()


def is_universal(ckpt: Path) -> bool:
    """DeepSpeed's universal checkpoint (ds_to_universal): one folder per parameter under zero/."""
    return (ckpt / "zero").is_dir() and not list(ckpt.glob("*optim_states.pt"))


# -- Hugging Face folders ---------------------------------------------------------------------------

def hf_config(folder: Path) -> tuple[ModelConfig, dict]:
    """(our model config, the folder's config.json)."""
    conf_path = Path(folder) / "config.json"
    if not conf_path.is_file():
        raise ConfigError(f"{folder}: no config.json")
    conf = json.loads(conf_path.read_text())
    return model_config_from_llada(conf, str(conf_path)), conf


def read_hf_tensors(folder: Path) -> dict:
    """All tensors of a Hugging Face folder under their stored names, sharded or single safetensors."""
    from safetensors.torch import load_file

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        out = {}
        for f in files:
            out.update(load_file(str(folder / f)))
        return out
    if (folder / "model.safetensors").is_file():
        return load_file(str(folder / "model.safetensors"))
    if list(folder.glob("pytorch_model*.bin")):
        raise ConfigError(f"{folder}: only pickled PyTorch weights (pytorch_model*.bin); llada-ds reads safetensors "
                          "only, never unpickles: convert them to safetensors first")
    raise ConfigError(f"{folder}: no weights (model.safetensors or model.safetensors.index.json)")


def load_hf_folder(folder: Path, dtype: Optional[torch.dtype] = torch.float32) -> tuple[LLaDAModel, dict]:
    """Our model with the weights of a released-format folder: (model, its config.json). The
    weights are cast to `dtype` as they are assigned (None keeps the stored dtype), so a bf16 8B
    model is never materialised in fp32 first."""
    folder = Path(folder)
    cfg, conf = hf_config(folder)
    with torch.device("meta"):
        model = LLaDAModel(cfg)
    ours, unexpected = from_llada_state_dict(read_hf_tensors(folder))
    expected = dict(model.named_parameters())
    missing = [to_llada_name(n) for n in expected if n not in ours]
    wrong = [f"{to_llada_name(n)} {tuple(t.shape)} (expected {tuple(expected[n].shape)})"
             for n, t in ours.items() if n in expected and tuple(t.shape) != tuple(expected[n].shape)]
    if missing or unexpected or wrong:
        raise ConfigError(f"{folder}: weights do not fit the config: missing {missing[:6]}, unexpected "
                          f"{unexpected[:6]}, wrong shape {wrong[:6]}")
    model.load_state_dict({k: v if dtype is None else v.to(dtype) for k, v in ours.items()}, assign=True)
    return model.eval(), conf


# -- llada-ds checkpoints ---------------------------------------------------------------------------

def read_checkpoint_weights(ckpt: Path) -> dict:
    """Our-named tensors of one checkpoint directory: DeepSpeed's ZeRO shards (consolidated in fp32
    by its own tool), a DeepSpeed universal checkpoint (its per-parameter fp32 files), or an
    imported one."""
    ckpt = Path(ckpt)
    if (ckpt / IMPORTED_WEIGHTS).is_file():
        from safetensors.torch import load_file

        return load_file(str(ckpt / IMPORTED_WEIGHTS))
    if is_universal(ckpt):
        shapes = _trained_shapes(read_run_state(ckpt))
        out = {}
        for name, shape in shapes.items():
            f = ckpt / "zero" / name / "fp32.pt"
            if not f.is_file():
                raise CheckpointError(f"{ckpt}: universal checkpoint lacks {f.relative_to(ckpt)}")
            flat = torch.load(f, map_location="cpu", weights_only=True)  # DeepSpeed's own tensor files
            flat = flat["param"] if isinstance(flat, dict) else flat
            out[name] = flat.reshape(shape) if flat.numel() == shape.numel() else flat[: shape.numel()].reshape(shape)
        return out
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    # DeepSpeed's tool narrates every step and draws progress bars: kept quiet, shown on failure.
    narration = io.StringIO()
    try:
        with contextlib.redirect_stdout(narration), contextlib.redirect_stderr(narration):
            return get_fp32_state_dict_from_zero_checkpoint(str(ckpt.parent), tag=ckpt.name)
    except Exception:
        sys.stderr.write(narration.getvalue())
        raise


def weights_fingerprint(state: dict) -> str:
    """sha256 of a set of tensors (names, dtypes, shapes, bytes, in name order): what a LoRA run
    records of its frozen base, the same whichever file format holds the same tensors."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + h.hexdigest()[:32]


def _trained_shapes(run_state: dict) -> dict:
    """The shapes of the parameters a run trains (a LoRA run: its adapters), by name."""
    with torch.device("meta"):
        model = LLaDAModel(ModelConfig.from_dict(run_state["model"]))
        if run_state.get("lora"):
            inject_lora(model, LoraSpec.from_dict(run_state["lora"]), seed=0)
    return {n: p.shape for n, p in model.named_parameters() if p.requires_grad}


def check_compatible(state: dict, model_cfg: dict, tokenizer_fingerprint: Optional[str], where: Path) -> None:
    """Refuse weights of another model shape or tokenizer, naming what differs. `state` is a run
    state (or any dict with "model" and, to check it, "tokenizer")."""
    saved = state.get("model", {})
    diffs = [f"{k}: checkpoint {saved.get(k)!r}, this run {model_cfg.get(k)!r}"
             for k in sorted(set(saved) | set(model_cfg))
             if k != "attention" and saved.get(k) != model_cfg.get(k)]
    if diffs:
        raise CheckpointError(f"{where} holds another model shape: " + "; ".join(diffs))
    if state.get("tokenizer") is not None and tokenizer_fingerprint is not None \
            and state["tokenizer"] != tokenizer_fingerprint:
        raise CheckpointError(f"{where} was trained with tokenizer {state.get('tokenizer')}, this run uses "
                              f"{tokenizer_fingerprint}")


# -- object storage ---------------------------------------------------------------------------------

def localize(location: str | Path) -> Path:
    """A local folder with the weights source at `location`: the path itself, or for a URI a
    download of the Hugging Face folder or of the checkpoint it resolves to (a run directory and
    its checkpoints/ folder resolve through `latest`)."""
    if not is_uri(location):
        return Path(str(location).removeprefix("file://"))
    uri = str(location).rstrip("/")
    store = ObjectStorage(uri)
    if store.exists("config.json"):
        return local_copy(uri)
    for prefix in (f"{CHECKPOINTS}/", ""):
        if store.exists(prefix + LATEST):
            tag = store.read_bytes(prefix + LATEST).decode().strip()
            ckpt = prefix + tag
            if not store.exists(f"{ckpt}/{RUN_STATE}"):
                raise CheckpointError(f"{store.describe(prefix + LATEST)} points to {tag}, which has no {RUN_STATE}: "
                                      "the checkpoint is incomplete")
            break
    else:
        if not store.exists(RUN_STATE):
            raise CheckpointError(f"{uri}: no llada-ds checkpoint or Hugging Face folder (expected a run directory, "
                                  "a step-* checkpoint or a folder with config.json)")
        ckpt, tag = "", uri.rsplit("/", 1)[1]
    state = json.loads(store.read_bytes(f"{ckpt}/{RUN_STATE}".lstrip("/")))
    # Complete checkpoints never change: a copy is named by where it is and the save that wrote it.
    key = hashlib.sha256(f"{store.describe(ckpt)}:{state.get('upload', '')}".encode()).hexdigest()[:24]
    dest = download_cache() / key / tag
    try:
        store.download_tree(ckpt, dest, keep=lambda name: not name.startswith("."), refresh=False)
    except StorageError as exc:
        raise CheckpointError(f"downloading {store.describe(ckpt)} failed: {exc}") from None
    return dest


# -- either kind ------------------------------------------------------------------------------------

@dataclass
class WeightsSource:
    """A resolved source of weights: what it is and what it says about itself."""

    path: Path  # the checkpoint directory, or the Hugging Face folder
    kind: str  # "checkpoint" | "huggingface"
    model_config: ModelConfig
    run_state: Optional[dict] = None  # checkpoints
    hf_config: Optional[dict] = None  # folders

    @property
    def tokenizer_path(self) -> str:
        """Where this source's tokenizer is: a folder's own; for a checkpoint, the copy kept in its
        run directory (or beside imported weights), else the path in the run's config."""
        if self.kind == "huggingface":
            return str(self.path)
        for root in (self.path, *list(self.path.parents)[:3]):
            if (root / RUN_TOKENIZER).is_dir() and ((root / CHECKPOINTS).is_dir() or root == self.path):
                return str(root / RUN_TOKENIZER)
        configured = (self.run_state or {}).get("config", {}).get("data", {}).get("tokenizer", "")
        if not configured:
            raise CheckpointError(f"{self.path}: the run names no tokenizer; pass one (--tokenizer)")
        return configured

    @property
    def lora(self) -> Optional[dict]:
        """A LoRA run's record: its settings and its base {path, kind, fingerprint}; None otherwise."""
        return None if self.run_state is None else self.run_state.get("lora")

    @property
    def description(self) -> dict:
        """What check_compatible compares: the model shape and (checkpoints) the tokenizer."""
        return {"model": self.model_config.to_dict(),
                "tokenizer": None if self.run_state is None else self.run_state.get("tokenizer")}


def find_weights(path: str | Path) -> WeightsSource:
    """Resolve a run directory, checkpoint or Hugging Face folder (a path or a URI) without
    reading its tensors (a URI is downloaded first)."""
    path = localize(path)
    if is_hf_folder(path):
        cfg, conf = hf_config(path)
        return WeightsSource(path, "huggingface", cfg, hf_config=conf)
    ckpt = resolve_checkpoint(path)
    state = read_run_state(ckpt)
    return WeightsSource(ckpt, "checkpoint", ModelConfig.from_dict(state["model"]), run_state=state)


def read_weights(source: WeightsSource) -> dict:
    """Our-named tensors of a source (a checkpoint's in fp32, a folder's as stored; a LoRA run's:
    its base with the adapters merged, in fp32)."""
    if source.kind == "huggingface":
        return from_llada_state_dict(read_hf_tensors(source.path))[0]
    if source.lora is not None:
        return load_lora_model(source, torch.float32)[0].state_dict()
    return read_checkpoint_weights(source.path)


def lora_base(source: WeightsSource) -> WeightsSource:
    """The base a LoRA run's adapters were trained on, as its run state names it."""
    base = source.lora["base"]
    try:
        return find_weights(Path(base["path"]))
    except (CheckpointError, ConfigError) as exc:
        raise CheckpointError(f"{source.path}: the base of these LoRA adapters, {base['path']}, cannot be read "
                              f"({exc})") from None


def load_lora_model(source: WeightsSource, dtype: Optional[torch.dtype] = torch.float32,
                    merge: bool = True) -> tuple[LLaDAModel, WeightsSource]:
    """A LoRA run's model: its base (checked against the recorded fingerprint) with the adapters,
    merged into the weights (the plain model) or kept as peft layers (merge=False). Returns the
    model and the base's source."""
    base = lora_base(source)
    state = read_weights(base)
    recorded = source.lora["base"]["fingerprint"]
    if weights_fingerprint(state) != recorded:
        raise CheckpointError(f"{source.path}: its base {base.path} is not the one the adapters were trained on "
                              f"(fingerprint {weights_fingerprint(state)}, recorded {recorded})")
    with torch.device("meta"):
        model = LLaDAModel(source.model_config)
    model.load_state_dict({k: v if dtype is None else v.to(dtype) for k, v in state.items()}, assign=True)
    inject_lora(model, LoraSpec.from_dict(source.lora), seed=0)
    load_adapters(model, read_checkpoint_weights(source.path), str(source.path))
    if merge:
        model = merge_adapters(model)
    return model.eval(), base


def load_model(path: Path | WeightsSource, dtype: Optional[torch.dtype] = torch.float32,
               merge: bool = True) -> tuple[LLaDAModel, WeightsSource]:
    """The plain model (eval mode, on the CPU) with the weights of any source, and the source. A
    LoRA run comes with its adapters applied: merged (default) or as peft layers (merge=False)."""
    source = path if isinstance(path, WeightsSource) else find_weights(path)
    if source.kind == "huggingface":
        return load_hf_folder(source.path, dtype)[0], source
    if source.lora is not None:
        return load_lora_model(source, dtype, merge)[0], source
    model = LLaDAModel(source.model_config)
    missing, unexpected = model.load_state_dict(read_checkpoint_weights(source.path), strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{source.path}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    if dtype is not None:
        model = model.to(dtype)
    return model.eval(), source
