"""The reversal curse (Berglund et al. 2023): a diffusion model and an autoregressive one, all else equal.

Seeded synthetic facts about made-up people, "A's parent is B.", are the whole training corpus.
As in Berglund et al.'s design, a share of the pairs ("both" pairs) is also stated in reverse,
"B's child is A.", so the models can learn the reverse template; the other pairs ("test" pairs)
are only ever stated forward. Then, for each pair, the models are asked
    forward:  "A's parent is" -> B      (seen in training)
    reverse:  "B's child is"  -> A      (for test pairs: never seen in that direction)
Two models of the same shape start from the same initial weights and see the same batches in the
same order with the same optimizer; only the objective differs:
    diffusion      LLaDA's pre-training objective (bidirectional), answered with the LLaDA sampler:
                   the prompt, then masks up to the training length, one token revealed per step
    autoregressive next-token loss with a causal mask (objective.kind=ar), answered greedily left
                   to right
Both objectives are the ones the trainer runs (llada_ds.diffusion.objectives), trained by the
project's plain single-process loop (llada_ds/train/plain.py).

Text goes through the project's own sentencepiece tokenizer, trained here on the training
statements only (nothing is downloaded). Each statement is encoded after a space: the tokenizer
gives a word other pieces at the start of a text than after a space, and a name must be the same
pieces whether it is the subject or the object of a statement, or the reverse question would also
test a change of spelling. Every row is BOS, the statement, then EOS padding to a fixed length
(the same canvas length the sampler is given at evaluation).

Run: `python experiments/reversal.py [--facts N --steps S --preset P --seed K ...]`.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

import torch

from llada_ds.config import ScheduleSection
from llada_ds.data.batch import MicroBatch
from llada_ds.data.tokenizer import Tokenizer, TokenizerError, train_tokenizer
from llada_ds.diffusion import AutoregressiveObjective, NoiseConfig, PretrainObjective
from llada_ds.diffusion.sampler import SamplerConfig, SpecialTokens, generate
from llada_ds.errors import ConfigError
from llada_ds.model import ModelConfig, build_model, count_parameters, get_preset
from llada_ds.model.config import PRESETS
from llada_ds.train.optim import param_groups
from llada_ds.train.plain import train_plain
from llada_ds.train.schedule import learning_rate

FORWARD = "{child}'s parent is {parent}."
REVERSE = "{parent}'s child is {child}."
OBJECTIVES = ("diffusion", "autoregressive")
# Made-up names: two consonant-vowel syllables and an optional final consonant ("Kalor", "Vemi").
CONSONANTS, VOWELS, FINALS = "bdfgklmnprstvz", "aeiou", ("", "n", "r", "s")
NAME_CAPACITY = (len(CONSONANTS) * len(VOWELS)) ** 2 * len(FINALS)
SIZE_KEYS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden_size")
HALF_TINY = {"d_model": 128, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden_size": 344}


@dataclass(frozen=True)
class ReversalSettings:
    facts: int = 100  # (child, parent) pairs, two distinct names each
    both_fraction: float = 0.5  # share of the pairs also stated in reverse during training
    steps: int = 1200  # optimizer steps per model
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 0.0  # memorising facts: no decay (as sft-tiny)
    preset: str = "tiny"
    # The default shape is the tiny preset at half width: it memorises the default facts in fewer
    # steps than the full tiny model and runs ~2.7x faster per step on a CPU (measured), so the
    # default experiment takes minutes. Both objectives always get the same shape.
    model_overrides: dict = field(default_factory=lambda: dict(HALF_TINY))
    vocab_size: int = 512  # of the tokenizer trained here (and of the models)
    seed: int = 0

    def validate(self) -> None:
        """Refuse impossible settings up front, naming the flag."""
        if not isinstance(self.facts, int) or self.facts < 2:
            raise ValueError(f"--facts must be at least 2 (one pair shown both ways, one forward only), "
                             f"got {self.facts}")
        if 2 * self.facts > NAME_CAPACITY // 4:  # rejection sampling of distinct names stays fast
            raise ValueError(f"--facts {self.facts} needs {2 * self.facts} distinct made-up names; at most "
                             f"{NAME_CAPACITY // 8} facts are supported")
        if not 0 < self.both_fraction < 1:
            raise ValueError(f"--both-fraction must be strictly between 0 and 1, got {self.both_fraction}")
        n_both = self.n_both
        if n_both < 1 or n_both >= self.facts:
            raise ValueError(f"--both-fraction {self.both_fraction} of {self.facts} facts leaves {n_both} pair(s) "
                             f"shown both ways and {self.facts - n_both} forward only; each needs at least one")
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if not self.lr > 0:
            raise ValueError(f"--lr must be positive, got {self.lr}")
        if self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("--warmup-steps and --weight-decay must be >= 0")
        if self.preset not in PRESETS:
            raise ValueError(f"--preset {self.preset!r} is not one of {', '.join(PRESETS)}")
        self.model_config(self.vocab_size, 64)  # a bad shape fails now, not after the tokenizer is trained

    def model_config(self, vocab_size: int, max_seq_len: int) -> ModelConfig:
        unknown = sorted(set(self.model_overrides) - set(SIZE_KEYS))
        if unknown:
            raise ValueError(f"model size: unknown key(s) {', '.join(unknown)}; known: {', '.join(SIZE_KEYS)}")
        try:
            return get_preset(self.preset).replace(**{**self.model_overrides, "vocab_size": vocab_size,
                                                     "max_seq_len": max_seq_len})
        except ConfigError as exc:
            raise ValueError(f"model size: {exc}") from None

    @property
    def n_both(self) -> int:
        return round(self.facts * self.both_fraction)


@dataclass(frozen=True)
class Fact:
    child: str
    parent: str
    both: bool  # also stated in reverse during training

    def statement(self, direction: str) -> str:
        return (FORWARD if direction == "forward" else REVERSE).format(child=self.child, parent=self.parent)

    def query(self, direction: str) -> tuple[str, str]:
        """(prompt, expected answer): the statement cut before its final name."""
        if direction == "forward":
            return f"{self.child}'s parent is", self.parent
        return f"{self.parent}'s child is", self.child


def make_names(n: int, rng: random.Random) -> list[str]:
    names: list[str] = []
    seen: set[str] = set()
    while len(names) < n:
        name = "".join(rng.choice(CONSONANTS) + rng.choice(VOWELS) for _ in range(2)) + rng.choice(FINALS)
        if name not in seen:
            seen.add(name)
            names.append(name.capitalize())
    return names


def make_facts(settings: ReversalSettings) -> list[Fact]:
    """Seeded pairs with all names distinct, so each question has exactly one right answer."""
    rng = random.Random(settings.seed)
    names = make_names(2 * settings.facts, rng)
    return [Fact(names[2 * i], names[2 * i + 1], both=i < settings.n_both) for i in range(settings.facts)]


def training_statements(facts: Sequence[Fact]) -> list[str]:
    """Every fact forward; the "both" pairs in reverse too. Test pairs are never stated in reverse."""
    return [f.statement(d) for f in facts for d in (("forward", "reverse") if f.both else ("forward",))]


def encode(tok: Tokenizer, text: str) -> list[int]:
    # After a space: a name is then the same pieces wherever it stands (see the module docstring).
    return tok.encode(" " + text)


def encode_rows(tok: Tokenizer, statements: Sequence[str], length: int) -> torch.Tensor:
    """(n, length) rows: BOS, the statement, EOS padding (trained on, so the models learn to stop)."""
    rows = torch.full((len(statements), length), tok.special.eos, dtype=torch.long)
    for i, s in enumerate(statements):
        ids = [tok.special.bos] + encode(tok, s)
        if len(ids) >= length:
            raise ValueError(f"statement {s!r} has {len(ids)} tokens with BOS, no room for EOS in {length}")
        rows[i, : len(ids)] = torch.tensor(ids)
    return rows


def batch_order(n_rows: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """(steps, batch_size) row indices: seeded epoch permutations, identical for both objectives."""
    gen = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    perms = [torch.randperm(n_rows, generator=gen) for _ in range(-(-needed // n_rows))]
    return torch.cat(perms)[:needed].view(steps, batch_size)


@dataclass
class Trained:
    model: torch.nn.Module
    losses: list[float]
    seconds: float


def train_model(objective: str, rows: torch.Tensor, order: torch.Tensor, model_cfg: ModelConfig,
                settings: ReversalSettings, mask_id: int, log: Callable[[str], None]) -> Trained:
    """One model, from the seed's initial weights, through the given batches with one objective."""
    if objective not in OBJECTIVES:
        raise ValueError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    torch.manual_seed(settings.seed)  # the same initial weights for both objectives
    model = build_model(model_cfg).train()
    opt = torch.optim.AdamW(param_groups(model, settings.weight_decay), lr=settings.lr, betas=(0.9, 0.95))
    schedule = ScheduleSection(kind="cosine", warmup_steps=settings.warmup_steps, final_lr=settings.lr / 10)
    # The pre-training objective as the trainer runs it; AR: the same network, causal, next token.
    obj = (PretrainObjective(mask_id, model_cfg.vocab_size, NoiseConfig(seed=settings.seed)) if objective == "diffusion"
           else AutoregressiveObjective(mask_id, model_cfg.vocab_size))
    every = max(settings.steps // 5, 1)

    def batches(step: int) -> list[MicroBatch]:
        # Global sample indices key the noise, as in the trainer.
        return [MicroBatch(rows[order[step]], list(range(step * settings.batch_size, (step + 1) * settings.batch_size)))]

    seen: list[float] = []

    def report(step: int, loss: float, _stats) -> None:
        seen.append(loss)
        if (step + 1) % every == 0:
            log(f"  {objective:14s} step {step + 1:5d}  loss {sum(seen[-every:]) / every:.4f}")

    start = time.perf_counter()
    # Clipping at 1: the 1/t weights make rare huge gradients.
    losses = train_plain(model, obj, batches, settings.steps, opt,
                         lambda step: learning_rate(step, settings.steps, settings.lr, schedule), 1.0, on_step=report)
    return Trained(model.eval(), losses, time.perf_counter() - start)


@torch.no_grad()
def greedy(model: torch.nn.Module, prompts: torch.Tensor, n_tokens: int) -> torch.Tensor:
    """Left-to-right argmax decoding with the causal model: (b, n_tokens) new tokens."""
    x = prompts
    for _ in range(n_tokens):
        x = torch.cat([x, model(x, causal=True)[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x[:, prompts.shape[1]:]


def answer_text(tok: Tokenizer, ids: Sequence[int]) -> str:
    """The generated name: text before the first EOS and the statement's full stop."""
    ids = list(ids)
    if tok.special.eos in ids:
        ids = ids[: ids.index(tok.special.eos)]
    return tok.decode(ids).split(".")[0].strip()


def answer(objective: str, model: torch.nn.Module, tok: Tokenizer, prompts: Sequence[str],
           row_len: int) -> list[str]:
    """Each prompt's answer. Prompts of one token length are decoded together without padding,
    on a canvas of exactly the training row length."""
    encoded = [[tok.special.bos] + encode(tok, p) for p in prompts]
    out: list[str] = [""] * len(prompts)
    tokens = SpecialTokens.of(tok.special)
    for length in sorted({len(e) for e in encoded}):
        idx = [i for i, e in enumerate(encoded) if len(e) == length]
        batch = torch.tensor([encoded[i] for i in idx])
        n = row_len - length
        if objective == "diffusion":  # one token revealed per step, lowest-confidence remasking, T = 0
            gen = generate(model, batch, SamplerConfig(gen_length=n, steps=n, block_length=n), tokens)
        else:
            gen = greedy(model, batch, n)
        for i, row in zip(idx, gen.tolist()):
            out[i] = answer_text(tok, row)
    return out


def accuracy(objective: str, model: torch.nn.Module, tok: Tokenizer, facts: Sequence[Fact], direction: str,
             row_len: int) -> float:
    prompts, expected = zip(*(f.query(direction) for f in facts))
    got = answer(objective, model, tok, prompts, row_len)
    return sum(g == e for g, e in zip(got, expected)) / len(facts)


@dataclass
class ReversalResult:
    settings: dict
    # accuracy[objective][f"{split}_{direction}"], split test (forward only in training) or both
    accuracy: dict
    final_loss: dict  # mean of the last 10% of training losses, per objective
    seconds: dict  # training time per objective
    parameters: int
    row_len: int
    vocab_size: int
    n_train_statements: int
    names: int


def run_reversal(settings: ReversalSettings, workdir: Optional[Path] = None,
                 log: Callable[[str], None] = print) -> ReversalResult:
    """Train both models and measure them; the tokenizer is kept in workdir/tokenizer if given."""
    settings.validate()
    facts = make_facts(settings)
    statements = training_statements(facts)
    with tempfile.TemporaryDirectory() as tmp:
        tok_dir = Path(workdir or tmp) / "tokenizer"
        # Trained on the training statements only: the test pairs' reverse sentences are never seen.
        try:
            tok = train_tokenizer((" " + s for s in statements), tok_dir, vocab_size=settings.vocab_size, threads=1)
        except TokenizerError as exc:  # e.g. more pieces asked than a few statements can give
            raise ValueError(f"--vocab-size {settings.vocab_size} with {len(statements)} training statements: "
                             f"{exc}") from None
    # Long enough for every statement either way round, plus at least one EOS.
    row_len = 2 + max(len(encode(tok, f.statement(d))) for f in facts for d in ("forward", "reverse"))
    model_cfg = settings.model_config(tok.vocab_size, row_len)
    rows = encode_rows(tok, statements, row_len)
    order = batch_order(len(rows), settings.batch_size, settings.steps, settings.seed)
    n_params = count_parameters(build_model(model_cfg, "meta"))
    log(f"{settings.facts} facts ({settings.n_both} stated both ways, {settings.facts - settings.n_both} forward "
        f"only), {len(rows)} training statements of {row_len} tokens, tokenizer of {tok.vocab_size} pieces; "
        f"{settings.preset} model {n_params:,} parameters; {settings.steps} steps of {settings.batch_size}")
    test = [f for f in facts if not f.both]
    both = [f for f in facts if f.both]
    acc: dict = {}
    final: dict = {}
    seconds: dict = {}
    for objective in OBJECTIVES:
        trained = train_model(objective, rows, order, model_cfg, settings, tok.special.mask, log)
        tail = trained.losses[-max(len(trained.losses) // 10, 1):]
        final[objective], seconds[objective] = sum(tail) / len(tail), trained.seconds
        acc[objective] = {f"{split}_{d}": accuracy(objective, trained.model, tok, pairs, d, row_len)
                          for split, pairs in (("test", test), ("both", both)) for d in ("forward", "reverse")}
    settings_dict = asdict(settings)
    return ReversalResult(settings_dict, acc, final, seconds, n_params, row_len, tok.vocab_size, len(rows),
                          2 * settings.facts)


def format_table(result: ReversalResult) -> str:
    """The four test-pair figures side by side, the both-ways pairs for reference, and the settings."""
    s = result.settings
    n_test = s["facts"] - round(s["facts"] * s["both_fraction"])
    lines = [
        f"reversal curse: {s['facts']} facts, {n_test} test pairs stated forward only; chance ~1/{result.names}",
        f"{'model':15s} {'forward':>8s} {'reverse':>8s}   {'both-ways pairs fwd / rev':>25s}   "
        f"{'final loss':>10s} {'train s':>8s}",
    ]
    for objective in OBJECTIVES:
        a = result.accuracy[objective]
        lines.append(f"{objective:15s} {a['test_forward']:8.3f} {a['test_reverse']:8.3f}   "
                     f"{a['both_forward']:12.3f} / {a['both_reverse']:<10.3f}   "
                     f"{result.final_loss[objective]:10.4f} {result.seconds[objective]:8.1f}")
    lines.append(f"settings: preset {s['preset']} {s['model_overrides'] or ''} ({result.parameters:,} parameters), "
                 f"tokenizer {result.vocab_size} pieces, rows of {result.row_len} tokens, "
                 f"{result.n_train_statements} training statements, steps {s['steps']}, batch {s['batch_size']}, "
                 f"lr {s['lr']:g} (cosine, warmup {s['warmup_steps']}), weight decay {s['weight_decay']:g}, "
                 f"both-fraction {s['both_fraction']:g}, seed {s['seed']}")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ReversalSettings()
    p.add_argument("--facts", type=int, default=d.facts, help="(child, parent) pairs")
    p.add_argument("--both-fraction", type=float, default=d.both_fraction,
                   help="share of pairs also stated in reverse in training (teaches the reverse template)")
    p.add_argument("--steps", type=int, default=d.steps, help="optimizer steps per model")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--preset", default=None, choices=sorted(PRESETS),
                   help="model shape (default: tiny at half width, "
                        + ", ".join(f"{k} {v}" for k, v in HALF_TINY.items())
                        + "; a named preset keeps its own shape); the vocabulary is always the tokenizer's")
    for key in SIZE_KEYS:
        p.add_argument(f"--{key.replace('_', '-')}", type=int, default=None, help=f"override the shape's {key}")
    p.add_argument("--vocab-size", type=int, default=d.vocab_size, help="pieces of the tokenizer trained here")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--json", default=None, help="also write the results to this file")


def settings_from_args(args: argparse.Namespace) -> ReversalSettings:
    # No --preset: the default half-width tiny shape; a named preset: its own shape. Size flags
    # override either.
    base = dict(HALF_TINY) if args.preset is None else {}
    overrides = {**base, **{k: getattr(args, k) for k in SIZE_KEYS if getattr(args, k) is not None}}
    return ReversalSettings(args.facts, args.both_fraction, args.steps, args.batch_size, args.lr, args.warmup_steps,
                            args.weight_decay, args.preset or "tiny", overrides, args.vocab_size, args.seed)


def run_from_args(args: argparse.Namespace, log: Callable[[str], None] = print) -> ReversalResult:
    result = run_reversal(settings_from_args(args), log=log)
    log(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=1) + "\n")
    return result


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
