"""In-context learning: a diffusion model and an autoregressive one on mappings that exist only in context.

Every training sequence defines a fresh random mapping and then asks about it:
    BOS k1 v1 k2 v2 ... kn vn  ? kq vq  ? kq' vq' ...  EOS ...
n distinct keys drawn from K key tokens, each with a value drawn from V value tokens, then 1..Q
queries "? k v" of keys seen in that sequence. A mapping is never reused, so the value of a queried
key can only be found in the sequence itself: the models must learn to look it up in context. The
number of pairs n is uniform in 1..N, so the models see contexts of every length.

Two models of the same shape start from the same initial weights and see the same sequences in the
same order with the same optimizer; only the objective differs (experiments/common.py):
    diffusion      LLaDA's pre-training loss, asked with the LLaDA sampler: the prompt
                   "BOS k1 v1 ... kn vn ? kq", then masks to the training length, one token
                   revealed per step (low-confidence remasking, temperature 0); the answer is the
                   first token after the prompt
    autoregressive next-token loss with a causal mask, answered greedily
Both are asked, on fresh sequences never trained on, for each number of in-context pairs n: the
exact-match accuracy of the queried value, beside two baselines: chance (1/V, a value guessed
blind) and copy (guessing one of the n in-context values at random: the share of in-context values
equal to the answer, averaged), which a model that has learned the format but not the lookup
reaches.

The tokens are ids, not text: BOS 1, EOS 2 (padding), mask 3, '?' 4, then the K keys and V values.

Run: `python experiments/icl.py [--pairs 8 --keys 16 --values 16 --steps 4000 ...]` prints one
table, a row per number of in-context pairs.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

if __package__ in (None, ""):  # run as a script: the repository root makes `experiments` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experiments.common import OBJECTIVES, Optimisation, chance, exact_match, format_table, greedy, train_model
from llada_ds.data.batch import MicroBatch
from llada_ds.diffusion.sampler import SamplerConfig, SpecialTokens, generate
from llada_ds.model import ModelConfig
from llada_ds.model.sizing import count

BOS, EOS, MASK, QUERY = 1, 2, 3, 4
FIRST_KEY = 5
# The sampler's ids: no end-of-turn token in this vocabulary, so EOS stands in (no control uses it).
TOKENS = SpecialTokens(mask=MASK, pad=EOS, eos=EOS, eot=EOS)
STREAM_TRAIN, STREAM_EVAL = 0, 1


@dataclass(frozen=True)
class ICLSettings:
    pairs: int = 8  # most key -> value pairs in a training context (N)
    keys: int = 16  # K key tokens
    values: int = 16  # V value tokens
    queries: int = 4  # most queries per training sequence (Q)
    eval_pairs: tuple = (1, 2, 4, 8)  # numbers of in-context pairs asked about
    eval_sequences: int = 200  # per number of pairs
    steps: int = 4000
    batch_size: int = 64
    lr: float = 2e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    d_model: int = 128
    n_layers: int = 4
    n_heads: int = 4
    ffn_hidden_size: int = 344
    seed: int = 0

    def validate(self) -> None:
        for name in ("pairs", "keys", "values", "queries", "eval_sequences", "steps", "batch_size", "d_model",
                     "n_layers", "n_heads", "ffn_hidden_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value}")
        if self.pairs > self.keys:
            raise ValueError(f"--pairs {self.pairs} needs as many distinct keys, but --keys is {self.keys}")
        if not self.eval_pairs or any(not 1 <= n <= self.pairs for n in self.eval_pairs):
            raise ValueError(f"--eval-pairs {list(self.eval_pairs)} must lie in 1..--pairs {self.pairs}")
        if not self.lr > 0 or self.warmup_steps < 0 or self.weight_decay < 0:
            raise ValueError("--lr must be positive, --warmup-steps and --weight-decay >= 0")
        self.model_config()

    @property
    def vocab_size(self) -> int:
        return FIRST_KEY + self.keys + self.values

    @property
    def length(self) -> int:
        """Training row length: BOS, N pairs, Q queries of 3 tokens, at least one EOS."""
        return 1 + 2 * self.pairs + 3 * self.queries + 1

    def model_config(self) -> ModelConfig:
        try:
            return ModelConfig(vocab_size=self.vocab_size, d_model=self.d_model, n_layers=self.n_layers,
                               n_heads=self.n_heads, ffn_hidden_size=self.ffn_hidden_size, max_seq_len=self.length,
                               attention="sdpa")
        except ValueError as exc:
            raise ValueError(f"model size: {exc}") from None


def key_token(settings: ICLSettings, i: int) -> int:
    return FIRST_KEY + i


def value_token(settings: ICLSettings, i: int) -> int:
    return FIRST_KEY + settings.keys + i


@dataclass(frozen=True)
class Episode:
    """One sequence's mapping (key tokens -> value tokens, in context order) and its queries."""
    keys: tuple
    values: tuple
    queries: tuple  # key tokens asked, each one of `keys`

    def answer(self, key: int) -> int:
        return self.values[self.keys.index(key)]

    def context(self) -> list[int]:
        return [BOS] + [t for kv in zip(self.keys, self.values) for t in kv]

    def tokens(self, length: int) -> list[int]:
        """The full training sequence: context, every query with its answer, EOS padding."""
        ids = self.context() + [t for q in self.queries for t in (QUERY, q, self.answer(q))]
        if len(ids) >= length:
            raise ValueError(f"an episode of {len(ids)} tokens leaves no room for EOS in {length}")
        return ids + [EOS] * (length - len(ids))

    def prompt(self) -> list[int]:
        """The question about the first query: context, '?', the key (its value is the answer)."""
        return self.context() + [QUERY, self.queries[0]]


def make_episode(settings: ICLSettings, rng: np.random.Generator, n_pairs: Optional[int] = None,
                 n_queries: Optional[int] = None) -> Episode:
    """n_pairs distinct keys (uniform in 1..N if not given), values drawn independently, queries of
    seen keys drawn with replacement (1..Q of them if not given)."""
    n = n_pairs or int(rng.integers(1, settings.pairs + 1))
    q = n_queries or int(rng.integers(1, settings.queries + 1))
    keys = rng.choice(settings.keys, size=n, replace=False)
    values = rng.integers(0, settings.values, size=n)
    asked = rng.choice(n, size=q, replace=True)
    key_ids = tuple(key_token(settings, int(k)) for k in keys)
    return Episode(key_ids, tuple(value_token(settings, int(v)) for v in values),
                   tuple(key_ids[int(i)] for i in asked))


def training_batch(settings: ICLSettings, step: int) -> MicroBatch:
    """Step `step`'s sequences: a pure function of (seed, step), the same for both objectives."""
    rng = np.random.default_rng([settings.seed, STREAM_TRAIN, step])
    rows = [make_episode(settings, rng).tokens(settings.length) for _ in range(settings.batch_size)]
    b = settings.batch_size
    return MicroBatch(torch.tensor(rows), list(range(step * b, (step + 1) * b)))


def eval_episodes(settings: ICLSettings, n_pairs: int) -> list[Episode]:
    """Fresh episodes with n_pairs pairs and one query, from a stream training never draws."""
    rng = np.random.default_rng([settings.seed, STREAM_EVAL, n_pairs])
    return [make_episode(settings, rng, n_pairs, 1) for _ in range(settings.eval_sequences)]


def copy_baseline(episodes: Sequence[Episode]) -> float:
    """Expected accuracy of answering with one of the episode's in-context values picked uniformly."""
    return sum(sum(v == e.answer(e.queries[0]) for v in e.values) / len(e.values) for e in episodes) / len(episodes)


def answers(objective: str, model: torch.nn.Module, episodes: Sequence[Episode], length: int) -> list[int]:
    """The token each model gives right after each prompt (prompts of one length go together)."""
    prompts = torch.tensor([e.prompt() for e in episodes])
    n = length - prompts.shape[1]
    if objective == "diffusion":
        out = generate(model, prompts, SamplerConfig(gen_length=n, steps=n), TOKENS)
    else:
        out = greedy(model, prompts, 1)
    return out[:, 0].tolist()


def accuracy_by_pairs(objective: str, model: torch.nn.Module, episodes: dict, length: int) -> dict:
    """{str(n_pairs): exact-match accuracy on that number's episodes}."""
    return {str(n): exact_match(answers(objective, model, eps, length), [e.answer(e.queries[0]) for e in eps])
            for n, eps in episodes.items()}


@dataclass
class ICLResult:
    settings: dict
    parameters: int
    # accuracy[objective][str(n_pairs)] after training; curve[objective][fraction][str(n_pairs)] during
    accuracy: dict
    curve: dict
    copy: dict  # str(n_pairs) -> copy baseline
    chance: float
    final_loss: dict
    seconds: dict
    cpu_seconds: dict


def run_icl(settings: ICLSettings, log: Callable[[str], None] = print) -> ICLResult:
    settings.validate()
    cfg = settings.model_config()
    params = count(cfg).total
    log(f"{params:,} parameters, vocabulary {settings.vocab_size}, rows of {settings.length} tokens; "
        f"{settings.steps} steps of {settings.batch_size}")
    opt = Optimisation(settings.steps, settings.lr, settings.warmup_steps, settings.weight_decay)
    episodes = {n: eval_episodes(settings, n) for n in settings.eval_pairs}
    checkpoints = {settings.steps * q // 4: str(q / 4) for q in (1, 2, 3)}
    acc, curve, final, seconds, cpu = {}, {}, {}, {}, {}
    for objective in OBJECTIVES:
        curve[objective] = {}

        def after_step(done: int, model: torch.nn.Module, objective: str = objective) -> None:
            if done in checkpoints:  # the same questions during training: when does the lookup appear?
                curve[objective][checkpoints[done]] = accuracy_by_pairs(objective, model, episodes, settings.length)

        trained = train_model(objective, cfg, lambda step: [training_batch(settings, step)], opt, MASK,
                              settings.seed, log, after_step=after_step)
        final[objective], seconds[objective], cpu[objective] = trained.final_loss(), trained.seconds, \
            trained.cpu_seconds
        acc[objective] = accuracy_by_pairs(objective, trained.model, episodes, settings.length)
    return ICLResult(asdict(settings), params, acc, curve, {str(n): copy_baseline(e) for n, e in episodes.items()},
                     chance(settings.values), final, seconds, cpu)


def format_result(result: ICLResult) -> str:
    s = result.settings
    header = ["in-context pairs", "diffusion", "autoregressive", "copy baseline", "chance",
              "diffusion at 1/4, 1/2, 3/4", "AR at 1/4, 1/2, 3/4"]

    def during(objective: str, n: str) -> str:
        c = result.curve[objective]
        return " / ".join(f"{c[q][n]:.2f}" if q in c else "-" for q in ("0.25", "0.5", "0.75"))

    rows = [[n, f"{result.accuracy['diffusion'][n]:.3f}", f"{result.accuracy['autoregressive'][n]:.3f}",
             f"{result.copy[n]:.3f}", f"{result.chance:.3f}", during("diffusion", n), during("autoregressive", n)]
            for n in result.accuracy["diffusion"]]
    title = (f"in-context learning: accuracy of the queried value, {s['eval_sequences']} fresh sequences per row "
             f"(keys {s['keys']}, values {s['values']}, up to {s['pairs']} pairs in training)")
    notes = [
        "diffusion / AR at 1/4, 1/2, 3/4: the same accuracy during training, after that share of the steps",
        "training: " + ", ".join(f"{o} final loss {result.final_loss[o]:.4f}, {result.seconds[o]:.0f} s "
                                 f"({result.cpu_seconds[o]:.0f} CPU s)" for o in OBJECTIVES),
        (f"settings: d_model {s['d_model']}, {s['n_layers']} layers, {s['n_heads']} heads, FFN {s['ffn_hidden_size']} "
        f"({result.parameters:,} parameters); {s['steps']} steps of {s['batch_size']}, lr {s['lr']:g} (cosine, "
        f"warmup {s['warmup_steps']}), weight decay {s['weight_decay']:g}, up to {s['queries']} queries per "
        f"training sequence, seed {s['seed']}"),
    ]
    return format_table(header, rows, title) + "\n" + "\n".join(notes)


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ICLSettings()
    for name in ("pairs", "keys", "values", "queries", "eval_sequences", "steps", "batch_size", "warmup_steps",
                 "d_model", "n_layers", "n_heads", "ffn_hidden_size", "seed"):
        p.add_argument(f"--{name.replace('_', '-')}", type=int, default=getattr(d, name))
    for name in ("lr", "weight_decay"):
        p.add_argument(f"--{name.replace('_', '-')}", type=float, default=getattr(d, name))
    p.add_argument("--eval-pairs", type=int, nargs="+", default=list(d.eval_pairs),
                   help="numbers of in-context pairs to ask about (each at most --pairs)")
    p.add_argument("--json", default=None, help="also write the results to this file")


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    names = [n for n in ICLSettings.__dataclass_fields__ if n != "eval_pairs"]
    settings = ICLSettings(eval_pairs=tuple(args.eval_pairs), **{n: getattr(args, n) for n in names})
    try:
        result = run_icl(settings)
    except ValueError as exc:
        parser.error(str(exc))
    print(format_result(result))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(result), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
