"""The reversal curse (Berglund et al. 2023): a diffusion model and an autoregressive one, all else equal.

Seeded synthetic facts about made-up people, "A's parent is B.", are the whole training corpus.
As in Berglund et al.'s design, a share of the pairs ("both" pairs) is also stated in reverse,
"B's child is A.", so the models can learn the reverse template; the other pairs ("test" pairs)
are only ever stated forward. Then, for each pair, the models are asked
    forward            "A's parent is" -> B                 (the trained statement, continued)
    reverse, infilling "[M]...[M]'s parent is B." -> A      (the trained statement, its subject
                       masked: text that came *earlier* in the trained sequence, LLaDA's reversal
                       question; the masked span is as long as the longest name plus BOS, so the
                       name's length is not given away, and the model fills what the name does
                       not need with EOS, as the sampler fills an answer's tail)
    reverse, template  "B's child is" -> A                  (for test pairs: a sentence never seen)
    reverse, scoring   every name X ranked by the likelihood of "X's parent is B." (AR only)
Two models of the same shape start from the same initial weights and see the same batches in the
same order with the same optimizer; only the objective differs:
    diffusion      LLaDA's pre-training objective (bidirectional), answered with the LLaDA sampler
                   (one token revealed per step, low-confidence remasking, temperature 0): the
                   prompt, then masks up to the training length; for infilling, sampler.infill
                   on the canvas with the masked subject
    autoregressive next-token loss with a causal mask, answered greedily left to right. It cannot
                   infill: its table cell says so. Ranking every name by the AR likelihood of the
                   whole statement is a workaround that needs the list of candidates and is
                   labelled scoring, not generation.
Both objectives are the ones the trainer runs (llada_ds.diffusion.objectives), trained by the
project's plain single-process loop (llada_ds/train/plain.py), through experiments/common.py.

Text goes through the project's own sentencepiece tokenizer, trained here on the training
statements only (nothing is downloaded). Each statement is encoded after a space: the tokenizer
gives a word other pieces at the start of a text than after a space, and a name must be the same
pieces whether it is the subject or the object of a statement. Every training row is a run of r
EOS (what ends a preceding document in a packed pre-training stream; r = 0..longest name, each
statement at every r), BOS, the statement, then EOS padding to a fixed length. The EOS run before
BOS is what lets a masked span before the statement stand for a name of unknown length. The
questions are asked on a canvas of that same length.

Run: `python experiments/reversal.py [--seeds 0 1 2 --facts N --steps S --preset P ...]` prints one
table, each seed and the mean over seeds.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

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
    greedy,
    train_model,
)
from llada_ds.data.batch import MicroBatch
from llada_ds.data.tokenizer import Tokenizer, TokenizerError, train_tokenizer
from llada_ds.diffusion.sampler import SamplerConfig, SpecialTokens, generate, infill
from llada_ds.errors import ConfigError
from llada_ds.model import ModelConfig, build_model, count_parameters, get_preset
from llada_ds.model.config import PRESETS

FORWARD = "{child}'s parent is {parent}."
REVERSE = "{parent}'s child is {child}."
# Made-up names: two consonant-vowel syllables and an optional final consonant ("Kalor", "Vemi").
CONSONANTS, VOWELS, FINALS = "bdfgklmnprstvz", "aeiou", ("", "n", "r", "s")
NAME_CAPACITY = (len(CONSONANTS) * len(VOWELS)) ** 2 * len(FINALS)
SIZE_KEYS = ("d_model", "n_layers", "n_heads", "n_kv_heads", "ffn_hidden_size")
HALF_TINY = {"d_model": 128, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden_size": 344}
# The questions: (split of pairs, how asked). Test pairs were only ever stated forward.
QUESTIONS = ("forward", "infill", "template", "scoring")
NOT_ASKED = {("autoregressive", "infill"): "cannot infill"}  # cells with no figure, and why


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


@dataclass(frozen=True)
class Layout:
    """Where things stand in a row: `lead` EOS at most before BOS, rows of `length` tokens, and the
    masked span of an infilling question (`slot` = BOS + the longest name)."""
    lead: int
    length: int
    slot: int


def layout_of(tok: Tokenizer, facts: Sequence[Fact]) -> Layout:
    longest_name = max(len(encode(tok, n)) for f in facts for n in (f.child, f.parent))
    longest = max(len(encode(tok, f.statement(d))) for f in facts for d in ("forward", "reverse"))
    # Leads 0..longest name cover every EOS run an infilling canvas implies (slot - 1 - name length).
    return Layout(lead=longest_name, length=longest_name + 1 + longest + 1, slot=longest_name + 1)


def encode_rows(tok: Tokenizer, statements: Sequence[str], layout: Layout) -> torch.Tensor:
    """(n * (lead + 1), length) rows: each statement after every EOS run of 0..lead, BOS, the
    statement, EOS padding (trained on, so the models learn to stop)."""
    eos, bos = tok.special.eos, tok.special.bos
    rows = torch.full((len(statements) * (layout.lead + 1), layout.length), eos, dtype=torch.long)
    for i, s in enumerate(statements):
        ids = [bos] + encode(tok, s)
        if layout.lead + len(ids) >= layout.length:
            raise ValueError(f"statement {s!r} has {len(ids)} tokens with BOS, no room for EOS in {layout.length}")
        for r in range(layout.lead + 1):
            rows[i * (layout.lead + 1) + r, r : r + len(ids)] = torch.tensor(ids)
    return rows


def batch_order(n_rows: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """(steps, batch_size) row indices: seeded epoch permutations, identical for both objectives."""
    gen = torch.Generator().manual_seed(seed)
    needed = steps * batch_size
    perms = [torch.randperm(n_rows, generator=gen) for _ in range(-(-needed // n_rows))]
    return torch.cat(perms)[:needed].view(steps, batch_size)


def answer_text(tok: Tokenizer, ids: Sequence[int]) -> str:
    """The generated name: text before the first EOS and the statement's full stop."""
    ids = list(ids)
    if tok.special.eos in ids:
        ids = ids[: ids.index(tok.special.eos)]
    return tok.decode(ids).split(".")[0].strip()


def slot_text(tok: Tokenizer, ids: Sequence[int]) -> str:
    """The name an infilled span holds: the text after its last BOS, EOS dropped (the EOS run and
    BOS before a name are what the span should hold besides it)."""
    ids = list(ids)
    if tok.special.bos in ids:
        ids = ids[len(ids) - ids[::-1].index(tok.special.bos):]
    return tok.decode([i for i in ids if i != tok.special.eos]).strip()


def continue_prompts(objective: str, model: torch.nn.Module, tok: Tokenizer, prompts: Sequence[str],
                     length: int) -> list[str]:
    """Each prompt's answer. Prompts of one token length are decoded together without padding,
    on a canvas of exactly the training row length."""
    encoded = [[tok.special.bos] + encode(tok, p) for p in prompts]
    out: list[str] = [""] * len(prompts)
    tokens = SpecialTokens.of(tok.special)
    for n_prompt in sorted({len(e) for e in encoded}):
        idx = [i for i, e in enumerate(encoded) if len(e) == n_prompt]
        batch = torch.tensor([encoded[i] for i in idx])
        n = length - n_prompt
        if objective == "diffusion":  # one token revealed per step, lowest-confidence remasking, T = 0
            gen = generate(model, batch, SamplerConfig(gen_length=n, steps=n, block_length=n), tokens)
        else:
            gen = greedy(model, batch, n)
        for i, row in zip(idx, gen.tolist()):
            out[i] = answer_text(tok, row)
    return out


def infill_canvas(tok: Tokenizer, fact: Fact, layout: Layout) -> list[int]:
    """The forward statement with its subject masked: `slot` masks (where the EOS run, BOS and the
    name go), the rest of the statement, EOS to the row length."""
    full, subject = encode(tok, fact.statement("forward")), encode(tok, fact.child)
    if full[: len(subject)] != subject:
        raise ValueError(f"the tokenizer does not split {fact.statement('forward')!r} after the name {fact.child!r}")
    rest = full[len(subject):]
    ids = [tok.special.mask] * layout.slot + rest
    return ids + [tok.special.eos] * (layout.length - len(ids))


def infill_subjects(model: torch.nn.Module, tok: Tokenizer, facts: Sequence[Fact], layout: Layout) -> list[str]:
    """The diffusion model's subject for each forward statement, one masked position revealed per step."""
    canvases = torch.tensor([infill_canvas(tok, f, layout) for f in facts])
    filled = infill(model, canvases, SamplerConfig(steps=layout.slot), SpecialTokens.of(tok.special))
    return [slot_text(tok, row[: layout.slot]) for row in filled.tolist()]


def score_subjects(model: torch.nn.Module, tok: Tokenizer, facts: Sequence[Fact], names: Sequence[str]) -> list[str]:
    """For each fact, the name X that maximises the causal model's log p("X's parent is B." EOS | BOS):
    a ranking of the given candidates, not a generation."""
    out = []
    for f in facts:
        candidates = [encode(tok, FORWARD.format(child=x, parent=f.parent)) + [tok.special.eos] for x in names]
        scores = ar_log_likelihood(model, [tok.special.bos], candidates)
        out.append(names[max(range(len(names)), key=scores.__getitem__)])
    return out


def ask(objective: str, question: str, model: torch.nn.Module, tok: Tokenizer, facts: Sequence[Fact],
        layout: Layout, names: Sequence[str]) -> Optional[float]:
    """Exact-match accuracy of one kind of question on the given pairs (None: not asked)."""
    if (objective, question) in NOT_ASKED or (objective, question) == ("diffusion", "scoring"):
        return None
    if question == "forward":
        prompts, expected = zip(*(f.query("forward") for f in facts))
        return exact_match(continue_prompts(objective, model, tok, prompts, layout.length), expected)
    if question == "template":
        prompts, expected = zip(*(f.query("reverse") for f in facts))
        return exact_match(continue_prompts(objective, model, tok, prompts, layout.length), expected)
    expected = [f.child for f in facts]
    if question == "infill":
        return exact_match(infill_subjects(model, tok, facts, layout), expected)
    return exact_match(score_subjects(model, tok, facts, names), expected)


@dataclass
class SeedResult:
    seed: int
    # accuracy[objective][split][question]: split test (forward only in training) or both; None: not asked
    accuracy: dict
    final_loss: dict  # mean of the last 10% of training losses, per objective
    seconds: dict  # training wall time per objective
    cpu_seconds: dict  # training CPU time per objective
    parameters: int
    row_length: int
    slot: int
    vocab_size: int
    n_train_rows: int
    names: int


def run_seed(settings: ReversalSettings, log: Callable[[str], None] = print) -> SeedResult:
    """Train both models on one seed's facts and ask them every question."""
    settings.validate()
    facts = make_facts(settings)
    statements = training_statements(facts)
    with tempfile.TemporaryDirectory() as tmp:
        # Trained on the training statements only: the test pairs' reverse sentences are never seen.
        try:
            tok = train_tokenizer((" " + s for s in statements), Path(tmp) / "tokenizer",
                                  vocab_size=settings.vocab_size, threads=1)
        except TokenizerError as exc:  # e.g. more pieces asked than a few statements can give
            raise ValueError(f"--vocab-size {settings.vocab_size} with {len(statements)} training statements: "
                             f"{exc}") from None
    layout = layout_of(tok, facts)
    model_cfg = settings.model_config(tok.vocab_size, layout.length)
    rows = encode_rows(tok, statements, layout)
    order = batch_order(len(rows), settings.batch_size, settings.steps, settings.seed)
    n_params = count_parameters(build_model(model_cfg, "meta"))
    log(f"seed {settings.seed}: {settings.facts} facts ({settings.n_both} stated both ways, "
        f"{settings.facts - settings.n_both} forward only), {len(statements)} statements x {layout.lead + 1} "
        f"offsets = {len(rows)} rows of {layout.length} tokens, tokenizer of {tok.vocab_size} pieces; "
        f"{n_params:,} parameters; {settings.steps} steps of {settings.batch_size}")
    names = [n for f in facts for n in (f.child, f.parent)]
    splits = {"test": [f for f in facts if not f.both], "both": [f for f in facts if f.both]}
    opt = Optimisation(settings.steps, settings.lr, settings.warmup_steps, settings.weight_decay)
    b = settings.batch_size

    def batches(step: int) -> list[MicroBatch]:
        return [MicroBatch(rows[order[step]], list(range(step * b, (step + 1) * b)))]

    acc: dict = {}
    final: dict = {}
    seconds: dict = {}
    cpu: dict = {}
    for objective in OBJECTIVES:
        trained = train_model(objective, model_cfg, batches, opt, tok.special.mask, settings.seed, log)
        final[objective], seconds[objective], cpu[objective] = trained.final_loss(), trained.seconds, \
            trained.cpu_seconds
        acc[objective] = {split: {q: ask(objective, q, trained.model, tok, pairs, layout, names) for q in QUESTIONS}
                          for split, pairs in splits.items()}
    return SeedResult(settings.seed, acc, final, seconds, cpu, n_params, layout.length, layout.slot, tok.vocab_size,
                      len(rows), len(names))


@dataclass
class ReversalResult:
    settings: dict
    seeds: list  # of SeedResult
    chance: float  # a uniform guess among the names


def run_reversal(settings: ReversalSettings, seeds: Sequence[int],
                 log: Callable[[str], None] = print) -> ReversalResult:
    if not seeds:
        raise ValueError("--seeds needs at least one seed")
    results = [run_seed(replace(settings, seed=s), log) for s in seeds]
    return ReversalResult(asdict(settings), results, chance(2 * settings.facts))


def mean_accuracy(results: Sequence[SeedResult], objective: str, split: str, question: str) -> Optional[float]:
    values = [r.accuracy[objective][split][question] for r in results]
    return None if any(v is None for v in values) else sum(values) / len(values)


def _cell(value: Optional[float], objective: str, question: str) -> str:
    if value is not None:
        return f"{value:.2f}"
    return NOT_ASKED.get((objective, question), "-")


def _short(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_result(result: ReversalResult) -> str:
    """Test pairs: forward, reverse three ways; both-ways pairs for reference; per seed and the mean."""
    s, seeds = result.settings, result.seeds
    header = ["seed", "model", "forward", "rev: infill", "rev: template", "rev: scoring", "both-ways fwd/infill/tmpl",
              "final loss", "train s", "CPU s"]
    rows = []
    for r in seeds:
        for objective in OBJECTIVES:
            t, both = r.accuracy[objective]["test"], r.accuracy[objective]["both"]
            rows.append([r.seed, objective] + [_cell(t[q], objective, q) for q in QUESTIONS]
                        + ["/".join(_short(both[q]) for q in ("forward", "infill", "template")),
                           f"{r.final_loss[objective]:.4f}", f"{r.seconds[objective]:.0f}",
                           f"{r.cpu_seconds[objective]:.0f}"])
    if len(seeds) > 1:
        for objective in OBJECTIVES:
            means = {split: {q: mean_accuracy(seeds, objective, split, q) for q in QUESTIONS}
                     for split in ("test", "both")}
            rows.append(["mean", objective] + [_cell(means["test"][q], objective, q) for q in QUESTIONS]
                        + ["/".join(_short(means["both"][q]) for q in ("forward", "infill", "template")),
                           "", f"{sum(r.seconds[objective] for r in seeds) / len(seeds):.0f}",
                           f"{sum(r.cpu_seconds[objective] for r in seeds) / len(seeds):.0f}"])
    first = seeds[0]
    slots = sorted({r.slot for r in seeds})
    lengths = sorted({r.row_length for r in seeds})
    n_test = s["facts"] - round(s["facts"] * s["both_fraction"])
    title = (f"reversal curse: {s['facts']} facts per seed, accuracy on the {n_test} test pairs (stated forward "
             f"only in training); chance {result.chance:.3f} (1 of {first.names} names)")
    notes = [
        (f"forward: 'A's parent is' -> B; rev: infill: '[M]x{'-'.join(map(str, slots))}'s parent is B.' -> A by the "
         "LLaDA sampler "
         "(the AR model cannot infill); rev: template: 'B's child is' -> A; rev: scoring: the name X with the "
         "highest AR likelihood of 'X's parent is B.' among all names (a ranking of given candidates, not "
         "generation; not run for the diffusion model)"),
        (f"settings: preset {s['preset']} {s['model_overrides'] or ''} ({first.parameters:,} parameters), tokenizer "
        f"{first.vocab_size} pieces, rows of {'-'.join(map(str, lengths))} tokens ({first.n_train_rows} rows), steps "
        f"{s['steps']}, batch {s['batch_size']}, lr {s['lr']:g} (cosine, warmup {s['warmup_steps']}), weight decay "
        f"{s['weight_decay']:g}, both-fraction {s['both_fraction']:g}"),
        (f"training time, all seeds and both models: {sum(sum(r.seconds.values()) for r in seeds):.0f} s wall, "
         f"{sum(sum(r.cpu_seconds.values()) for r in seeds):.0f} s CPU"),
    ]
    return format_table(header, rows, title, left=2) + "\n" + "\n".join(notes)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ReversalSettings()
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2],
                   help="one run per seed (facts, tokenizer, initial weights, batches and noise all follow it)")
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
    p.add_argument("--json", default=None, help="also write the results to this file")


def settings_from_args(args: argparse.Namespace) -> ReversalSettings:
    # No --preset: the default half-width tiny shape; a named preset: its own shape. Size flags
    # override either.
    base = dict(HALF_TINY) if args.preset is None else {}
    overrides = {**base, **{k: getattr(args, k) for k in SIZE_KEYS if getattr(args, k) is not None}}
    return ReversalSettings(args.facts, args.both_fraction, args.steps, args.batch_size, args.lr, args.warmup_steps,
                            args.weight_decay, args.preset or "tiny", overrides, args.vocab_size, args.seeds[0])


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        result = run_reversal(settings_from_args(args), args.seeds)
    except ValueError as exc:
        parser.error(str(exc))
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
