"""Multiple-choice scoring by Monte Carlo likelihood: one request at a time vs batched.

Two local multiple-choice sets are cut from the bundled corpus (seeded): the context is a line
of a play; in "line" the choices are its true next line and the next lines of three other places
(answers of ~10 tokens), in "word" the first word of those lines (answers of 1-3 tokens, as in
benchmarks scored on a letter or a word). Every (context, choice) pair is a likelihood request. In one run, on the same model, seed and mc_num:
- one at a time: the estimator as it was before batching (each request alone, its mc_num samples
  in forwards of batch_size rows, full logits for every position);
- batched: `log_likelihoods` (all requests' samples sorted by length, forwards of up to
  --token-budget tokens, the output head on masked positions only).
Prints requests/s of both, the ratio, the largest difference between their estimates (the same
draws: it should be float rounding) and the accuracy of each.

Usage: python bench/likelihood_bench.py [--model runs/demo/train] [--questions 40] [--mc-num 32]
       [--batch-size 16] [--token-budget 8192] [--threads 1]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llada_ds.data.corpus import fetch_shakespeare  # noqa: E402
from llada_ds.diffusion.likelihood import _stratified_masks, log_likelihoods  # noqa: E402
from llada_ds.diffusion.sampler import guided_logits, logits_fn  # noqa: E402
from llada_ds.inference import load_for_inference  # noqa: E402


@torch.no_grad()
def one_at_a_time(model, prompt, answer, mask_id, mc_num, batch_size, seed=0) -> float:
    """The estimator before batching (llada_ds/diffusion/likelihood.py as it was), verbatim."""
    fn = logits_fn(model)
    device = next(model.parameters()).device
    seq = torch.tensor(list(prompt) + list(answer), dtype=torch.long, device=device)[None].repeat(batch_size, 1)
    p_len, a_len = len(prompt), len(answer)
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for _ in range(mc_num // batch_size):
        masks, l = _stratified_masks(batch_size, a_len, gen)
        is_mask = torch.cat([torch.zeros(batch_size, p_len, dtype=torch.bool), masks], dim=1).to(device)
        noisy = torch.where(is_mask, torch.full_like(seq, mask_id), seq)
        logits = guided_logits(fn, noisy, None, p_len, mask_id, 0.0)
        ce = F.cross_entropy(logits[is_mask].float(), seq[is_mask], reduction="none")
        weight = (a_len / l.to(device).float())[:, None].expand(batch_size, seq.shape[1])[is_mask]
        total += (ce * weight).sum().item() / batch_size
    return -total / (mc_num // batch_size)


def questions(n: int, kind: str, seed: int = 0) -> list[dict]:
    """(context, 4 choices, answer) from consecutive lines of the corpus's plays."""
    lines = []
    for path in fetch_shakespeare(REPO / "data" / "shakespeare", REPO / ".cache"):
        text = [x.strip() for x in path.read_text().splitlines() if len(x.strip().split()) >= 4]
        lines += list(zip(text, text[1:]))
    rng = random.Random(seed)
    out = []
    for context, true_next in rng.sample(lines, n):
        others = [nxt for _, nxt in rng.sample(lines, 3)]
        if kind == "word":
            true_next, others = true_next.split()[0], [o.split()[0] for o in others]
        choices = [true_next] + others
        rng.shuffle(choices)
        out.append({"context": context + "\n", "choices": choices, "answer": choices.index(true_next)})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(REPO / "runs" / "demo" / "train"))
    parser.add_argument("--questions", type=int, default=40)
    parser.add_argument("--mc-num", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--token-budget", type=int, default=8192)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    loaded = load_for_inference(args.model)
    model, tok = loaded.model, loaded.tokenizer
    print(f"model {args.model}: {sum(p.numel() for p in model.parameters()):,} parameters; mc_num {args.mc_num}, "
          f"{args.threads} thread(s)")
    for kind in ("line", "word"):
        compare(model, tok, questions(args.questions, kind), kind, args)


def compare(model, tok, qs: list[dict], kind: str, args) -> None:
    pairs, owner = [], []
    for i, q in enumerate(qs):
        context = tok.encode(q["context"])
        pairs += [(context, tok.encode(c)) for c in q["choices"]]
        owner += [i] * len(q["choices"])
    mask = tok.special.mask

    start = time.perf_counter()
    old = [one_at_a_time(model, p, a, mask, args.mc_num, args.batch_size) for p, a in pairs]
    t_old = time.perf_counter() - start
    start = time.perf_counter()
    new = log_likelihoods(model, pairs, mask, args.mc_num, args.batch_size, token_budget=args.token_budget)
    t_new = time.perf_counter() - start

    def accuracy(scores):
        picked = {}
        for i, s in zip(owner, scores):
            picked.setdefault(i, []).append(s)
        return sum(max(range(len(v)), key=v.__getitem__) == qs[i]["answer"] for i, v in picked.items()) / len(qs)

    tokens = sum(len(p) + len(a) for p, a in pairs) / len(pairs)
    answer = sum(len(a) for _, a in pairs) / len(pairs)
    print(f"{kind!r} set: {len(qs)} questions x 4 choices = {len(pairs)} requests (mean {tokens:.1f} tokens, "
          f"answers {answer:.1f})")
    print(f"  one at a time (batch {args.batch_size}): {len(pairs) / t_old:8.2f} requests/s ({t_old:.1f} s), "
          f"accuracy {accuracy(old):.3f}")
    print(f"  batched (budget {args.token_budget}):    {len(pairs) / t_new:8.2f} requests/s ({t_new:.1f} s), "
          f"accuracy {accuracy(new):.3f}")
    diff = max(abs(a - b) for a, b in zip(old, new))
    scale = max(abs(a) for a in old)
    print(f"  speed-up {t_old / t_new:.2f}x; largest difference of the estimates {diff:.3g} (of up to {scale:.3g})")


if __name__ == "__main__":
    main()
