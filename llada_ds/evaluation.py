"""Evaluation of a model: validation loss, multiple-choice accuracy, instruction exact match.

- `Evaluator`: the run's objective on fixed validation data with fixed noise (the evaluation step
  key, no random-length cut). The trainer runs it on every rank of a ZeRO-3 engine (each rank
  its share, summed with one all-reduce); `llada-ds eval` runs the same code in one process, so
  both print the same number for the same windows. For the diffusion objectives it is an upper
  bound on the negative log-likelihood (the ELBO), in nats per token; for the autoregressive
  baseline the exact next-token loss.
- `multiple_choice`: for each (context, choices, answer) record, the choice with the highest Monte
  Carlo conditional log-likelihood (diffusion/likelihood.py) wins; accuracy over the file.
- `instruction_exact_match`: for {prompt, answer} records, the sampler's answer to the chat-formatted
  prompt, cut at end-of-turn, compared with the expected one after stripping spaces.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import torch

from .data.batch import MicroBatch
from .data.chat import encode_chat
from .data.loader import validation_micro_batches
from .data.sft import META as SFT_META
from .data.sft import SFTData
from .data.shards import ShardSet
from .data.storage import open_storage
from .diffusion import NoiseConfig, Objective, make_objective
from .diffusion.likelihood import TOKEN_BUDGET, log_likelihoods
from .diffusion.noise import EVAL_STEP
from .diffusion.sampler import SamplerConfig, SpecialTokens, generate
from .errors import DataError
from .inference import LoadedModel, cut_at


class Evaluator:
    """Validation loss of `objective` (built with noise of no random-length cut) on fixed batches.

    batches: a callable giving this rank's validation micro-batches (the same on every call; see
    data.loader.validation_micro_batches and data.sft.SFTData.validation_micro_batches).
    all_reduce: sums a float64 tensor over ranks in place (None in a single process).
    """

    def __init__(self, objective: Objective, batches: Callable[[], Iterable[MicroBatch]],
                 device: torch.device | str = "cpu",
                 all_reduce: Optional[Callable[[torch.Tensor], None]] = None) -> None:
        if objective.noise.random_length_prob != 0:
            raise ValueError("validation noise must not cut sequences to a random length")
        self.objective, self.batches, self.device, self.all_reduce = objective, batches, device, all_reduce

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module) -> Optional[float]:
        """Mean loss per validation sequence, None when there is no full round of batches."""
        was_training = model.training
        model.eval()
        total = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss x sequences, sequences
        for mb in self.batches():
            loss, _ = self.objective.loss(model, mb.to(self.device), EVAL_STEP)
            n = len(mb.sample_indices)
            total += torch.stack([loss.detach().double() * n, torch.tensor(float(n), dtype=torch.float64,
                                                                            device=self.device)])
        if was_training:
            model.train()
        if self.all_reduce is not None:
            self.all_reduce(total)
        loss_sum, count = total.tolist()
        return loss_sum / count if count else None


def validation_noise(seed: int, eps: float) -> NoiseConfig:
    """The noise every validation uses: the run's seed and eps, never a random-length cut."""
    return NoiseConfig(seed, eps, random_length_prob=0.0)


def validation_of(loaded: LoadedModel, path: str, samples: int,
                  seq_len: Optional[int] = None) -> tuple[Evaluator, str, str]:
    """(evaluator, objective kind, what it reads) for a loaded model on a validation set, in one
    process: a shard set (the run's objective; pre-training for an SFT run or a Hugging Face folder)
    or an SFT cache (the SFT objective), with the run's noise and micro batch, so that it computes
    what the run's own validation computed on the same windows."""
    run = loaded.config or {}
    kind = run.get("objective", {}).get("kind", "pretrain")
    micro = max(1, min(run.get("train", {}).get("micro_batch", 8), samples))
    seq_len = seq_len or loaded.data.get("seq_len") or loaded.model.config.max_seq_len
    fingerprint = loaded.tokenizer.fingerprint
    if (Path(path) / SFT_META).is_file():
        kind, sft = "sft", SFTData(path, fingerprint, "header")
        batches = lambda: sft.validation_micro_batches(samples, micro, seq_len)  # noqa: E731
        what = f"up to {samples} SFT pairs"
    else:
        kind = "pretrain" if kind == "sft" else kind
        shards = ShardSet(open_storage(path), verify="header", tokenizer_fingerprint=fingerprint)
        batches = lambda: validation_micro_batches(shards, seq_len, micro, samples)  # noqa: E731
        what = f"up to {samples} windows of {seq_len}"
    objective = make_objective(kind, loaded.tokenizer.special.mask, loaded.model.config.vocab_size, loaded.noise())
    return Evaluator(objective, batches, next(loaded.model.parameters()).device), kind, what


def read_multiple_choice(path: str) -> list[dict]:
    records = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{i + 1}: not JSON ({exc})") from None
        if not isinstance(r, dict) or not {"context", "choices", "answer"} <= set(r):
            raise DataError(f"{path}:{i + 1}: needs keys context, choices, answer")
        if not isinstance(r["choices"], list) or not r["choices"]:
            raise DataError(f"{path}:{i + 1}: choices must be a non-empty list")
        answer = r["answer"]
        if isinstance(answer, str):
            if answer not in r["choices"]:
                raise DataError(f"{path}:{i + 1}: answer {answer!r} is not among the choices")
            answer = r["choices"].index(answer)
        if not isinstance(answer, int) or not 0 <= answer < len(r["choices"]):
            raise DataError(f"{path}:{i + 1}: answer {r['answer']!r} is not a choice index or text")
        records.append({"context": r["context"], "choices": r["choices"], "answer": answer})
    return records


def multiple_choice(model, tokenizer, questions: str | list[dict], mc_num: int = 32, batch_size: int = 16,
                    seed: int = 0, token_budget: int = TOKEN_BUDGET) -> dict:
    """Accuracy of picking the choice of highest estimated log-likelihood, on a jsonl file of
    questions (or its records, as read_multiple_choice returns them); all (context, choice) pairs
    are scored together, batched by length up to token_budget tokens per forward (each pair's
    estimate is what it would be alone, for the same seed)."""
    records = read_multiple_choice(questions) if isinstance(questions, (str, Path)) else questions
    pairs, owner = [], []
    for i, r in enumerate(records):
        context = tokenizer.encode(r["context"])
        pairs += [(context, tokenizer.encode(c)) for c in r["choices"]]
        owner += [i] * len(r["choices"])
    scores = log_likelihoods(model, pairs, tokenizer.special.mask, mc_num, batch_size, seed=seed,
                             token_budget=token_budget)
    by_record: list[list[float]] = [[] for _ in records]
    for i, score in zip(owner, scores):
        by_record[i].append(score)
    correct = sum(int(int(np.argmax(s)) == r["answer"]) for s, r in zip(by_record, records))
    return {"accuracy": correct / max(len(records), 1), "n": len(records)}


def read_instructions(path: str | Path, limit: Optional[int] = None) -> list[dict]:
    """{prompt, answer} records of a jsonl file (e.g. the held-out half of examples/instruct_task.py)."""
    records = []
    for i, line in enumerate(Path(path).read_text().splitlines()):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{i + 1}: not JSON ({exc})") from None
        if not isinstance(r, dict) or not isinstance(r.get("prompt"), str) or not isinstance(r.get("answer"), str):
            raise DataError(f"{path}:{i + 1}: needs text fields prompt and answer")
        records.append(r)
    return records[:limit]


def instruction_exact_match(model, tokenizer, instructions: str | Path | list[dict], sampler_cfg: SamplerConfig,
                            limit: Optional[int] = None, batch: int = 16) -> dict:
    """Share of instructions (a jsonl file, or its records) whose sampled answer equals the expected
    one after stripping spaces."""
    records = (read_instructions(instructions, limit) if isinstance(instructions, (str, Path))
               else instructions[:limit])
    sp = tokenizer.special
    tokens = SpecialTokens.of(sp)
    correct, examples = 0, []
    for i in range(0, len(records), batch):
        chunk = records[i : i + batch]
        prompts = [encode_chat(tokenizer, [{"role": "user", "content": r["prompt"]}], add_generation_prompt=True)
                   for r in chunk]
        for r, row in zip(chunk, generate(model, prompts, sampler_cfg, tokens).tolist()):
            answer = tokenizer.decode(cut_at(row, (sp.eot, sp.eos))).strip()
            correct += int(answer == r["answer"])
            if len(examples) < 3:
                examples.append((r["prompt"], r["answer"], answer))
    return {"exact_match": correct / max(len(records), 1), "n": len(records), "examples": examples}
