import os
import subprocess
import sys

import pytest

from llada_ds.cli import main


def run_cli(*args):
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    return subprocess.run([sys.executable, "-m", "llada_ds.cli", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_info_prints_the_exact_8b_count_flops_and_zero3_memory():
    res = run_cli("info", "--preset", "llada-8b", "--gpus", "16")
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "8,015,581,184" in out
    flops = 6 * (8_015_581_184 - 126464 * 4096) + 12 * 32 * 4096 * 4096
    assert f"{flops:.4g}" in out
    # DeepSpeed's estimator, no offload, 16 GPUs on 2 nodes: largest layer 4*V*d + 18*N/16 bytes.
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs

    _, gpu, _ = estimate_zero3_model_states_mem_needs(8_015_581_184, 126464 * 4096, 8, 2, False, False, True)
    assert f"{gpu / 1024**3:8.2f} GiB per GPU" in out
    assert "on 16 GPU(s), 8 per node" in out


def test_bad_arguments_give_clear_errors(capsys):
    assert main(["info", "--preset", "tiny", "--gpus", "0"]) == 2
    assert "--gpus" in capsys.readouterr().err
    assert main(["info", "--preset", "tiny", "--gpus", "12"]) == 2  # DeepSpeed's estimator needs full nodes
    assert "12 GPUs do not fill nodes of 8" in capsys.readouterr().err
    assert main(["info", "--preset", "tiny", "--gpus", "12", "--gpus-per-node", "4"]) == 0
    with pytest.raises(SystemExit):
        main(["info", "--preset", "llada-70b"])
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.timeout(200)
def test_eval_uses_the_runs_validation_noise(shakespeare_texts, sp_tokenizer, tmp_path):
    """`llada-ds eval` scores a checkpoint with its run's objective.noise_seed and eps, as the trainer's
    validation does; a Hugging Face folder (no run) gets the default noise."""
    import numpy as np
    import torch

    from llada_ds.data.build import BuildConfig, build_shards
    from llada_ds.data.shards import ShardSet
    from llada_ds.data.storage import LocalStorage
    from llada_ds.data.tokenizer import Tokenizer
    from llada_ds.diffusion import NoiseConfig, diffusion_loss, pretrain_batch
    from llada_ds.diffusion.noise import EVAL_STEP
    from llada_ds.evaluation import validation_of
    from llada_ds.inference import LoadedModel
    from llada_ds.model import ModelConfig, build_model

    build_shards(BuildConfig(inputs=[str(p) for p in shakespeare_texts[:6]], out_dir=str(tmp_path / "shards"),
                             tokenizer=str(sp_tokenizer), val_fraction=0.2, split_seed=1), progress_bar=False)
    shards = str(tmp_path / "shards" / "validation")
    tok = Tokenizer.load(sp_tokenizer)
    model = build_model(ModelConfig(vocab_size=4096, d_model=32, n_layers=1, n_heads=2, n_kv_heads=2,
                                    ffn_hidden_size=64, max_seq_len=32)).eval()
    config = {"objective": {"kind": "pretrain", "noise_seed": 7, "eps": 0.01, "random_length_prob": 0.05},
              "train": {"micro_batch": 2}, "data": {"seq_len": 32}}
    run = LoadedModel(model, tok, "checkpoint", config=config)
    assert run.noise() == NoiseConfig(seed=7, eps=0.01, random_length_prob=0.0)
    assert LoadedModel(model, tok, "huggingface").noise() == NoiseConfig(random_length_prob=0.0)

    # The trainer's validation loss on the same 4 windows with the run's noise (one batch of 4).
    windows = ShardSet(LocalStorage(shards)).read_windows(np.arange(4) * 32, 32)
    b = pretrain_batch(torch.from_numpy(windows), list(range(4)), EVAL_STEP, tok.special.mask, run.noise())
    with torch.no_grad():
        reference = diffusion_loss(model(b.noisy, logits_mask=b.masked), b).loss.item()
    evaluator, kind, _ = validation_of(run, shards, 4)  # two micro-batches of 2
    ours = evaluator(model)
    assert kind == "pretrain" and ours == pytest.approx(reference, rel=1e-5)
    default_run = LoadedModel(model, tok, "checkpoint", config={**config, "objective": {}})
    assert validation_of(default_run, shards, 4)[0](model) != pytest.approx(ours, rel=1e-5)
