"""lm-evaluation-harness support: the `llada-ds` model type.

    llada-ds lm-eval run --model llada-ds \\
        --model_args model=runs/demo/train,mc_num=32,gen_length=64,block_length=32[,device=cuda,dtype=bf16] \\
        --tasks TASKS [--include_path DIR] [other lm-eval options]

(`python -m llada_ds.lm_eval_harness run ...` is the same.) This registers the model type and hands
the command line to lm-eval; lm-eval's own `lm_eval` command does not know the `llada-ds` type,
because lm-eval finds model types only among its own modules.
- loglikelihood: the Monte Carlo conditional log-likelihood (diffusion/likelihood.py, mc_num
  samples, stratified); is_greedy tells whether one forward with the whole continuation masked
  predicts the continuation token for token (the diffusion analogue of greedy decoding). All
  requests are scored together, their samples sorted by length and batched up to token_budget
  tokens per forward (model_args token_budget=N); each estimate is what it would be alone.
- loglikelihood_rolling: the same bound with an empty context (an ELBO, not an exact value).
- generate_until: the LLaDA sampler (exact, or --fast style with fast=true), stopped at the first
  `until` string.
"""

from __future__ import annotations

import sys

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from tqdm import tqdm

from .diffusion.fast_sampler import FastConfig, generate_fast
from .diffusion.likelihood import TOKEN_BUDGET, greedy_matches, log_likelihoods
from .diffusion.sampler import SamplerConfig, SpecialTokens, generate
from .errors import ConfigError
from .inference import cut_at, load_for_inference


MODEL_ARGS = ("model", "tokenizer", "mc_num", "mc_batch", "gen_length", "steps", "block_length", "cfg_scale", "fast",
              "cache", "threshold", "seed", "device", "dtype", "token_budget")
LM_EVAL_KWARGS = {"batch_size", "max_batch_size"}  # what lm-eval adds to every model's arguments


class _Bar:
    """A progress bar on stderr (tqdm, as lm-eval's own models) fed (done, total) by the scorers."""

    def __init__(self, desc: str, disable: bool) -> None:
        self.bar = tqdm(desc=desc, unit="sample", disable=disable)

    def update(self, done: int, total: int) -> None:
        self.bar.total = total
        self.bar.update(done - self.bar.n)

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


def _bool(v) -> bool:
    return v if isinstance(v, bool) else str(v).lower() in ("1", "true", "yes")


@register_model("llada-ds")
class LLaDAHarnessModel(LM):
    def __init__(self, model: str, tokenizer: str | None = None, mc_num: int = 32, mc_batch: int = 16,
                 gen_length: int = 64, steps: int | None = None, block_length: int | None = None,
                 cfg_scale: float = 0.0, fast: bool = False, cache: str = "dual", threshold: float | None = None,
                 seed: int = 0, device: str | None = None, dtype: str | None = None,
                 token_budget: int = TOKEN_BUDGET, **other: object) -> None:
        # lm-eval itself passes batch_size / max_batch_size (the likelihoods batch by token_budget
        # instead); anything else is a misspelled model_args key, refused rather than silently ignored.
        unknown = sorted(set(other) - LM_EVAL_KWARGS)
        if unknown:
            raise ConfigError(f"unknown model_args {', '.join(unknown)} for the llada-ds model; known: "
                              f"{', '.join(MODEL_ARGS)}")
        if int(mc_num) < 1 or int(mc_batch) < 1 or int(mc_num) % int(mc_batch):
            raise ConfigError(f"model_args mc_num={mc_num} must be a positive multiple of mc_batch={mc_batch} "
                              "(Monte Carlo samples are drawn in batches of mc_batch)")
        if int(token_budget) < 1:
            raise ConfigError(f"model_args token_budget={token_budget} must be a positive number of tokens")
        super().__init__()
        if device and str(device).startswith("cuda") and not torch.cuda.is_available():
            device = None  # lm-eval's own default is "cuda": on a CPU-only machine take the CPU
        loaded = load_for_inference(model, tokenizer, device, dtype)
        self.model, self.tok = loaded.model, loaded.tokenizer
        self.special = SpecialTokens.of(self.tok.special)
        self.mc_num, self.mc_batch, self.seed = int(mc_num), int(mc_batch), int(seed)
        self.cfg_scale, self.token_budget = float(cfg_scale), int(token_budget)
        self.sampler = SamplerConfig(gen_length=int(gen_length), steps=int(steps or gen_length),
                                     block_length=int(block_length) if block_length else None,
                                     cfg_scale=self.cfg_scale, seed=self.seed)
        self.fast = FastConfig(cache, float(threshold) if threshold not in (None, "None") else None) \
            if _bool(fast) else None

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        """As lm-eval's and LLaDA's evaluation code: trailing spaces of the context move to the
        continuation, the pair is encoded together and split where the context's encoding ends."""
        spaces = len(context) - len(context.rstrip())
        if spaces:
            continuation = context[-spaces:] + continuation
            context = context[:-spaces]
        whole = self.tok.encode(context + continuation)
        ctx = self.tok.encode(context)
        return ctx, whole[len(ctx):]

    def _score(self, pairs: list[tuple[str, str]], what: str, disable: bool) -> list[tuple[float, bool]]:
        encoded = [self._encode_pair(*p) for p in pairs]
        todo = [i for i, (_, cont) in enumerate(encoded) if cont]  # an empty continuation: log 1, greedy
        out = [(0.0, True)] * len(encoded)
        reqs = [encoded[i] for i in todo]
        # A bar per pass: scoring a task's requests at mc_num samples each can take hours.
        with _Bar(f"{what}: Monte Carlo samples", disable) as bar:
            lls = log_likelihoods(self.model, reqs, self.special.mask, self.mc_num, self.mc_batch, self.cfg_scale,
                                  self.seed, self.token_budget, progress=bar.update)
        with _Bar(f"{what}: greedy check", disable) as bar:
            greedy = greedy_matches(self.model, reqs, self.special.mask, self.token_budget, progress=bar.update)
        for i, ll, g in zip(todo, lls, greedy):
            out[i] = (ll, g)
        return out

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        return self._score([req.args for req in requests], "loglikelihood", disable_tqdm)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        return [ll for ll, _ in self._score([("", req.args[0]) for req in requests], "loglikelihood_rolling",
                                            disable_tqdm)]

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        out = []
        for req in tqdm(requests, desc="generate_until", unit="request", disable=disable_tqdm):
            context, kwargs = req.args
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            ids = [self.tok.encode(context)]
            if self.fast is None:
                row = generate(self.model, ids, self.sampler, self.special)[0].tolist()
            else:
                row = generate_fast(self.model, ids, self.sampler, self.special, self.fast)[0][0].tolist()
            text = self.tok.decode(cut_at(row, (self.special.eos, self.special.eot)))
            for stop in until:
                if stop and stop in text:
                    text = text[: text.index(stop)]
            out.append(text)
        return out


def main(argv: list[str] | None = None) -> int:
    """lm-eval's command line, with the llada-ds model type registered (argv: what follows the
    command, e.g. ["run", "--model", "llada-ds", ...])."""
    from lm_eval.__main__ import cli_evaluate

    sys.argv = ["lm-eval", *(sys.argv[1:] if argv is None else argv)]
    try:
        cli_evaluate()
    except ConfigError as exc:
        print(f"llada-ds lm-eval: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
