"""Exact vs fast LLaDA sampling on CPU: tokens/s and how many output tokens agree.

Same model, prompts and settings (gen length 128, block 32, 128 steps, temperature 0) in one run:
the exact sampler, then the fast sampler with a prefix cache, a dual cache, and a dual cache with
confidence-threshold decoding (0.9). Agreement = share of generated tokens equal to the exact
sampler's. The model is a trained run (default runs/demo/train from `make demo`) or, if there is
none, a randomly initialised tiny model (agreement is then not meaningful).

Usage: python bench/sampler_bench.py [--model RUN_DIR] [--gen-length 128] [--block-length 32]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llada_ds.diffusion.fast_sampler import FastConfig, generate_fast  # noqa: E402
from llada_ds.diffusion.sampler import SamplerConfig, SpecialTokens, generate  # noqa: E402

PROMPTS = ["ROMEO.\nBut soft, what light", "HAMLET.\nTo be, or not to be", "KING LEAR.\nNothing will come",
           "MACBETH.\nTomorrow, and tomorrow"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "runs" / "demo" / "train"))
    parser.add_argument("--gen-length", type=int, default=128)
    parser.add_argument("--block-length", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    try:
        from llada_ds.data.tokenizer import Tokenizer
        from llada_ds.weights import load_model

        model, source = load_model(Path(args.model))
        state = source.run_state
        tok = Tokenizer.load(state["config"]["data"]["tokenizer"])
        prompts = [tok.encode(p) for p in PROMPTS]
        special = SpecialTokens.of(tok.special)
        source = f"trained run {args.model} (step {state['step']})"
    except Exception as exc:  # no trained run: a random model still measures speed
        from llada_ds.model import build_model, get_preset

        torch.manual_seed(0)
        model = build_model(get_preset("tiny")).eval()
        prompts = [[10 + i + j for j in range(20 + 3 * i)] for i in range(4)]
        special = SpecialTokens(mask=3, pad=2, eos=2, eot=4)
        source = f"random tiny model ({type(exc).__name__}: no trained run at {args.model})"
    cfg = SamplerConfig(gen_length=args.gen_length, steps=args.gen_length, block_length=args.block_length)
    n_tokens = len(prompts) * args.gen_length

    def timed(fn):
        start = time.perf_counter()
        out = fn()
        return out, time.perf_counter() - start

    exact, t_exact = timed(lambda: generate(model, prompts, cfg, special))
    rows = [("exact", exact, t_exact, cfg.steps)]
    for name, fast in (("prefix cache", FastConfig("prefix")), ("dual cache", FastConfig("dual")),
                       ("dual cache + threshold 0.9", FastConfig("dual", threshold=0.9))):
        (out, forwards), t = timed(lambda: generate_fast(model, prompts, cfg, special, fast))
        rows.append((name, out, t, forwards))
    print(f"model: {source}; {sum(p.numel() for p in model.parameters()):,} parameters; batch {len(prompts)}, "
          f"gen length {args.gen_length}, block {args.block_length}, {cfg.steps} steps, {args.threads} threads")
    for name, out, t, forwards in rows:
        agree = (out == exact).float().mean().item()
        print(f"  {name:<28} {n_tokens / t:8.1f} tok/s  {t_exact / t:5.2f}x  forwards {forwards:4d}  "
              f"agreement with exact {100 * agree:5.1f}%")


if __name__ == "__main__":
    main()
