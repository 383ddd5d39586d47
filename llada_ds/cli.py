"""The `llada-ds` command."""

from __future__ import annotations

import argparse
import sys

from .model.config import PRESETS, ConfigError, get_preset


def _cmd_info(args: argparse.Namespace) -> int:
    from .model.sizing import describe

    if args.gpus < 1 or args.gpus_per_node < 1:
        raise ConfigError(f"--gpus and --gpus-per-node must be at least 1, got {args.gpus} and {args.gpus_per_node}")
    print(describe(get_preset(args.preset), args.preset, args.gpus, args.gpus_per_node, args.seq_len))
    return 0


def _cmd_overfit(args: argparse.Namespace) -> int:
    from .model.sizing import count
    from .overfit import overfit_one_batch

    cfg = get_preset(args.preset).replace(attention=args.attention)
    print(f"overfitting one batch of {args.batch_size} x {args.seq_len} random tokens with the {args.preset} "
          f"model ({count(cfg).total:,} parameters), pre-training diffusion loss, AdamW lr {args.lr}")
    result = overfit_one_batch(cfg, args.steps, args.batch_size, args.seq_len, args.lr, args.seed, log_every=20)
    print(f"loss on fixed noise draws: {result.eval_before:.3f} -> {result.eval_after:.3f} "
          f"in {args.steps} steps ({result.seconds:.1f} s)")
    if result.eval_after > 0.5 * result.eval_before:
        print("the loss did not halve: the model or the objective is broken", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llada-ds", description="Train LLaDA-style masked diffusion LMs.")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="shape, parameters, FLOPs and ZeRO-3 memory of a model preset")
    info.add_argument("--preset", required=True, choices=sorted(PRESETS))
    info.add_argument("--gpus", type=int, default=8, help="total number of GPUs (default 8)")
    info.add_argument("--gpus-per-node", type=int, default=8)
    info.add_argument("--seq-len", type=int, default=None, help="default: the preset's max_seq_len")
    info.set_defaults(func=_cmd_info)

    overfit = sub.add_parser("overfit", help="sanity check: overfit one batch of random tokens (CPU ok)")
    overfit.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    overfit.add_argument("--steps", type=int, default=200)
    overfit.add_argument("--batch-size", type=int, default=4)
    overfit.add_argument("--seq-len", type=int, default=64)
    overfit.add_argument("--lr", type=float, default=1e-3)
    overfit.add_argument("--seed", type=int, default=0)
    overfit.add_argument("--attention", default="auto", choices=["auto", "flash", "sdpa", "eager"])
    overfit.set_defaults(func=_cmd_overfit)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"llada-ds: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
