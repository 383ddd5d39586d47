"""What the experiments share: training one small model with either objective, asking it, scoring.

- `train_model`: a model of the given shape from the seed's initial weights, trained by the
  project's plain single-process loop (llada_ds/train/plain.py) with the objective the trainer
  runs, LLaDA's pre-training loss ("diffusion") or the same network causal with next-token loss
  ("autoregressive"). AdamW, cosine schedule with warmup, clipping at 1: the same for both.
- `greedy`: left-to-right argmax decoding of the causal model; the diffusion model is asked with
  the LLaDA sampler (llada_ds/diffusion/sampler.py) by each experiment.
- `ar_log_likelihood`: the exact log-likelihood of continuations under the causal model (the
  diffusion model's is estimated by llada_ds/diffusion/likelihood.py).
- `exact_match`, `chance`, `training_flops`: the figures the tables print, covered by tests
  against plainly written references (tests/experiments/test_common.py).
- `format_table`: the plain-text tables the experiments print.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from llada_ds.config import ScheduleSection
from llada_ds.data.batch import MicroBatch
from llada_ds.diffusion import AutoregressiveObjective, NoiseConfig, Objective, PretrainObjective
from llada_ds.model import ModelConfig, build_model
from llada_ds.model.sizing import count, train_flops_per_token
from llada_ds.train.optim import param_groups
from llada_ds.train.plain import train_plain
from llada_ds.train.schedule import learning_rate

OBJECTIVES = ("diffusion", "autoregressive")


@dataclass(frozen=True)
class Optimisation:
    """The optimizer and schedule both objectives get."""
    steps: int
    lr: float
    warmup_steps: int
    weight_decay: float = 0.0
    final_lr_ratio: float = 0.1  # cosine decay to lr * this
    grad_clip: float = 1.0  # the 1/t weights of the diffusion loss make rare huge gradients


def make_objective(kind: str, mask_id: int, vocab_size: int, seed: int) -> Objective:
    if kind not in OBJECTIVES:
        raise ValueError(f"objective {kind!r} is not one of {', '.join(OBJECTIVES)}")
    if kind == "diffusion":
        return PretrainObjective(mask_id, vocab_size, NoiseConfig(seed=seed))
    return AutoregressiveObjective(mask_id, vocab_size)


@dataclass
class Trained:
    model: torch.nn.Module
    losses: list[float]
    seconds: float  # wall time of the training
    cpu_seconds: float  # CPU time of this process meanwhile (steadier than wall time on a shared machine)

    def final_loss(self) -> float:
        """Mean of the last 10% of the training losses (single steps are noisy)."""
        tail = self.losses[-max(len(self.losses) // 10, 1):]
        return sum(tail) / len(tail)


def train_model(kind: str, model_cfg: ModelConfig, batches: Callable[[int], list[MicroBatch]], opt: Optimisation,
                mask_id: int, seed: int, log: Callable[[str], None] = print, label: str = "",
                after_step: Optional[Callable[[int, torch.nn.Module], None]] = None) -> Trained:
    """One model, from the seed's initial weights (the same for both objectives), trained on
    batches(step) for opt.steps steps. Global sample indices in the micro-batches key the noise.
    after_step(steps done, model) may look at the model between steps (e.g. a validation); its
    time is not counted as training time."""
    objective = make_objective(kind, mask_id, model_cfg.vocab_size, seed)
    torch.manual_seed(seed)
    model = build_model(model_cfg).train()
    optimizer = torch.optim.AdamW(param_groups(model, opt.weight_decay), lr=opt.lr, betas=(0.9, 0.95))
    schedule = ScheduleSection(kind="cosine", warmup_steps=opt.warmup_steps, final_lr=opt.lr * opt.final_lr_ratio)
    every = max(opt.steps // 5, 1)
    seen: list[float] = []
    outside = [0.0, 0.0]  # wall and CPU seconds spent in after_step

    def report(step: int, loss: float, _stats) -> None:
        seen.append(loss)
        if (step + 1) % every == 0:
            log(f"  {label or kind:24s} step {step + 1:6d}  loss {sum(seen[-every:]) / every:.4f}")
        if after_step is not None:
            wall, cpu = time.perf_counter(), time.process_time()
            after_step(step + 1, model)
            model.train()
            outside[0] += time.perf_counter() - wall
            outside[1] += time.process_time() - cpu

    start, cpu_start = time.perf_counter(), time.process_time()
    losses = train_plain(model, objective, batches, opt.steps, optimizer,
                         lambda step: learning_rate(step, opt.steps, opt.lr, schedule), opt.grad_clip, on_step=report)
    return Trained(model.eval(), losses, time.perf_counter() - start - outside[0],
                   time.process_time() - cpu_start - outside[1])


@torch.no_grad()
def greedy(model: torch.nn.Module, prompts: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Left-to-right argmax decoding with the causal model: (b, n_tokens) new tokens."""
    x = prompts
    for _ in range(n_tokens):
        x = torch.cat([x, model(x, causal=True)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[:, prompts.shape[1]:]


@torch.no_grad()
def ar_log_likelihood(model: torch.nn.Module, prompt: Sequence[int],
                      continuations: Sequence[Sequence[int]]) -> list[float]:
    """log p(continuation | prompt) under the causal model, exactly (one forward per length).

    The prompt must not be empty: the first continuation token is predicted from its last token."""
    if not prompt:
        raise ValueError("the prompt is empty: a causal model predicts a token only from the ones before it")
    out = [0.0] * len(continuations)
    for length in sorted({len(c) for c in continuations}):
        idx = [i for i, c in enumerate(continuations) if len(c) == length]
        x = torch.tensor([list(prompt) + list(continuations[i]) for i in idx])
        logp = F.log_softmax(model(x, causal=True)[:, len(prompt) - 1 : -1].float(), dim=-1)
        picked = logp.gather(-1, x[:, len(prompt):, None]).squeeze(-1).sum(-1)
        for i, v in zip(idx, picked.tolist()):
            out[i] = v
    return out


def exact_match(got: Sequence, expected: Sequence) -> float:
    """Share of answers equal to the expected one."""
    if len(got) != len(expected):
        raise ValueError(f"{len(got)} answers for {len(expected)} questions")
    if not expected:
        raise ValueError("no questions")
    return sum(g == e for g, e in zip(got, expected)) / len(expected)


def chance(n_candidates: int) -> float:
    """Accuracy of a uniform guess among n equally likely candidates."""
    if n_candidates < 1:
        raise ValueError(f"a guess needs at least one candidate, got {n_candidates}")
    return 1.0 / n_candidates


def training_flops(model_cfg: ModelConfig, seq_len: int, tokens: int) -> float:
    """Training FLOPs by the project's convention (model/sizing.py): per token 6 x the matmul
    parameters (embedding lookups excluded, the output head included) plus 12 x layers x d_model x
    seq_len for attention, counted in full for both objectives (the causal model could skip half
    of it; the diffusion model runs its head on masked positions only)."""
    return train_flops_per_token(model_cfg, seq_len, count(model_cfg)) * tokens


def format_table(header: Sequence[str], rows: Sequence[Sequence], title: str = "", left: int = 1) -> str:
    """Cells as given, columns padded to their widest cell: the first `left` columns left-aligned
    (labels), the others right-aligned (figures)."""
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[j]) for r in cells) for j in range(len(header))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if j < left else c.rjust(w) for j, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [title] if title else []
    out += [line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]]
    return "\n".join(out)
