"""The variance of VRPO's preference score per pair: the paper's estimator against the naive one.

The score of a pair, (B_pi(y_w) - B_ref(y_w)) - (B_pi(y_l) - B_ref(y_l)), is estimated `--draws`
times with fresh noise (one optimizer step's key each) for each of `--pairs` preference pairs, at
the same budget of n masked samples per ELBO estimate, with:
- vrpo:           n timesteps, one mask each, antithetic (the policy and the reference share them);
- naive:          n timesteps, one mask each, the reference's drawn independently;
- vrpo n_t = n/2: n/2 timesteps with two masks each, antithetic (the allocation the paper ranks
                  below one mask per timestep).
It prints the mean over pairs of the per-pair variance and its ratio to the naive estimator's.
The policy and the reference are two checkpoints, e.g. a VRPO run and the SFT run it started from.

    python bench/vrpo_variance.py --policy runs/demo/vrpo-train --reference runs/demo/sft-train \\
        --data runs/demo/align/pref/validation --n 8 --pairs 32 --draws 64
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from llada_ds.data.preference import PreferenceData, collate_pairs
from llada_ds.diffusion.noise import STREAM_PREFERENCE, STREAM_REFERENCE
from llada_ds.diffusion.preference import elbo_estimates, elbo_samples
from llada_ds.inference import load_for_inference


@torch.no_grad()
def score_draws(policy, reference, batch, mask_id: int, n: int, draws: int, antithetic: bool,
                masks_per_time: int) -> torch.Tensor:
    """(draws, pairs) scores, each draw with the noise of one step."""
    m = batch.tokens.shape[0] // 2
    out = []
    for step in range(draws):
        args = (batch.tokens, batch.prompt_lengths, batch.doc_ids, batch.sample_indices, n // masks_per_time, mask_id,
                0, step)
        s = elbo_samples(*args, stream=STREAM_PREFERENCE, masks_per_time=masks_per_time)
        r = s if antithetic else elbo_samples(*args, stream=STREAM_REFERENCE, masks_per_time=masks_per_time)
        pi, ref = elbo_estimates(policy, s)[0], elbo_estimates(reference, r)[0]
        out.append((pi[:m] - ref[:m]) - (pi[m:] - ref[m:]))
    return torch.stack(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", required=True)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--data", required=True, help="a preference cache split (llada-ds pref-data OUT/validation)")
    parser.add_argument("--n", type=int, default=8, help="masked samples per ELBO estimate (the budget)")
    parser.add_argument("--pairs", type=int, default=32)
    parser.add_argument("--draws", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8, help="pairs per forward")
    args = parser.parse_args(argv)
    policy = load_for_inference(args.policy, device="cpu", dtype="fp32")
    reference = load_for_inference(args.reference, device="cpu", dtype="fp32").model
    data = PreferenceData(args.data, policy.tokenizer.fingerprint, "header")
    rows = list(range(min(args.pairs, len(data))))
    variants = [("vrpo", True, 1), ("naive", False, 1), ("vrpo n_t = n/2", True, 2)]
    variances = {name: [] for name, _, _ in variants}
    start = time.perf_counter()
    for i in range(0, len(rows), args.batch):
        chunk = rows[i : i + args.batch]
        batch = collate_pairs(data, chunk, chunk, seq_len=1 << 20)
        for name, antithetic, per_time in variants:
            scores = score_draws(policy.model, reference, batch, policy.tokenizer.special.mask, args.n, args.draws,
                                 antithetic, per_time)
            variances[name] += scores.var(0).tolist()
    naive = sum(variances["naive"]) / len(rows)
    print(f"score variance per pair, mean over {len(rows)} pairs, budget n = {args.n}, {args.draws} draws "
          f"({time.perf_counter() - start:.0f} s)")
    for name, _, _ in variants:
        v = sum(variances[name]) / len(rows)
        print(f"  {name:15s} {v:12.5f}   {v / naive:7.4f} x naive")
    return 0


if __name__ == "__main__":
    sys.exit(main())
