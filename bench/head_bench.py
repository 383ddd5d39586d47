"""The output head + weighted cross-entropy: plain (full fp32 logits) vs chunked (model/head.py).

At the 8B head shape by default: d_model 4096, vocab 126,464, 2,048 scored rows (one 4,096-token
sequence at t = 0.5), fp32, forward + backward of sum_r w_r CE_r, the way the pre-training loss
calls it. Prints, side by side, for the plain version (logits, F.cross_entropy on their fp32 copy)
and the chunked one:
- peak CPU memory allocated above the inputs (weights, hidden states), measured by torch's
  profiler from every allocation and free; "transient" leaves out the two gradients (of W and h)
  that every version must produce;
- wall time of forward + backward (best of --repeats, the variants alternating);
- the largest differences of loss, per-row CE and gradients between the two.

Usage: python bench/head_bench.py [--rows 2048] [--d-model 4096] [--vocab 126464] [--repeats 2]
       [--threads 1] [--chunk-rows N] [--dtype fp32|bf16]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llada_ds.model.head import linear_cross_entropy, reference_cross_entropy, rows_per_chunk  # noqa: E402
from llada_ds.train.memory import measure_cpu_memory  # noqa: E402

GIB = 2**30


def run(kind: str, h: torch.Tensor, w: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor,
        chunk: int | None, keep: bool) -> dict:
    """One forward + backward; keep: also return the loss, CE and gradients (for the comparison)."""
    h.grad = w.grad = None
    out: dict = {}

    def step() -> None:
        start = time.perf_counter()
        if kind == "plain":
            r = reference_cross_entropy(h, w, targets, weights)
        else:
            r = linear_cross_entropy(h, w, targets, weights, chunk)
        r.loss.backward()
        out["seconds"] = time.perf_counter() - start
        if keep:
            out["loss"], out["ce"] = r.loss.detach(), r.ce.detach()

    mem = measure_cpu_memory(step)
    grads = h.grad.numel() * h.grad.element_size() + w.grad.numel() * w.grad.element_size()
    out.update(peak=mem.peak, transient=mem.peak - grads)
    if keep:
        out.update(gh=h.grad, gw=w.grad)
    h.grad = w.grad = None
    return out


def max_difference(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(largest absolute difference, relative to b's largest magnitude), row block by row block."""
    diff = scale = 0.0
    for s in range(0, a.shape[0], 4096):
        x, y = a[s : s + 4096].double(), b[s : s + 4096].double()
        diff, scale = max(diff, (x - y).abs().max().item()), max(scale, y.abs().max().item())
    return diff, diff / scale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--d-model", type=int, default=4096)
    parser.add_argument("--vocab", type=int, default=126464)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--chunk-rows", type=int, default=None)
    parser.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dtype = torch.float32 if args.dtype == "fp32" else torch.bfloat16
    g = torch.Generator().manual_seed(0)
    std = (2 / (5 * args.d_model)) ** 0.5  # the head's initialisation (model/transformer.py)
    w = (torch.randn(args.vocab, args.d_model, generator=g) * std).to(dtype).requires_grad_()
    h = torch.randn(args.rows, args.d_model, generator=g).to(dtype).requires_grad_()
    targets = torch.randint(0, args.vocab, (args.rows,), generator=g)
    # Pre-training weights 1 / (p b l), p = 0.5, one sequence of 2 * rows tokens.
    weights = torch.full((args.rows,), 1.0 / (0.5 * 2 * args.rows))
    chunk = args.chunk_rows or rows_per_chunk(args.vocab)
    results: dict = {"plain": [], "chunked": []}
    for i in range(args.repeats):
        for kind in ("plain", "chunked"):
            r = run(kind, h, w, targets, weights, chunk, keep=i == 0)
            if i == 0 and kind == "plain":
                ref = r
            elif i == 0:  # compare with the plain run, then let both sets of gradients go
                diffs = {"loss": abs(r["loss"].item() - ref["loss"].item()), "ref_loss": ref["loss"].item(),
                         "ce": (r["ce"] - ref["ce"]).abs().max().item(),
                         "gw": max_difference(r["gw"], ref["gw"]), "gh": max_difference(r["gh"], ref["gh"])}
                for k in ("loss", "ce", "gh", "gw"):
                    r.pop(k), ref.pop(k)
            results[kind].append(r)
    plain, chunked = results["plain"][-1], results["chunked"][-1]
    print(f"head + weighted CE, forward + backward: rows {args.rows}, d_model {args.d_model}, vocab {args.vocab:,}, "
          f"{args.dtype}, {args.threads} thread(s); chunked: {chunk} rows per chunk")
    print(f"  inputs: W {w.numel() * w.element_size() / GIB:.2f} GiB, h {h.numel() * h.element_size() / GIB:.3f} GiB; "
          "peak: above the inputs; transient: the peak less the two gradients (of W and h) every version produces")
    print(f"  {'':10} {'peak GiB':>9} {'transient GiB':>14} {'best s':>8}   (all s)")
    for kind in ("plain", "chunked"):
        runs = results[kind]
        times = ", ".join(f"{r['seconds']:.2f}" for r in runs)
        print(f"  {kind:10} {runs[-1]['peak'] / GIB:9.3f} {runs[-1]['transient'] / GIB:14.3f} "
              f"{min(r['seconds'] for r in runs):8.2f}   ({times})")
    best = {k: min(r["seconds"] for r in v) for k, v in results.items()}
    print(f"  chunked / plain: peak {chunked['peak'] / plain['peak']:.3f}, transient "
          f"{chunked['transient'] / plain['transient']:.3f}, time {best['chunked'] / best['plain']:.3f}")
    print(f"  differences: loss {diffs['loss']:.3g} (of {diffs['ref_loss']:.6g}); per-row CE max {diffs['ce']:.3g}; "
          f"grad W max {diffs['gw'][0]:.3g} (relative {diffs['gw'][1]:.3g}); "
          f"grad h max {diffs['gh'][0]:.3g} (relative {diffs['gh'][1]:.3g})")


if __name__ == "__main__":
    main()
