"""Alignment data from the bundled instruction task (examples/instruct_task.py): prompts for GRPO and
preference pairs for VRPO, as `make demo-align` and the tests build them.

- prompts: the task's training conversations as {prompt, answer} records, for `llada-ds prompt-data`
  (the built-in exact-match reward compares a completion with `answer`).
- pairs: {prompt, chosen, rejected} records for `llada-ds pref-data`: chosen is the correct answer,
  rejected the model's own wrong answer to the same instruction (its answer with the sampler at
  temperature 0, or, with --samples N --temperature T, the first wrong one of N draws); an
  instruction the model answers right gives no pair.

    python examples/align_task.py prompts --task task/train.jsonl --out task/prompts.jsonl
    python examples/align_task.py pairs --task task/train.jsonl --model RUN --out task/pairs.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional

import torch

from llada_ds.data.chat import encode_chat
from llada_ds.diffusion.sampler import SamplerConfig, SpecialTokens, generate
from llada_ds.inference import cut_at, load_for_inference


def task_examples(task_file: str | Path, limit: Optional[int] = None) -> list[dict]:
    """{prompt, answer} of every single-turn conversation of a task's train.jsonl."""
    out = []
    for line in Path(task_file).read_text().splitlines():
        messages = json.loads(line)["messages"]
        out.append({"prompt": messages[0]["content"], "answer": messages[1]["content"]})
    return out[:limit]


def write_jsonl(records: list[dict], out: str | Path) -> None:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text("".join(json.dumps(r) + "\n" for r in records))


@torch.no_grad()
def preference_pairs(model, tokenizer, examples: list[dict], gen_length: int, samples: int = 1,
                     temperature: float = 0.0, batch: int = 64, seed: int = 0) -> list[dict]:
    """chosen = the correct answer, rejected = the model's first wrong answer among `samples` draws."""
    sp = tokenizer.special
    tokens = SpecialTokens.of(sp)
    pairs = []
    for i in range(0, len(examples), batch):
        chunk = examples[i : i + batch]
        prompts = [encode_chat(tokenizer, [{"role": "user", "content": e["prompt"]}], add_generation_prompt=True)
                   for e in chunk]
        wrong: list[Optional[str]] = [None] * len(chunk)
        for k in range(samples):
            cfg = SamplerConfig(gen_length=gen_length, steps=gen_length, block_length=gen_length,
                                temperature=temperature, seed=seed + k)
            for j, row in enumerate(generate(model, prompts, cfg, tokens).tolist()):
                answer = tokenizer.decode(cut_at(row, (sp.eot, sp.eos))).strip()
                if wrong[j] is None and answer != chunk[j]["answer"]:
                    wrong[j] = answer
        pairs += [{"prompt": e["prompt"], "chosen": e["answer"], "rejected": w}
                  for e, w in zip(chunk, wrong) if w is not None]
    return pairs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    p = sub.add_parser("prompts", help="{prompt, answer} records for llada-ds prompt-data")
    p.add_argument("--task", required=True, help="train.jsonl of examples/instruct_task.py")
    p.add_argument("--out", required=True)
    q = sub.add_parser("pairs", help="{prompt, chosen, rejected} records for llada-ds pref-data")
    q.add_argument("--task", required=True, help="train.jsonl of examples/instruct_task.py")
    q.add_argument("--model", required=True, help="the model whose wrong answers are rejected (a run directory)")
    q.add_argument("--out", required=True)
    q.add_argument("--gen-length", type=int, default=8)
    q.add_argument("--samples", type=int, default=1)
    q.add_argument("--temperature", type=float, default=0.0)
    q.add_argument("--limit", type=int, default=None, help="the first N instructions")
    args = parser.parse_args(argv)
    examples = task_examples(args.task, getattr(args, "limit", None))
    if args.what == "prompts":
        write_jsonl(examples, args.out)
        print(f"{len(examples)} prompts with answers in {args.out}")
        return 0
    loaded = load_for_inference(args.model, device="cpu", dtype="fp32")
    pairs = preference_pairs(loaded.model, loaded.tokenizer, examples, args.gen_length, args.samples,
                             args.temperature)
    write_jsonl(pairs, args.out)
    print(f"{len(pairs)} preference pairs (the model's wrong answers to {len(examples)} instructions) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
