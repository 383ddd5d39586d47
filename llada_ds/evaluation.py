"""Evaluation of a trained model: validation loss (the ELBO bound) and multiple-choice accuracy.

- validation_elbo: the pre-training objective on held-out windows with fixed noise, in nats per
  token: an upper bound on the negative log-likelihood. With the run's noise (its objective's
  noise_seed and eps, as `llada-ds eval` passes for a checkpoint) it scores the same windows with
  the same noise as a training run's validation loss; the trainer rounds the number of windows
  down to a multiple of world size x micro batch, so it may average over fewer of them.
- multiple_choice: for each (context, choices, answer) record, the choice with the highest Monte
  Carlo conditional log-likelihood (diffusion/likelihood.py) wins; accuracy over the file.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .data.shards import ShardSet
from .data.storage import LocalStorage
from .data.tokenizer import Tokenizer
from .diffusion import NoiseConfig, diffusion_loss, pretrain_batch
from .diffusion.likelihood import log_likelihood
from .diffusion.noise import EVAL_STEP


@torch.no_grad()
def validation_elbo(model, shards_dir: str, tokenizer: Tokenizer, seq_len: int, samples: int, batch: int = 8,
                    noise: Optional[NoiseConfig] = None) -> float:
    """Mean loss over the first min(samples, windows) windows of seq_len. noise: its seed and eps
    (default: seed 0, default eps); windows are never cut to a random length."""
    shards = ShardSet(LocalStorage(shards_dir), verify="header", tokenizer_fingerprint=tokenizer.fingerprint)
    n = min(samples, shards.total_tokens // seq_len)
    if n == 0:
        raise ValueError(f"{shards_dir}: fewer tokens than one window of {seq_len}")
    noise = dataclasses.replace(noise or NoiseConfig(), random_length_prob=0.0)
    total = 0.0
    for start in range(0, n, batch):
        idx = list(range(start, min(start + batch, n)))
        tokens = torch.from_numpy(shards.read_windows(np.array(idx) * seq_len, seq_len))
        b = pretrain_batch(tokens, idx, EVAL_STEP, tokenizer.special.mask, noise)
        total += diffusion_loss(model(b.noisy, logits_mask=b.masked), b).loss.item() * len(idx)
    return total / n


def read_multiple_choice(path: str) -> list[dict]:
    records = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{i + 1}: not JSON ({exc})") from None
        if not isinstance(r, dict) or not {"context", "choices", "answer"} <= set(r):
            raise ValueError(f"{path}:{i + 1}: needs keys context, choices, answer")
        if not isinstance(r["choices"], list) or not r["choices"]:
            raise ValueError(f"{path}:{i + 1}: choices must be a non-empty list")
        answer = r["answer"]
        if isinstance(answer, str):
            if answer not in r["choices"]:
                raise ValueError(f"{path}:{i + 1}: answer {answer!r} is not among the choices")
            answer = r["choices"].index(answer)
        if not isinstance(answer, int) or not 0 <= answer < len(r["choices"]):
            raise ValueError(f"{path}:{i + 1}: answer {r['answer']!r} is not a choice index or text")
        records.append({"context": r["context"], "choices": r["choices"], "answer": answer})
    return records


def multiple_choice(model, tokenizer: Tokenizer, path: str, mc_num: int = 32, batch_size: int = 16,
                    seed: int = 0) -> dict:
    records = read_multiple_choice(path)
    correct = 0
    for r in records:
        context = tokenizer.encode(r["context"])
        scores = [log_likelihood(model, context, tokenizer.encode(c), tokenizer.special.mask, mc_num, batch_size,
                                 seed=seed) for c in r["choices"]]
        correct += int(int(np.argmax(scores)) == r["answer"])
    return {"accuracy": correct / max(len(records), 1), "n": len(records)}
