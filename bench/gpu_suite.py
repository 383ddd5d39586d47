"""The GPU check and benchmark suite: one script, one CUDA GPU.

1. every attention backend available against the eager reference, bf16 on CUDA (SDPA's flash,
   memory-efficient, cuDNN and math kernels forced one at a time, flash-attn if installed), with
   and without grouped KV heads and document masks;
2. attention forward+backward TFLOP/s at seq 4096, head dim 128, non-causal (4 b h s^2 d FLOPs
   forward, 2.5x that backward, as FlashAttention-2 counts);
3. a training step of the llada-1b preset under DeepSpeed ZeRO-3, world size 1, bf16, seq 4096,
   with and without activation checkpointing: tokens/s, TFLOP/s, MFU against the measured bf16
   matmul rate of this GPU (and against the nominal peak), peak memory;
4. the exact and fast samplers at gen length 256 (block 32) on the same model shape (random
   weights: speed is meaningful, agreement is not).

Run it on a machine with a CUDA build of torch and llada-ds installed (pip install -e '.[gpu]'):

    python bench/gpu_suite.py [--out DIR] [--layers N]

or through bench/gpu_suite.sh, which also records nvidia-smi and the full log and can install
wheels offline on a node without internet access (bench/README.md, "Running the GPU suite").
Results go to DIR/gpu_results.txt (the table) and DIR/gpu_results.json (every figure); DIR is
gpu_results in the current directory unless --out names another. `--tiny` runs the same code on
CPU with a tiny configuration (tests/test_gpu_suite.py does, so the suite is known to run end to
end before it meets a GPU).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from llada_ds.model import get_preset  # noqa: E402
from llada_ds.model.attention import EagerAttention, FlashAttention, SdpaAttention, flash_attn_available  # noqa: E402
from llada_ds.train.monitor import measure_matmul_tflops, peak_tflops  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timeit(fn, device: torch.device, warmup: int, iters: int) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(iters):
        fn()
    sync(device)
    return (time.perf_counter() - start) / iters


def sdpa_backends():
    from torch.nn.attention import SDPBackend

    names = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION", "math": "MATH"}
    return {k: getattr(SDPBackend, v) for k, v in names.items() if hasattr(SDPBackend, v)}


def forced(backend_enum):
    from torch.nn.attention import sdpa_kernel

    return sdpa_kernel([backend_enum])


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# -- 1. correctness ----------------------------------------------------------------------------------

def check_backends(device: torch.device, dtype: torch.dtype, seq: int, heads: int, head_dim: int) -> list[dict]:
    rows = []
    torch.manual_seed(0)
    docs = torch.zeros(2, seq, dtype=torch.long, device=device)
    docs[:, seq // 3:] = 1
    docs[1, 2 * seq // 3:] = 2
    for kv in (heads, heads // 4):
        q = torch.randn(2, seq, heads, head_dim, device=device, dtype=dtype)
        k = torch.randn(2, seq, kv, head_dim, device=device, dtype=dtype)
        v = torch.randn(2, seq, kv, head_dim, device=device, dtype=dtype)
        for doc in (None, docs):
            eager = EagerAttention()
            ref = eager(q.float(), k.float(), v.float(), eager.prepare(doc))
            cases = []
            for name, enum in sdpa_backends().items():
                cases.append((f"sdpa[{name}]", SdpaAttention(), enum))
            cases.append(("sdpa[auto]", SdpaAttention(), None))
            if flash_attn_available() and device.type == "cuda":
                cases.append(("flash-attn", FlashAttention(), None))
            for name, backend, enum in cases:
                row = {"backend": name, "kv_heads": kv, "doc_mask": doc is not None}
                try:
                    if enum is None:
                        out = backend(q, k, v, backend.prepare(doc))
                    else:
                        with forced(enum):
                            out = backend(q, k, v, backend.prepare(doc))
                    row["rel_err_vs_eager"] = rel_err(out.float(), ref)
                    row["ok"] = row["rel_err_vs_eager"] < (2e-2 if dtype != torch.float32 else 1e-5)
                except Exception as exc:  # a kernel that does not support this case says so
                    row["unsupported"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
                rows.append(row)
    return rows


# -- 2. attention speed -------------------------------------------------------------------------------

def time_attention(device: torch.device, dtype: torch.dtype, batch: int, seq: int, heads: int, head_dim: int,
                   iters: int) -> list[dict]:
    flops_fwd = 4 * batch * heads * seq * seq * head_dim
    rows = []
    q, k, v = (torch.randn(batch, seq, heads, head_dim, device=device, dtype=dtype, requires_grad=True)
               for _ in range(3))
    grad = torch.randn(batch, seq, heads, head_dim, device=device, dtype=dtype)
    cases = [(f"sdpa[{n}]", SdpaAttention(), e) for n, e in sdpa_backends().items() if n != "math"]
    if flash_attn_available() and device.type == "cuda":
        cases.append(("flash-attn", FlashAttention(), None))
    if device.type != "cuda":
        cases = [("sdpa[auto]", SdpaAttention(), None)]
    for name, backend, enum in cases:
        def fwd():
            return backend(q, k, v, None)

        def fwd_bwd():
            out = backend(q, k, v, None)
            out.backward(grad)

        row = {"backend": name, "batch": batch, "seq": seq, "heads": heads, "head_dim": head_dim}
        try:
            ctx = forced(enum) if enum is not None else contextlib.nullcontext()
            with ctx:
                t_f = timeit(fwd, device, 2, iters)
                t_fb = timeit(fwd_bwd, device, 2, iters)
            row.update(fwd_ms=1e3 * t_f, fwd_bwd_ms=1e3 * t_fb, fwd_tflops=flops_fwd / t_f / 1e12,
                       fwd_bwd_tflops=3.5 * flops_fwd / t_fb / 1e12)
        except Exception as exc:
            row["unsupported"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        rows.append(row)
    return rows


# -- 3. training step -----------------------------------------------------------------------------------

def train_step_bench(preset: str, model_overrides: dict, seq: int, micro: int, precision: str, ckpt: bool,
                     steps: int, warmup: int, device: torch.device) -> dict:
    from llada_ds.config import RunConfig
    from llada_ds.diffusion import NoiseConfig, diffusion_loss, pretrain_batch
    from llada_ds.model.sizing import count, train_flops_per_token
    from llada_ds.train.engine import build_engine, fill_ds_config, load_ds_config, set_learning_rate

    cfg = RunConfig()
    cfg.model.preset, cfg.model.overrides = preset, dict(model_overrides)
    cfg.train.global_batch, cfg.train.micro_batch = micro, micro
    cfg.train.precision, cfg.train.activation_checkpointing = precision, ckpt
    cfg.data.seq_len = seq
    model_cfg = cfg.model.build()
    ds_path = REPO / "ds_configs" / ("zero3.json" if device.type == "cuda" else "cpu.json")
    ds = fill_ds_config(load_ds_config(str(ds_path)), cfg, world=1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    engine, _ = build_engine(cfg, model_cfg, ds)
    set_learning_rate(engine, 1e-4)
    noise = NoiseConfig(random_length_prob=0.0)
    vocab = model_cfg.vocab_size
    mask_id = vocab - 1
    gen = torch.Generator().manual_seed(0)
    times = []
    for step in range(warmup + steps):
        tokens = torch.randint(0, vocab - 1, (micro, seq), generator=gen).to(device)
        sync(device)
        start = time.perf_counter()
        batch = pretrain_batch(tokens, list(range(step * micro, (step + 1) * micro)), step, mask_id, noise)
        out = diffusion_loss(engine(batch.noisy, logits_mask=batch.masked), batch)
        engine.backward(out.loss)
        engine.step()
        sync(device)
        if step >= warmup:
            times.append(time.perf_counter() - start)
    step_s = sorted(times)[len(times) // 2]
    params = count(model_cfg)
    fpt = train_flops_per_token(model_cfg, seq, params)
    tps = micro * seq / step_s
    result = {"preset": preset, "overrides": model_overrides, "parameters": params.total, "seq": seq,
              "micro_batch": micro, "precision": precision, "activation_checkpointing": ckpt,
              "step_s": step_s, "tokens_per_s": tps, "tflops": tps * fpt / 1e12, "flops_per_token": fpt,
              "loss": out.loss.item()}
    if device.type == "cuda":
        result["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    engine.destroy()
    del engine, out, batch
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def sampler_bench(preset: str, overrides: dict, gen_length: int, block: int, dtype: torch.dtype,
                  device: torch.device) -> dict:
    """Exact vs fast (dual cache, and + threshold 0.9) sampling of one 64-token prompt."""
    from llada_ds.diffusion.fast_sampler import FastConfig, generate_fast
    from llada_ds.diffusion.sampler import SamplerConfig, SpecialTokens, generate
    from llada_ds.model import LLaDAModel

    cfg_model = get_preset(preset).replace(attention="sdpa", **overrides)
    torch.manual_seed(0)
    with torch.device(device):
        model = LLaDAModel(cfg_model).to(dtype).eval()
    vocab = cfg_model.vocab_size
    special = SpecialTokens(mask=vocab - 1, pad=vocab - 2, eos=vocab - 3, eot=vocab - 4)
    prompt = [[(17 * i) % (vocab - 10) for i in range(64)]]
    cfg = SamplerConfig(gen_length=gen_length, steps=gen_length, block_length=block)
    rows = {}
    sync(device)
    start = time.perf_counter()
    exact = generate(model, prompt, cfg, special)
    sync(device)
    rows["exact"] = {"seconds": time.perf_counter() - start, "forwards": cfg.steps}
    for name, fast in (("dual_cache", FastConfig("dual")), ("dual_cache_threshold_0.9", FastConfig("dual", 0.9))):
        sync(device)
        start = time.perf_counter()
        out, forwards = generate_fast(model, prompt, cfg, special, fast)
        sync(device)
        rows[name] = {"seconds": time.perf_counter() - start, "forwards": forwards,
                      "agreement": (out == exact).float().mean().item()}
    for row in rows.values():
        row["tokens_per_s"] = gen_length / row["seconds"]
    del model
    gc.collect()
    return {"preset": preset, "gen_length": gen_length, "block": block, "random_weights": True, **rows}


def run_section(results: dict, name: str, fn, log) -> None:
    start = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as exc:
        results[name] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-2000:]}
    log(f"[{name}] {time.perf_counter() - start:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_results", metavar="DIR",
                        help="results directory, created if needed (default: gpu_results in the current directory)")
    parser.add_argument("--tiny", action="store_true",
                        help="a tiny configuration that runs on CPU (to test the suite itself)")
    parser.add_argument("--micro-batch", type=int, default=2, help="sequences per step of the training section (default 2)")
    parser.add_argument("--preset", default="llada-1b", help="model preset of the training and sampler sections "
                        "(default llada-1b)")
    parser.add_argument("--layers", type=int, default=None, metavar="N",
                        help="run the preset at depth N, for a GPU on which the full model does not fit")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)  # DeepSpeed's deprecated collectives
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    from llada_ds.train.distributed import init_distributed  # world size 1 on a free local port

    init_distributed()
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    results: dict = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
                     else "cpu", "flash_attn_installed": flash_attn_available()}
    try:
        import deepspeed

        results["deepspeed"] = deepspeed.__version__
    except ImportError:
        results["deepspeed"] = None
    if args.tiny:
        dtype, seq, heads, head_dim, batch, iters = torch.float32, 128, 4, 32, 1, 2
        preset, overrides, train_seq, precision = "tiny", {"n_layers": 2}, 128, "fp32"
    else:
        dtype, seq, heads, head_dim, batch, iters = torch.bfloat16, 4096, 16, 128, 4, 10
        preset, overrides, train_seq, precision = args.preset, {}, 4096, "bf16"
        if args.layers:
            overrides["n_layers"] = args.layers
    run_section(results, "matmul", lambda: {
        "dtype": str(dtype),
        "tflops": measure_matmul_tflops(device, dtype, 1024 if args.tiny else 8192, 4 if args.tiny else 10)}, log)
    run_section(results, "attention_correctness",
                lambda: check_backends(device, dtype, 64 if args.tiny else 1024, heads, head_dim), log)
    run_section(results, "attention_speed", lambda: time_attention(device, dtype, batch, seq, heads, head_dim, iters), log)
    for ckpt in (False, True):
        run_section(results, f"train_step_ckpt_{ckpt}", lambda: train_step_bench(
            preset, overrides, train_seq, 1 if args.tiny else args.micro_batch, precision, ckpt,
            2 if args.tiny else 5, 1 if args.tiny else 2, device), log)
    run_section(results, "samplers", lambda: sampler_bench(
        preset, overrides, 32 if args.tiny else 256, 8 if args.tiny else 32, dtype if not args.tiny else torch.float32,
        device), log)

    peak = results["matmul"].get("tflops") if isinstance(results["matmul"], dict) else None
    nominal = None  # this GPU's dense bf16 peak from the monitor's table, when it knows the GPU
    if device.type == "cuda":
        value, source = peak_tflops(device, torch.bfloat16, None)
        nominal = value if source.endswith("bf16 peak") else None
    log(f"device {results['device']}, torch {results['torch']}, deepspeed {results['deepspeed']}, "
        f"measured matmul {peak:.1f} TFLOP/s ({dtype})" if peak else "matmul failed")
    for row in results["attention_correctness"] if isinstance(results["attention_correctness"], list) else []:
        status = f"rel err {row['rel_err_vs_eager']:.2e} {'ok' if row['ok'] else 'FAIL'}" if "rel_err_vs_eager" in row \
            else f"unsupported ({row['unsupported']})"
        log(f"  correctness {row['backend']:<16} kv {row['kv_heads']:>3} doc mask {str(row['doc_mask']):<5} {status}")
    for row in results["attention_speed"] if isinstance(results["attention_speed"], list) else []:
        if "unsupported" in row:
            log(f"  attention {row['backend']:<16} unsupported ({row['unsupported']})")
        else:
            log(f"  attention {row['backend']:<16} fwd {row['fwd_tflops']:7.1f} TFLOP/s, fwd+bwd "
                f"{row['fwd_bwd_tflops']:7.1f} TFLOP/s (b {row['batch']}, s {row['seq']}, h {row['heads']}, d {row['head_dim']})")
    for ckpt in (False, True):
        r = results[f"train_step_ckpt_{ckpt}"]
        if "error" in r:
            log(f"  train step ckpt={ckpt}: {r['error']}")
            continue
        mfu = r["tflops"] / peak if peak else math.nan
        extra = f", {100 * r['tflops'] / nominal:.1f}% of nominal {nominal:.0f}" if nominal else ""
        mem = f", peak memory {r['peak_memory_gib']:.1f} GiB" if "peak_memory_gib" in r else ""
        log(f"  train step {r['preset']} ({r['parameters']:,} params) seq {r['seq']} micro {r['micro_batch']} "
            f"ckpt={ckpt}: {r['step_s']:.3f} s, {r['tokens_per_s']:.0f} tok/s, {r['tflops']:.1f} TFLOP/s, "
            f"MFU {100 * mfu:.1f}% of measured matmul{extra}{mem}")
    smp = results["samplers"]
    if "error" in smp:
        log(f"  samplers: {smp['error']}")
    else:
        for name in ("exact", "dual_cache", "dual_cache_threshold_0.9"):
            r = smp[name]
            agree = f", agreement {100 * r['agreement']:.1f}%" if "agreement" in r else ""
            log(f"  sampler {name:<26} gen {smp['gen_length']}: {r['tokens_per_s']:8.1f} tok/s, "
                f"{r['forwards']} forwards{agree} (random weights)")
    (out / "gpu_results.json").write_text(json.dumps(results, indent=1, default=str))
    (out / "gpu_results.txt").write_text("\n".join(lines) + "\n")
    print(f"results in {os.path.abspath(out)}: gpu_results.txt (the table), gpu_results.json (every figure)")


if __name__ == "__main__":
    main()
