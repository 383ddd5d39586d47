"""Exact vs fast LLaDA sampling on CPU: tokens/s and how many output tokens agree.

Same model, prompts and settings (gen length 128, block 32, 128 steps, temperature 0) in one run:
the exact sampler, then the fast sampler with a prefix cache, a dual cache, and a dual cache with
confidence-threshold decoding (0.9). Agreement = share of generated tokens equal to the exact
sampler's. The model is a trained run (default runs/demo/train from `make demo`) or, if there is
none, a randomly initialised tiny model (agreement is then not meaningful).

With --instructions (a test.jsonl of examples/instruct_task.py) it measures the samplers where
they matter, on a model that knows its task (the SFT demo model, `make demo-sft`): each held-out
prompt in the chat template, at every --batch size given, the exact sampler vs prefix cache, dual
cache, and dual cache + threshold, with tokens/s (generated span, padding included) and the
exact-match accuracy of each (answer cut at end-of-turn, compared after stripping spaces).

Usage: python bench/sampler_bench.py [--model RUN_DIR] [--gen-length 128] [--block-length 32]
       python bench/sampler_bench.py --model runs/demo/sft-train --instructions runs/demo/task/test.jsonl
           --limit 48 --gen-length 256 --block-length 32 --batch 1 8 [--threshold 0.9]
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
    parser.add_argument("--instructions", default=None, help="test.jsonl of {prompt, answer}: the task mode")
    parser.add_argument("--limit", type=int, default=48, help="with --instructions: first N prompts")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="with --instructions: batch sizes")
    parser.add_argument("--threshold", type=float, default=0.9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.instructions:
        task_mode(args)
        return
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


def task_mode(args) -> None:
    from llada_ds.data.chat import encode_chat
    from llada_ds.evaluation import read_instructions
    from llada_ds.inference import cut_at, load_for_inference

    loaded = load_for_inference(args.model)
    model, tok = loaded.model, loaded.tokenizer
    special = SpecialTokens.of(tok.special)
    records = read_instructions(args.instructions, args.limit)
    prompts = [encode_chat(tok, [{"role": "user", "content": r["prompt"]}], add_generation_prompt=True)
               for r in records]
    cfg = SamplerConfig(gen_length=args.gen_length, steps=args.gen_length, block_length=args.block_length)
    samplers = [("exact", None), ("prefix cache", FastConfig("prefix")), ("dual cache", FastConfig("dual")),
                (f"dual cache + threshold {args.threshold:g}", FastConfig("dual", threshold=args.threshold)),
                (f"threshold {args.threshold:g}, no cache", FastConfig("none", threshold=args.threshold))]
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters; {len(records)} held-out "
          f"prompts of {args.instructions}; gen length {args.gen_length}, block {args.block_length}, "
          f"{cfg.steps} steps, temperature 0, {args.threads} thread(s)")
    for batch in args.batch:
        results = []
        for name, fast in samplers:
            start, correct, forwards = time.perf_counter(), 0, 0
            for i in range(0, len(prompts), batch):
                chunk = prompts[i : i + batch]
                if fast is None:
                    out, n = generate(model, chunk, cfg, special), cfg.steps
                else:
                    out, n = generate_fast(model, chunk, cfg, special, fast)
                forwards += n
                for r, row in zip(records[i : i + batch], out.tolist()):
                    answer = tok.decode(cut_at(row, (special.eot, special.eos))).strip()
                    correct += int(answer == r["answer"])
            results.append((name, time.perf_counter() - start, correct / len(records), forwards))
        t_exact, acc_exact = results[0][1], results[0][2]
        print(f"  batch {batch}:")
        for name, t, acc, forwards in results:
            print(f"    {name:<30} {len(records) * args.gen_length / t:8.1f} tok/s  {t_exact / t:5.2f}x  "
                  f"forwards {forwards:5d}  exact match {acc:.3f} ({100 * (acc - acc_exact):+.1f} points)")


if __name__ == "__main__":
    main()
