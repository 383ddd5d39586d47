"""The bundled instruction task: checkable answers, so the SFT demo proves something.

Seeded generators of short instructions whose answer is exactly known:
- repeat:  "Repeat: pear lamp sky"              -> "pear lamp sky"
- reverse: "Reverse: pear lamp sky"             -> "sky lamp pear"
- sort:    "Sort: 7 2 9"                        -> "2 7 9"
- recall:  "a=pear b=lamp c=sky. What is b?"    -> "lamp"
- add:     "Add: 12+7"                          -> "19"
Two easier families, not in the default mix, for small models and CI (`tasks=EASY_TASKS`):
- copy:    "Copy: 4 0 7"                        -> "4 0 7"
- lookup:  "Keys: g=4 d=8 a=7. What is d?"      -> "8"
They use single digits and keys written after a space because the project's tokenizer splits
digits and gives a word another piece at the start of a text than after a space ("pear" vs
" pear"): here the answer's tokens are exactly tokens of the prompt, so copying is token for token
and a tiny model learns it from scratch in about a hundred steps.
Train and held-out test sets never share an instruction. Exact match (after stripping spaces) of
the sampler's answer is the metric (`llada-ds eval --instruction-test test.jsonl`).

    python examples/instruct_task.py --out task [--train 2000 --test 200 --tasks copy lookup]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path
from typing import Sequence

WORDS = ("pear lamp sky river stone cloud bird apple horse bread light night queen king sword ship "
         "rose field wind fire").split()
TASKS = ("repeat", "reverse", "sort", "recall", "add")  # the default mix
EASY_TASKS = ("copy", "lookup")
ALL_TASKS = TASKS + EASY_TASKS


def make_example(rng: random.Random, task: str) -> tuple[str, str]:
    if task in ("repeat", "reverse"):
        words = rng.sample(WORDS, rng.randint(2, 4))
        answer = words if task == "repeat" else words[::-1]
        return f"{task.capitalize()}: {' '.join(words)}", " ".join(answer)
    if task == "sort":
        nums = [rng.randint(0, 9) for _ in range(rng.randint(3, 5))]
        return f"Sort: {' '.join(map(str, nums))}", " ".join(map(str, sorted(nums)))
    if task == "recall":
        keys = rng.sample("abcdefg", 3)
        values = rng.sample(WORDS, 3)
        k = rng.randrange(3)
        ctx = " ".join(f"{a}={v}" for a, v in zip(keys, values))
        return f"{ctx}. What is {keys[k]}?", values[k]
    if task == "add":
        a, b = rng.randint(0, 49), rng.randint(0, 49)
        return f"Add: {a}+{b}", str(a + b)
    if task == "copy":  # 3 or 4 digits: 11,000 distinct instructions
        digits = " ".join(str(rng.randint(0, 9)) for _ in range(rng.randint(3, 4)))
        return f"Copy: {digits}", digits
    if task == "lookup":
        keys = rng.sample("abcdefg", 3)
        values = [str(rng.randint(0, 9)) for _ in keys]
        k = rng.randrange(3)
        ctx = " ".join(f"{a}={v}" for a, v in zip(keys, values))
        return f"Keys: {ctx}. What is {keys[k]}?", values[k]
    raise ValueError(f"unknown task {task!r}; tasks: {', '.join(ALL_TASKS)}")


def check_tasks(tasks: Sequence[str]) -> tuple[str, ...]:
    """The task families as a tuple, refusing an empty or unknown one before anything is drawn."""
    tasks = tuple(tasks)
    unknown = [t for t in tasks if t not in ALL_TASKS]
    if not tasks or unknown:
        raise ValueError(f"unknown or no task families {unknown or list(tasks)}; choose from {', '.join(ALL_TASKS)}")
    return tasks


def generate_task(out_dir: str | Path, n_train: int = 2000, n_test: int = 200, seed: int = 0,
                  tasks: Sequence[str] = TASKS) -> dict[str, int]:
    """Write train.jsonl ({messages}) and test.jsonl ({prompt, answer}) with disjoint prompts.

    Each example's family is drawn uniformly from `tasks` (any of ALL_TASKS)."""
    tasks = check_tasks(tasks)
    if n_train < 0 or n_test < 0:
        raise ValueError(f"example counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    rng = random.Random(seed)
    seen: set[str] = set()
    splits = {"test": [], "train": []}
    for split, n in (("test", n_test), ("train", n_train)):
        tries = 0
        while len(splits[split]) < n:
            tries += 1
            if tries > 100 * (n + 1):
                raise ValueError(f"cannot draw {n} distinct {split} examples for tasks {', '.join(tasks)}: "
                                 "ask for fewer or add families")
            prompt, answer = make_example(rng, rng.choice(tasks))
            if prompt in seen:
                continue
            seen.add(prompt)
            splits[split].append((prompt, answer))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.jsonl").write_text("".join(
        json.dumps({"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}) + "\n"
        for p, a in splits["train"]))
    (out / "test.jsonl").write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in splits["test"]))
    return {k: len(v) for k, v in splits.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write the bundled instruction task: train.jsonl (conversations, "
                                                 "for llada-ds sft-data) and test.jsonl (held-out {prompt, answer}, "
                                                 "for llada-ds eval --instruction-test).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--train", type=int, default=2000)
    parser.add_argument("--test", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=ALL_TASKS, metavar="FAMILY",
                        help=f"task families to mix (default: {' '.join(TASKS)}; easier ones for small models: "
                             f"{' '.join(EASY_TASKS)})")
    args = parser.parse_args(argv)
    try:
        counts = generate_task(args.out, args.train, args.test, args.seed, args.tasks)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"{counts['train']} training conversations ({args.out}/train.jsonl), {counts['test']} held-out "
          f"instructions with answers ({args.out}/test.jsonl)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
